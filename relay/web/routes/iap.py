"""Drop-in backend for @nossdev/iap clients under `/api/iap` (end-user JWTs; user = `sub`).

Request and response shapes are exactly the ones the client sends and validates
(attesto-contract.md §6.1): `{valid:true, transaction:{id, productId, expiresAt},
entitlements:[{key, productId, expiresAt}]}` or `{valid:false, error, message}`.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from relay.core.domain import Entitlement, iso
from relay.core.errors import ConflictError, NotFoundError
from relay.verify import requests as rq
from relay.verify.verifier import AppleItem, Item, ItemResult, Outcome
from relay.web.appkeys import LIMITS_KEY, RUNTIME_KEY
from relay.web.auth import check_user_jwt
from relay.web.bodies import read_json_object
from relay.web.middlewares import REQUEST_ID_KEY
from relay.web.routes.verify import restore_bounds, verifier

OWNED_BY_OTHER = "PURCHASE_OWNED_BY_OTHER_USER"


def entitlement_json(e: Entitlement) -> dict[str, Any]:
    return {"key": e.key, "productId": e.product_id, "expiresAt": iso(e.expires_ms),
            "platform": e.platform}


def _failure(error: str, message: str | None) -> dict[str, Any]:
    return {"valid": False, "error": error, "message": message or error}


def _transaction(outcome: Outcome, now_ms: int) -> dict[str, Any]:
    assert outcome.purchase is not None
    return {"id": outcome.ref, "productId": outcome.purchase.product_id,
            "expiresAt": iso(outcome.purchase.expires_ms), "verifiedAt": iso(now_ms)}


def _user(request: web.Request) -> str:
    """The caller (JWT `sub`), who spends one of their tokens (429 when none is left)."""
    user = check_user_jwt(request.app[RUNTIME_KEY].config, request).user_id
    request.app[LIMITS_KEY].users.take(user)
    return user


async def _user_and_body(request: web.Request) -> tuple[str, dict[str, Any]]:
    user = _user(request)
    return user, await read_json_object(request, request.app[RUNTIME_KEY].config.server)


async def _verify(request: web.Request, user_id: str, item: Item) -> web.Response:
    try:
        outcome = await verifier(request).verify(user_id, item,
                                                 request_id=request[REQUEST_ID_KEY])
    except ConflictError as exc:
        # The client reads other 4xx as a broken backend; a refusal is a verdict for it.
        return web.json_response(_failure(OWNED_BY_OTHER, exc.message))
    if not outcome.valid:
        return web.json_response(_failure(outcome.error or "INVALID", outcome.message))
    now = request.app[RUNTIME_KEY].now_ms()
    return web.json_response({
        "valid": True, "transaction": _transaction(outcome, now),
        "entitlements": [entitlement_json(e) for e in outcome.entitlements]})


async def handle_verify_apple(request: web.Request) -> web.Response:
    user_id, body = await _user_and_body(request)
    return await _verify(request, user_id, rq.apple_item(body, camel=True))


async def handle_verify_google(request: web.Request) -> web.Response:
    user_id, body = await _user_and_body(request)
    return await _verify(request, user_id, rq.google_item(body, camel=True))


def _item_json(r: ItemResult) -> dict[str, Any]:
    platform = "apple" if isinstance(r.item, AppleItem) else "google"
    if r.outcome is None:
        assert r.error is not None
        return {"index": r.index, "platform": platform, "valid": None, "granted": [],
                "reason": r.error.code}
    return {"index": r.index, "platform": platform, "valid": r.outcome.valid,
            "granted": list(r.outcome.granted), "reason": r.outcome.reason}


async def handle_restore(request: web.Request) -> web.Response:
    user_id, body = await _user_and_body(request)
    items = rq.restore_items(body, camel=True)
    results, ents = await verifier(request).restore(
        user_id, items, request_id=request[REQUEST_ID_KEY],
        **restore_bounds(request, request.app[LIMITS_KEY].users, user_id))
    valid = [r.outcome for r in results if r.outcome is not None and r.outcome.valid]
    if not valid:
        first = results[0]
        if first.outcome is not None:
            doc = _failure(first.outcome.error or "INVALID", first.outcome.message)
        else:
            assert first.error is not None
            code = OWNED_BY_OTHER if isinstance(first.error, ConflictError) \
                else first.error.code.upper()
            doc = _failure(code, first.error.message)
        return web.json_response({**doc, "results": [_item_json(r) for r in results]})
    now = request.app[RUNTIME_KEY].now_ms()
    # `transaction` is extra for today's client (restore schema) and required by older
    # ones, which validated restore answers with the verify schema.
    return web.json_response({
        "valid": True, "entitlements": [entitlement_json(e) for e in ents],
        "transaction": _transaction(valid[0], now),
        "results": [_item_json(r) for r in results]})


async def handle_entitlements(request: web.Request) -> web.Response:
    ents = await verifier(request).entitlements(_user(request))
    return web.json_response({"entitlements": [entitlement_json(e) for e in ents]})


async def handle_products(request: web.Request) -> web.Response:
    config = request.app[RUNTIME_KEY].config
    _user(request)
    if not config.products:
        raise NotFoundError("no product catalogue is configured ([[products]] in relay.toml)",
                            code="products_not_configured")
    products = []
    for p in config.products:
        entry = {"id": p.id, "type": p.type}
        if p.android_plan_id:
            entry["androidPlanId"] = p.android_plan_id
        products.append(entry)
    return web.json_response({"products": products})


async def handle_uuid(request: web.Request) -> web.Response:
    return web.json_response({"uuid": await verifier(request).app_user_id(_user(request))})


def routes() -> list[web.RouteDef]:
    return [
        web.post("/api/iap/verify/apple", handle_verify_apple),
        web.post("/api/iap/verify/google", handle_verify_google),
        web.post("/api/iap/restore", handle_restore),
        web.get("/api/iap/entitlements", handle_entitlements),
        web.get("/api/iap/products", handle_products),
        web.post("/api/iap/uuid", handle_uuid),
        # The integration guide shows a GET; minting is idempotent per user, so both work.
        web.get("/api/iap/uuid", handle_uuid),
    ]
