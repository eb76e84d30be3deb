"""Request ids and the one JSON error envelope for every 4xx/5xx."""

from __future__ import annotations

import logging
import re
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from relay.core import ids
from relay.core.errors import RelayError

log = logging.getLogger("relay.middlewares")

REQUEST_ID_KEY = web.RequestKey("request_id", str)
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
_HTTP_CODES = {
    400: "invalid_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
    405: "method_not_allowed", 411: "length_required", 413: "payload_too_large",
    415: "unsupported_media_type", 429: "rate_limited", 503: "unavailable",
}


def error_response(status: int, code: str, message: str, details: Any = None,
                   headers: dict[str, str] | None = None) -> web.Response:
    error: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        error["details"] = details
    return web.json_response({"error": error}, status=status, headers=headers)


@web.middleware
async def request_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The request id (the caller's `X-Request-Id` when valid, else a new one), on the
    request and on every answer; and the one JSON error envelope for what the handler
    raises. One layer, where two cost a coroutine and a call each per request."""
    given = request.headers.get("X-Request-Id", "")
    rid = given if _VALID_REQUEST_ID.match(given) else ids.request_id()
    request[REQUEST_ID_KEY] = rid
    try:
        response = await handler(request)
    except RelayError as exc:
        headers = {}
        if exc.retry_after_s is not None:
            headers["Retry-After"] = str(exc.retry_after_s)
        level = logging.WARNING if exc.status >= 500 else logging.INFO
        log.log(level, "%s %s -> %d %s request_id=%s", request.method, request.path,
                exc.status, exc.code, rid)
        response = error_response(exc.status, exc.code, exc.message, exc.details, headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            exc.headers["X-Request-Id"] = rid
            raise
        code = _HTTP_CODES.get(exc.status, "http_error")
        headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after")}
        response = error_response(exc.status, code, exc.reason, headers=headers)
    except Exception:
        log.exception("unhandled error on %s %s request_id=%s", request.method, request.path,
                      rid)
        response = error_response(500, "internal_error", "An internal error occurred")
    response.headers["X-Request-Id"] = rid
    return response
