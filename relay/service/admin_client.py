"""A small synchronous client for relay's admin API (httpx), used by the `relay` CLI.

Every failure, HTTP or network, becomes one `AdminError` with a stable code.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

import httpx


class AdminError(Exception):
    """The admin API refused the call, or relay could not be reached."""

    def __init__(self, status: int | None, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.status = status
        self.code = code
        self.message = message


def _clean(params: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if v is not None and v is not False}


class AdminClient:
    def __init__(self, base_url: str, token: str, *, timeout_s: float = 30.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        self._http = httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout_s,
                                  headers={"Authorization": f"Bearer {token}"},
                                  transport=transport, follow_redirects=False)

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, path: str, *, params: dict[str, Any] | None = None,
              body: dict[str, Any] | None = None) -> Any:
        try:
            resp = self._http.request(method, path, params=_clean(params or {}),
                                      json=_clean(body) if body is not None else None)
        except httpx.HTTPError as exc:
            raise AdminError(None, "unreachable",
                             f"cannot reach relay at {self._http.base_url}: {exc}") from None
        try:
            data = resp.json()
        except ValueError:
            data = None
        if resp.is_success and data is not None:
            return data
        error = data.get("error", {}) if isinstance(data, dict) else {}
        raise AdminError(resp.status_code, str(error.get("code", "http_error")),
                         str(error.get("message", f"HTTP {resp.status_code}")))

    def endpoints(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call("GET", "/v1/admin/endpoints")["endpoints"]
        return result

    def pause(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("POST", f"/v1/admin/endpoints/{name}/pause")
        return result

    def resume(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("POST", f"/v1/admin/endpoints/{name}/resume")
        return result

    def deliveries(self, *, status: str | None = None, endpoint: str | None = None,
                   subject: str | None = None, limit: int | None = None,
                   before: int | None = None) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "/v1/admin/deliveries", params={
            "status": status, "endpoint": endpoint, "subject": subject, "limit": limit,
            "before": before})
        return result

    def delivery(self, delivery_id: int) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", f"/v1/admin/deliveries/{delivery_id}")
        return result

    def retry(self, delivery_id: int) -> dict[str, Any]:
        result: dict[str, Any] = self._call("POST", f"/v1/admin/deliveries/{delivery_id}/retry")
        return result

    def recover(self, since: str, *, until: str | None = None, endpoint: str | None = None,
                dry_run: bool = False) -> dict[str, Any]:
        result: dict[str, Any] = self._call("POST", "/v1/admin/deliveries/recover", body={
            "since": since, "until": until, "endpoint": endpoint, "dry_run": dry_run})
        return result

    def due(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "/v1/admin/due")
        return result

    def resync(self, *, platform: str | None = None, subject_key: str | None = None,
               user_id: str | None = None) -> dict[str, Any]:
        body = ({"user_id": user_id} if user_id is not None
                else {"platform": platform, "subject_key": subject_key})
        result: dict[str, Any] = self._call("POST", "/v1/admin/resync", body=body)
        return result

    def replay(self, endpoint: str, *, subject: str | None = None, since: str | None = None,
               until: str | None = None, dry_run: bool = False) -> dict[str, Any]:
        result: dict[str, Any] = self._call("POST", "/v1/admin/replay", body={
            "endpoint": endpoint, "subject": subject, "since": since, "until": until,
            "dry_run": dry_run})
        return result
