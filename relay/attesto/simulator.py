"""Attesto simulator: the verify API and signed webhook deliveries, as the contract says.

The records it answers about are in `sim_records`, the deliveries it builds in
`sim_webhooks`.

Shipped for tests and local development (`relay demo`), never enabled by `serve`.
It follows ../shared/attesto-contract.md: status codes, error envelope, key order,
`YYYY-MM-DDTHH:MM:SS.sssZ` timestamps, compact JSON, and `X-Attesto-Signature`.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from relay.attesto.sim_records import (
    AppleTransaction,
    GooglePurchase,
    compact,
)
from relay.attesto.sim_webhooks import WebhookBuilder

VERSION = "sim"
JSON_ERR = "application/json; charset=utf-8"


@dataclass
class Fault:
    status: int
    error: str | None = None
    message: str = ""
    details: dict[str, Any] | None = None
    retry_after: int | None = None
    raw_body: bytes | None = None
    delay_s: float = 0.0
    drop: bool = False  # close the connection without an answer


@dataclass
class AttestoSimulator(WebhookBuilder):
    """A scriptable Attesto: add purchases, queue faults, build and sign webhooks."""

    api_key: str = "attesto_test_" + "A" * 43
    webhook_secret: str = "whsec-example-0123456789abcdefghijklmnopqrstuv"
    bundle_id: str = "com.example.app"
    package_name: str = "com.example.app"
    tenant_id: str = "tenant_01JQ7ZTRB4N6X8D2F5H9K3M1PA"
    apple: dict[str, AppleTransaction] = field(default_factory=dict)
    google: dict[str, GooglePurchase] = field(default_factory=dict)
    faults: deque[Fault] = field(default_factory=deque)
    calls: list[tuple[str, dict[str, Any], dict[str, str]]] = field(default_factory=list)
    delay_s: float = 0.0

    # ---- scripting ------------------------------------------------------------------

    def add_apple(self, **kw: Any) -> AppleTransaction:
        kw.setdefault("bundle_id", self.bundle_id)
        txn = AppleTransaction(**kw)
        self.apple[txn.transaction_id] = txn
        return txn

    def add_google(self, **kw: Any) -> GooglePurchase:
        purchase = GooglePurchase(**kw)
        self.google[purchase.token] = purchase
        return purchase

    def fail_next(self, status: int, times: int = 1, **kw: Any) -> None:
        for _ in range(times):
            self.faults.append(Fault(status, **kw))

    # ---- HTTP -------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/apple/verify", self._handle_apple)
        app.router.add_post("/v1/google/verify", self._handle_google)
        app.router.add_get("/health", self._handle_health)
        return app

    async def _handle_health(self, request: web.Request) -> web.Response:
        return self._json({"status": "ok"})

    def _json(self, body: dict[str, Any], status: int = 200,
              headers: dict[str, str] | None = None) -> web.Response:
        ctype = "application/json" if status == 200 else JSON_ERR
        return web.Response(body=compact(body), status=status, headers={
            "Content-Type": ctype, "X-Attesto-Version": VERSION, **(headers or {})})

    def _error(self, status: int, code: str, message: str,
               details: dict[str, Any] | None = None,
               headers: dict[str, str] | None = None) -> web.Response:
        body: dict[str, Any] = {"valid": False, "error": code, "message": message}
        if details:
            body["details"] = details
        return self._json(body, status, headers)

    async def _prelude(self, request: web.Request) -> tuple[dict[str, Any] | None,
                                                            web.StreamResponse | None]:
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            return None, self._error(401, "UNAUTHENTICATED",
                                     "Missing or malformed Authorization header")
        if auth[len("Bearer "):].strip() != self.api_key:
            return None, self._error(401, "UNAUTHENTICATED", "Invalid or revoked API key")
        if request.content_length is not None and request.content_length > 16384:
            return None, self._error(400, "INVALID_REQUEST", "Request body too large",
                                     {"maxBytes": 16384})
        try:
            body = json.loads(await request.read())
        except ValueError:
            body = None
        self.calls.append((request.path, body if isinstance(body, dict) else {},
                           dict(request.headers)))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.faults:
            fault = self.faults.popleft()
            if fault.delay_s:
                await asyncio.sleep(fault.delay_s)
            if fault.drop:
                assert request.transport is not None
                request.transport.close()
                return None, web.Response(status=500)
            if fault.raw_body is not None:
                return None, web.Response(body=fault.raw_body, status=fault.status,
                                          content_type="application/json")
            headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after else None
            details = fault.details
            if fault.error == "RATE_LIMITED" and fault.retry_after and details is None:
                details = {"retryAfterSeconds": fault.retry_after}
            return None, self._error(fault.status, fault.error or "INTERNAL_ERROR",
                                     fault.message or "An internal error occurred", details,
                                     headers)
        if not isinstance(body, dict):
            return None, self._error(400, "INVALID_REQUEST", "Invalid request body",
                                     {"issues": [{"path": [], "message": "Invalid JSON"}]})
        return body, None

    @staticmethod
    def _issues(body: dict[str, Any], spec: dict[str, tuple[int, int]]) -> list[dict[str, Any]]:
        issues = []
        for name, (lo, hi) in spec.items():
            v = body.get(name)
            if not isinstance(v, str):
                issues.append({"path": [name], "message": "Required"})
            elif not lo <= len(v.strip() if name != "transactionId" else v) <= hi:
                issues.append({"path": [name], "message": f"Must be {lo}-{hi} characters"})
        return issues

    async def _handle_apple(self, request: web.Request) -> web.StreamResponse:
        body, early = await self._prelude(request)
        if early is not None:
            return early
        assert body is not None
        issues = self._issues(body, {"transactionId": (1, 128)})
        env = body.get("environment")
        if env is not None and env not in ("production", "sandbox"):
            issues.append({"path": ["environment"], "message": "Invalid enum value"})
        if issues:
            return self._error(400, "INVALID_REQUEST", "Invalid request body",
                               {"issues": issues})
        txn = self.apple.get(body["transactionId"])
        if txn is None or (env is not None and env != txn.environment):
            msg = ("Transaction not found" if env else
                   "Transaction not found in any environment (production or sandbox)")
            return self._json({"valid": False, "error": "TRANSACTION_NOT_FOUND",
                               "message": msg, "version": VERSION})
        if txn.bundle_id != self.bundle_id:
            return self._json({"valid": False, "error": "BUNDLE_ID_MISMATCH",
                               "message": f'Transaction belongs to bundleId "{txn.bundle_id}" '
                                          f'but tenant is configured for "{self.bundle_id}"',
                               "version": VERSION})
        return self._json({"valid": True, "environment": txn.environment,
                           "transaction": txn.normalized(), "appUserId": txn.app_account_token,
                           "version": VERSION})

    async def _handle_google(self, request: web.Request) -> web.StreamResponse:
        body, early = await self._prelude(request)
        if early is not None:
            return early
        assert body is not None
        issues = self._issues(body, {"packageName": (1, 200), "productId": (1, 200),
                                     "purchaseToken": (1, 4096)})
        if body.get("type") not in ("subscription", "product"):
            issues.append({"path": ["type"], "message": "Invalid enum value"})
        if issues:
            return self._error(400, "INVALID_REQUEST", "Invalid request body",
                               {"issues": issues})
        package, product = body["packageName"].strip(), body["productId"].strip()
        token = body["purchaseToken"].strip()
        if package != self.package_name:
            return self._json({"valid": False, "error": "PACKAGE_NAME_MISMATCH",
                               "message": f'Tenant is configured for "{self.package_name}" '
                                          f'but request was for "{package}"',
                               "version": VERSION})
        p = self.google.get(token)
        if p is None or p.kind != body["type"]:
            return self._json({"valid": False, "error": "PURCHASE_NOT_FOUND",
                               "message": "Purchase token not found", "version": VERSION})
        raw = p.raw()
        if p.kind == "product":
            purchase: dict[str, Any] = {
                "kind": "androidpublisher#productPurchase", "packageName": package,
                "productId": product, "purchaseToken": token,
                "purchaseTimeMillis": raw["purchaseTimeMillis"],
                "purchaseState": raw["purchaseState"],
                "consumptionState": raw["consumptionState"],
                "acknowledgementState": raw["acknowledgementState"], "orderId": raw["orderId"],
                "obfuscatedExternalAccountId": p.account_id, "rawResponse": raw}
        else:
            line = raw["lineItems"][0]
            purchase = {
                "kind": "androidpublisher#subscriptionPurchaseV2", "packageName": package,
                "productId": product, "purchaseToken": token, "startTime": raw["startTime"],
                "expiryTime": line["expiryTime"],
                "autoRenewing": line.get("autoRenewingPlan", {}).get("autoRenewEnabled"),
                "priceCurrencyCode": None, "priceAmountMicros": None, "countryCode": "US",
                "paymentState": None, "acknowledgementState": None,
                "orderId": raw["latestOrderId"], "obfuscatedExternalAccountId": p.account_id,
                "rawResponse": raw}
        return self._json({"valid": True, "purchase": purchase, "appUserId": p.account_id,
                           "version": VERSION})

    # ---- webhooks ---------------------------------------------------------------------


