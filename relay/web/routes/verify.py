"""The service API under `/v1` (service API keys): verify, restore, entitlements, purchases,
and the appUserId binding. Thin: parse, authenticate, call `Verifier`, render.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from relay.core.domain import PLATFORMS
from relay.core.errors import NotFoundError
from relay.core.json_codec import dumps_standard
from relay.verify import requests as rq
from relay.verify.verifier import AppleItem, ItemResult, Outcome, Verifier
from relay.web.appkeys import ATTESTO_KEY, LIMITS_KEY, METRICS_KEY, RUNTIME_KEY, STORE_KEY
from relay.web.auth import check_service_key
from relay.web.bodies import read_json_object
from relay.web.limits import CallerBuckets
from relay.web.middlewares import REQUEST_ID_KEY


def verifier(request: web.Request) -> Verifier:
    app = request.app
    return Verifier(app[RUNTIME_KEY], app[STORE_KEY], app[ATTESTO_KEY], app[METRICS_KEY])


async def _service_body(request: web.Request) -> tuple[str, dict[str, Any]]:
    """Authenticate first (a 401 reveals nothing), spend one of the key's tokens (429 when
    it has none), then read the JSON body. Returns the key's name and the body."""
    config = request.app[RUNTIME_KEY].config
    key = check_service_key(config, request)
    request.app[LIMITS_KEY].service_keys.take(key)
    return key, await read_json_object(request, config.server)


def restore_bounds(request: web.Request, buckets: CallerBuckets,
                   principal: str) -> dict[str, Any]:
    """A restore's deadline, and the caller's bucket paying for each item after the first
    (the request's own token paid for that one)."""
    async def budget(deadline: float) -> bool:
        return await buckets.wait(principal, deadline)

    return {"budget": budget,
            "timeout_s": request.app[RUNTIME_KEY].config.limits.restore_timeout_s}


def outcome_json(outcome: Outcome) -> dict[str, Any]:
    ents = [e.to_json() for e in outcome.entitlements]
    if not outcome.valid:
        return {"valid": False, "error": outcome.error, "message": outcome.message,
                "entitlements": ents}
    assert outcome.purchase is not None
    return {"valid": True, "purchase": outcome.purchase.to_json(),
            "granted": list(outcome.granted), "entitlements": ents}


def item_json(result: ItemResult) -> dict[str, Any]:
    out: dict[str, Any] = {"index": result.index,
                           "platform": "apple" if isinstance(result.item, AppleItem)
                           else "google"}
    o = result.outcome
    if o is None:
        assert result.error is not None
        out.update(valid=None, granted=[], reason=result.error.code,
                   error={"code": result.error.code, "message": result.error.message})
        return out
    out.update(valid=o.valid, granted=list(o.granted), reason=o.reason)
    if o.valid and o.purchase is not None:
        out["purchase"] = o.purchase.to_json()
    else:
        out["message"] = o.message
    return out


async def handle_verify_apple(request: web.Request) -> web.Response:
    _, body = await _service_body(request)
    uid = rq.user_id(body.get("user_id"))
    outcome = await verifier(request).verify(uid, rq.apple_item(body),
                                             request_id=request[REQUEST_ID_KEY])
    return web.json_response(outcome_json(outcome), dumps=dumps_standard)


async def handle_verify_google(request: web.Request) -> web.Response:
    _, body = await _service_body(request)
    uid = rq.user_id(body.get("user_id"))
    outcome = await verifier(request).verify(uid, rq.google_item(body),
                                             request_id=request[REQUEST_ID_KEY])
    return web.json_response(outcome_json(outcome), dumps=dumps_standard)


async def handle_restore(request: web.Request) -> web.Response:
    key, body = await _service_body(request)
    uid = rq.user_id(body.get("user_id"))
    results, ents = await verifier(request).restore(
        uid, rq.restore_items(body), request_id=request[REQUEST_ID_KEY],
        **restore_bounds(request, request.app[LIMITS_KEY].service_keys, key))
    return web.json_response({"user_id": uid, "results": [item_json(r) for r in results],
                              "entitlements": [e.to_json() for e in ents]})


async def handle_entitlements(request: web.Request) -> web.Response:
    check_service_key(request.app[RUNTIME_KEY].config, request)
    uid = rq.user_id(request.match_info["user_id"])
    ents = await verifier(request).entitlements(uid)
    return web.json_response({"user_id": uid, "entitlements": [e.to_json() for e in ents]})


async def handle_purchase(request: web.Request) -> web.Response:
    check_service_key(request.app[RUNTIME_KEY].config, request)
    platform, key = request.match_info["platform"], request.match_info["subject_key"]
    view = (await verifier(request).purchase(platform, key)) if platform in PLATFORMS else None
    if view is None:
        raise NotFoundError("no such purchase", code="purchase_not_found")
    return web.json_response(view.to_json())


async def handle_app_user_id(request: web.Request) -> web.Response:
    check_service_key(request.app[RUNTIME_KEY].config, request)
    uid = rq.user_id(request.match_info["user_id"])
    return web.json_response({"uuid": await verifier(request).app_user_id(uid)})


def routes() -> list[web.RouteDef]:
    return [
        web.post("/v1/verify/apple", handle_verify_apple),
        web.post("/v1/verify/google", handle_verify_google),
        web.post("/v1/restore", handle_restore),
        web.get("/v1/users/{user_id}/entitlements", handle_entitlements),
        web.post("/v1/users/{user_id}/app-user-id", handle_app_user_id),
        web.get("/v1/purchases/{platform}/{subject_key}", handle_purchase),
    ]
