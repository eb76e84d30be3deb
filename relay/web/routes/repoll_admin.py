"""`/v1/admin/due` (the re-poll queue) and `/v1/admin/resync` (re-poll now), admin token."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web

from relay.core.domain import PLATFORMS, PurchaseView, iso
from relay.core.errors import BadRequestError, NotConfiguredError, NotFoundError
from relay.scheduler.repoll import due_stats
from relay.store.models import Purchase
from relay.store.pipeline import view_of
from relay.web.appkeys import RUNTIME_KEY, SCHEDULER_KEY, STORE_KEY
from relay.web.auth import check_admin_token
from relay.web.bodies import read_json_object

RESYNC_MAX = 100


async def handle_due(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME_KEY]
    check_admin_token(runtime.config, request)
    now = runtime.now_ms()
    in_flight = request.app[SCHEDULER_KEY].in_flight(now)
    due, oldest = await request.app[STORE_KEY].read(lambda: due_stats(now, in_flight))
    return web.json_response({
        "due": due, "oldest_due_at": iso(oldest),
        "overdue_s": (now - oldest) // 1000 if oldest is not None else None,
        "scheduler": "running" if request.app[SCHEDULER_KEY].running else "stopped"})


def _rows(platform: str | None, subject_key: str | None,
          user_id: str | None) -> list[PurchaseView]:
    query = Purchase.select()
    if user_id is not None:
        query = query.where(Purchase.user_id == user_id).limit(RESYNC_MAX)
    else:
        query = query.where((Purchase.platform == platform)
                            & (Purchase.subject_key == subject_key))
    return [view_of(r) for r in query]


def _current(view: PurchaseView) -> Callable[[], list[PurchaseView]]:
    return lambda: _rows(view.platform, view.subject_key, None)


async def handle_resync(request: web.Request) -> web.Response:
    """Re-poll one purchase, or every purchase of a user, now; answer each outcome."""
    runtime = request.app[RUNTIME_KEY]
    check_admin_token(runtime.config, request)
    body = await read_json_object(request, runtime.config.server)
    platform, subject_key = body.get("platform"), body.get("subject_key")
    user_id = body.get("user_id")
    if user_id is not None:
        if not isinstance(user_id, str) or not user_id:
            raise BadRequestError("user_id must be a non-empty string")
        platform = subject_key = None
    elif platform not in PLATFORMS or not isinstance(subject_key, str) or not subject_key:
        raise BadRequestError("send {\"platform\": \"apple\"|\"google\", \"subject_key\": …} "
                              "or {\"user_id\": …}")
    poller = request.app[SCHEDULER_KEY].poller
    if poller is None:
        raise NotConfiguredError("re-polls are disabled: credential 'attesto-api-key' is "
                                 "missing")
    store = request.app[STORE_KEY]
    views = await store.read(lambda: _rows(platform, subject_key, user_id))
    if not views:
        raise NotFoundError("no such purchase" if user_id is None
                            else "this user has no purchases")
    results: list[dict[str, Any]] = []
    for view in views:
        outcome = await poller.poll_one(view)
        after = await store.read(_current(view))
        results.append({"platform": view.platform, "subject_key": view.subject_key,
                        "outcome": str(outcome),
                        "state": after[0].state if after else None})
    return web.json_response({"results": results})


def routes() -> list[web.RouteDef]:
    return [web.get("/v1/admin/due", handle_due), web.post("/v1/admin/resync", handle_resync)]
