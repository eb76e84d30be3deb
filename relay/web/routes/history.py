"""What happened to a purchase, and why a user has access (service key): a purchase's
history, a user's purchases, the transaction ledger by cursor, and explain. Thin: parse,
authenticate, one store read (`relay.store.history`, `relay.store.ledger`), render.

Cursors follow `GET /v1/events`: `after` is the previous page's `next` (a string of
digits), `limit` 1-1000, and `next` stays `after` when there is nothing new.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from relay.core.domain import PLATFORMS, entitlement_keys, is_entitled
from relay.core.errors import BadRequestError, NotFoundError
from relay.store import history, ledger, lookups
from relay.verify import requests as rq
from relay.web.appkeys import RUNTIME_KEY, STORE_KEY
from relay.web.auth import check_service_key
from relay.web.routes.events import query_int

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_KEY = 256


def _page(request: web.Request) -> tuple[int, int]:
    return (query_int(request, "after", 0, 0, 2**62),
            query_int(request, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT))


def _raw(request: web.Request) -> bool:
    value = request.query.get("raw", "")
    if value not in ("", "0", "1", "false", "true"):
        raise BadRequestError(f"raw must be 1 or 0 (got {value!r})", code="invalid_raw")
    return value in ("1", "true")


def _json(body: dict[str, Any]) -> web.Response:
    return web.Response(text=json.dumps(body, ensure_ascii=False),
                        content_type="application/json")


async def handle_history(request: web.Request) -> web.Response:
    check_service_key(request.app[RUNTIME_KEY].config, request)
    platform, key = request.match_info["platform"], request.match_info["subject_key"]
    after, limit = _page(request)
    raw = _raw(request)

    def read() -> tuple[bool, list[Any]]:
        if lookups.purchase_view(platform, key) is None:
            return False, []
        return True, history.inputs_page(platform, key, after, limit, raw)

    found, inputs = (await request.app[STORE_KEY].read(read)) if platform in PLATFORMS \
        else (False, [])
    if not found:
        raise NotFoundError("no such purchase", code="purchase_not_found")
    return _json({"platform": platform, "subject_key": key,
                  "inputs": [i.to_json(raw) for i in inputs],
                  "next": str(inputs[-1].id if inputs else after)})


async def handle_user_purchases(request: web.Request) -> web.Response:
    check_service_key(request.app[RUNTIME_KEY].config, request)
    uid = rq.user_id(request.match_info["user_id"])
    runtime = request.app[RUNTIME_KEY]
    now, rules = runtime.now_ms(), runtime.rules
    views = await request.app[STORE_KEY].read(lambda: history.purchases_ever(uid))
    out = []
    for v in views:
        keys = entitlement_keys(rules.entitlements, v.product_id, v.base_plan_id)
        out.append({**v.to_json(), "entitlement_keys": list(keys),
                    "entitled": v.user_id == uid and is_entitled(
                        v, now, rules.entitlement_policy)})
    return _json({"user_id": uid, "purchases": out})


async def handle_transactions(request: web.Request) -> web.Response:
    check_service_key(request.app[RUNTIME_KEY].config, request)
    uid = (rq.user_id(request.match_info["user_id"]) if "user_id" in request.match_info
           else None)
    after, limit = _page(request)
    rows = await request.app[STORE_KEY].read(lambda: ledger.page(after, limit, uid))
    body: dict[str, Any] = {"transactions": [r.to_json() for r in rows],
                            "next": str(rows[-1].cursor if rows else after)}
    return _json({"user_id": uid, **body} if uid is not None else body)


async def handle_explain(request: web.Request) -> web.Response:
    check_service_key(request.app[RUNTIME_KEY].config, request)
    uid = rq.user_id(request.match_info["user_id"])
    key = request.match_info["key"]
    if not key or len(key) > MAX_KEY:
        raise BadRequestError(f"key must be 1 to {MAX_KEY} characters", code="invalid_request")
    runtime = request.app[RUNTIME_KEY]
    now, rules = runtime.now_ms(), runtime.rules
    found = await request.app[STORE_KEY].read(lambda: history.explain(uid, key, rules, now))
    return _json(found.to_json())


def routes() -> list[web.RouteDef]:
    return [
        web.get("/v1/purchases/{platform}/{subject_key}/history", handle_history),
        web.get("/v1/users/{user_id}/purchases", handle_user_purchases),
        web.get("/v1/users/{user_id}/transactions", handle_transactions),
        web.get("/v1/transactions", handle_transactions),
        web.get("/v1/users/{user_id}/entitlements/{key}/explain", handle_explain),
    ]
