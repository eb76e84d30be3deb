"""`GET /v1/openapi.json`: the OpenAPI 3.1 document of every public and admin route.

Hand-written next to the handlers; tests/test_openapi.py checks it against the router.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from aiohttp import web

from relay import __version__
from relay.web.appkeys import RUNTIME_KEY
from relay.web.openapi_schemas import SCHEMAS, Schema, ref

Op = dict[str, Any]

# status -> error codes every caller of that kind of route may see
_BODY = {400: ["invalid_json", "invalid_request"], 408: ["request_timeout"],
         413: ["payload_too_large"], 415: ["unsupported_media_type"]}
_STORE = {503: ["store_unavailable"]}
_SERVICE = {401: ["unauthorized"], **_STORE}
_ADMIN = {401: ["unauthorized"], 503: ["not_configured", "store_unavailable"]}
_JWT = {401: ["unauthorized"], 429: ["rate_limited"],
        503: ["not_configured", "store_unavailable"]}
_LIMITED = {429: ["rate_limited"]}  # [limits]: the caller's budget is spent
_RESTORE = {504: ["restore_timeout"]}
_ATTESTO = {
    400: ["attesto_invalid_request"],
    409: ["purchase_owned_by_other_user"],
    502: ["apple_api_error", "google_api_error", "attesto_internal_error",
          "attesto_credentials_missing", "attesto_unauthenticated", "attesto_tenant_not_found",
          "attesto_signature_invalid", "attesto_bad_response"],
    503: ["attesto_unavailable", "attesto_rate_limited", "not_configured"],
    504: ["attesto_timeout"],
}
_REASONS = {400: "Bad request", 401: "Unauthorized", 404: "Not found", 408: "Request timeout",
            409: "Conflict", 429: "Too many requests",
            413: "Payload too large", 415: "Unsupported media type", 502: "Bad gateway",
            503: "Unavailable", 504: "Gateway timeout"}


def _merge(*groups: dict[int, list[str]]) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for group in groups:
        for status, codes in group.items():
            out.setdefault(status, [])
            out[status] += [c for c in codes if c not in out[status]]
    return out


def _json(schema: Schema) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def op(summary: str, tag: str, response: Schema | None, *, security: str | None,
       body: Schema | None = None, errors: dict[int, list[str]] | None = None,
       params: list[dict[str, Any]] | None = None, ok: int = 200,
       ok_media: str = "application/json") -> Op:
    """One operation: its 2xx answer, and one error response per status listing its codes."""
    responses: dict[str, Any] = {
        str(ok): {"description": "OK", "content": {ok_media: {"schema": response or {}}}}}
    for status, codes in sorted((errors or {}).items()):
        responses[str(status)] = {
            "description": f"{_REASONS.get(status, 'Error')}: {', '.join(codes)}",
            "x-error-codes": codes, **_json(ref("Error"))}
    out: Op = {"summary": summary, "tags": [tag], "responses": responses}
    out["security"] = [{security: []}] if security else []
    if body is not None:
        out["requestBody"] = {"required": True, **_json(body)}
    if params:
        out["parameters"] = params
    return out


def path_param(name: str, schema: Schema | None = None) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": schema or {"type": "string"}}


def query(name: str, schema: Schema, description: str = "") -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema,
            "description": description}


def _paths(webhook_path: str) -> dict[str, dict[str, Op]]:
    verify_errors = _merge(_SERVICE, _LIMITED, _BODY, _ATTESTO)
    iap_errors = _merge(_JWT, _BODY, _ATTESTO)
    iap_uuid = op("Mint (once) the user's appAccountToken / obfuscatedAccountId", "iap",
                  ref("AppUserId"), security="userJwt", errors=_JWT)
    endpoint = path_param("name")
    delivery = path_param("id", {"type": "integer", "minimum": 0})
    user = path_param("user_id")
    return {
        "/healthz": {"get": op("Liveness: the event loop answers", "health", ref("Health"),
                               security=None)},
        "/readyz": {"get": op("Readiness: the store answers (503 when it does not)",
                              "health", ref("Ready"), security=None)},
        "/metrics": {"get": op("Prometheus metrics (text exposition format)", "operations",
                               {"type": "string"}, security="metricsToken", errors=_ADMIN,
                               ok_media="text/plain")},
        "/v1/openapi.json": {"get": op("This document", "operations", {"type": "object"},
                                       security=None)},
        webhook_path: {"post": op(
            "Receive one signed Attesto delivery (X-Attesto-Signature)", "webhooks",
            ref("WebhookAck"), security="attestoSignature", body=ref("AttestoDelivery"),
            errors=_merge(_BODY, {400: ["invalid_envelope", "event_id_mismatch"],
                                  401: ["invalid_signature"],
                                  503: ["not_configured", "store_unavailable"]}))},
        "/v1/verify/apple": {"post": op(
            "Verify an Apple transaction through Attesto and store it", "verify",
            ref("VerifyResult"), security="serviceKey", body=ref("VerifyAppleRequest"),
            errors=verify_errors)},
        "/v1/verify/google": {"post": op(
            "Verify a Google purchase through Attesto and store it", "verify",
            ref("VerifyResult"), security="serviceKey", body=ref("VerifyGoogleRequest"),
            errors=verify_errors)},
        "/v1/restore": {"post": op(
            "Verify up to 100 purchases for one user", "verify", ref("RestoreResult"),
            security="serviceKey", body=ref("RestoreRequest"),
            errors=_merge(verify_errors, _RESTORE))},
        "/v1/users/{user_id}/entitlements": {"get": op(
            "The user's current entitlements", "verify", ref("Entitlements"),
            security="serviceKey", errors=_merge(_SERVICE, {400: ["invalid_request"]}),
            params=[user])},
        "/v1/users/{user_id}/app-user-id": {"post": op(
            "Mint (once) the user's appUserId", "verify", ref("AppUserId"),
            security="serviceKey", errors=_merge(_SERVICE, {400: ["invalid_request"]}),
            params=[user])},
        "/v1/purchases/{platform}/{subject_key}": {"get": op(
            "One stored purchase", "verify", ref("Purchase"), security="serviceKey",
            errors=_merge(_SERVICE, {400: ["invalid_request"], 404: ["purchase_not_found"]}),
            params=[path_param("platform", {"type": "string", "enum": ["apple", "google"]}),
                    path_param("subject_key")])},
        "/v1/events": {"get": op(
            "Events in commit order (pull by cursor)", "events", ref("EventsPage"),
            security="serviceKey", errors=_merge(_SERVICE, {400: ["invalid_after",
                                                                  "invalid_limit"]}),
            params=[query("after", {"type": "string", "pattern": "^[0-9]+$"},
                          "cursor: the previous page's `next`"),
                    query("limit", {"type": "integer", "minimum": 1, "maximum": 1000})])},
        "/api/iap/verify/apple": {"post": op(
            "@nossdev/iap: verify an Apple transaction", "iap", ref("IapVerifyResult"),
            security="userJwt", body=ref("IapVerifyAppleRequest"), errors=iap_errors)},
        "/api/iap/verify/google": {"post": op(
            "@nossdev/iap: verify a Google purchase", "iap", ref("IapVerifyResult"),
            security="userJwt", body=ref("IapVerifyGoogleRequest"), errors=iap_errors)},
        "/api/iap/restore": {"post": op(
            "@nossdev/iap: restore purchases", "iap", ref("IapRestoreResult"),
            security="userJwt", body=ref("IapRestoreRequest"),
            errors=_merge(iap_errors, _RESTORE))},
        "/api/iap/entitlements": {"get": op(
            "@nossdev/iap: the user's entitlements", "iap", ref("IapEntitlements"),
            security="userJwt", errors=_JWT)},
        "/api/iap/products": {"get": op(
            "@nossdev/iap: the product catalogue", "iap", ref("IapProducts"),
            security="userJwt", errors=_merge(_JWT, {404: ["products_not_configured"]}))},
        "/api/iap/uuid": {"get": iap_uuid, "post": iap_uuid},
        "/v1/admin/endpoints": {"get": op(
            "Downstream endpoints, their state and queues", "admin", ref("Endpoints"),
            security="adminToken", errors=_ADMIN)},
        "/v1/admin/endpoints/{name}/pause": {"post": op(
            "Pause an endpoint (its deliveries are held)", "admin", ref("PauseResult"),
            security="adminToken", errors=_merge(_ADMIN, {404: ["not_found"]}),
            params=[endpoint])},
        "/v1/admin/endpoints/{name}/resume": {"post": op(
            "Resume an endpoint (held deliveries are released)", "admin",
            ref("ResumeResult"), security="adminToken",
            errors=_merge(_ADMIN, {404: ["not_found"]}), params=[endpoint])},
        "/v1/admin/deliveries": {"get": op(
            "List deliveries, newest first", "admin", ref("DeliveriesPage"),
            security="adminToken", errors=_merge(_ADMIN, {400: ["invalid_request"]}),
            params=[query("status", {"type": "string", "enum": [
                        "pending", "held", "delivered", "dead", "failed"]}),
                    query("endpoint", {"type": "string"}),
                    query("subject", {"type": "string"}, "<platform>:<subject_key>"),
                    query("event_id", {"type": "string"}),
                    query("before", {"type": "integer", "minimum": 1},
                          "the previous page's `next_before`"),
                    query("limit", {"type": "integer", "minimum": 1, "maximum": 1000})])},
        "/v1/admin/deliveries/recover": {"post": op(
            "Reopen dead deliveries created in a time window", "admin", ref("RecoverResult"),
            security="adminToken", body=ref("RecoverRequest"),
            errors=_merge(_ADMIN, _BODY, {404: ["not_found"]}))},
        "/v1/admin/deliveries/{id}": {"get": op(
            "One delivery with its attempts and event", "admin", ref("DeliveryDetail"),
            security="adminToken", errors=_merge(_ADMIN, {404: ["not_found"]}),
            params=[delivery])},
        "/v1/admin/deliveries/{id}/retry": {"post": op(
            "Send one delivery again now", "admin", ref("DeliveryDetail"),
            security="adminToken", errors=_merge(_ADMIN, {404: ["not_found"]}),
            params=[delivery])},
        "/v1/admin/due": {"get": op(
            "The re-poll queue: rows due now and the oldest overdue", "admin",
            ref("DueQueue"), security="adminToken", errors=_ADMIN)},
        "/v1/admin/resync": {"post": op(
            "Re-poll one purchase, or every purchase of a user, through Attesto now", "admin",
            ref("ResyncResult"), security="adminToken", body=ref("ResyncRequest"),
            errors=_merge(_ADMIN, _BODY, {404: ["not_found"]}))},
        "/v1/admin/replay": {"post": op(
            "Enqueue stored events again for one endpoint", "admin", ref("ReplayResult"),
            security="adminToken", body=ref("ReplayRequest"),
            errors=_merge(_ADMIN, _BODY, {404: ["not_found"]}))},
    }


@lru_cache(maxsize=8)
def document(webhook_path: str = "/v1/webhooks/attesto") -> dict[str, Any]:
    """The whole document (cached; it depends only on the configured webhook path)."""
    return {
        "openapi": "3.1.0",
        "info": {"title": "relay", "version": __version__,
                 "description": "Receipt verification and webhook relay in front of Attesto. "
                                "Every error is `{\"error\": {\"code\", \"message\", "
                                "\"details\"?}}` with an `X-Request-Id` header."},
        "paths": _paths(webhook_path),
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "serviceKey": {"type": "http", "scheme": "bearer",
                               "description": "a service API key (`api-keys` credential)"},
                "adminToken": {"type": "http", "scheme": "bearer",
                               "description": "the `admin-token` credential"},
                "metricsToken": {"type": "http", "scheme": "bearer",
                                 "description": "the `metrics-token` credential (reads "
                                                "/metrics only), or the admin token"},
                "userJwt": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                            "description": "an end-user JWT; the user is its `sub`"},
                "attestoSignature": {"type": "apiKey", "in": "header",
                                     "name": "X-Attesto-Signature",
                                     "description": "t=<unix>,v1=<hex HMAC-SHA256 of "
                                                    "'{t}.{raw body}'>"},
            },
        },
    }


async def handle_openapi(request: web.Request) -> web.Response:
    return web.json_response(document(request.app[RUNTIME_KEY].config.webhooks.path))


def routes() -> list[web.RouteDef]:
    return [web.get("/v1/openapi.json", handle_openapi)]
