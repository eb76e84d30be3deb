"""`/v1/admin/…` (admin token): endpoints and their queues, deliveries, retry, recover, replay.

Thin HTTP: parse and validate, then run `delivery_admin` / `Outbox` on the store.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from relay.config import Config
from relay.core.domain import PLATFORMS, iso, parse_time_ms
from relay.core.errors import BadRequestError, NotFoundError
from relay.core.rules import Route
from relay.outbox import admin as delivery_admin
from relay.outbox import queue as outbox_db
from relay.outbox.worker import Outbox
from relay.store.database import Store
from relay.web.appkeys import OUTBOX_KEY, RUNTIME_KEY, STORE_KEY
from relay.web.auth import check_admin_token
from relay.web.bodies import read_json_object

REPLAY_BATCH = 500
REPLAY_MAX = 100_000


def _outbox(request: web.Request) -> Outbox:
    check_admin_token(request.app[RUNTIME_KEY].config, request)
    return request.app[OUTBOX_KEY]


def _int(value: str | None, name: str, default: int, lo: int, hi: int) -> int:
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise BadRequestError(f"{name} must be an integer (got {value!r})") from None
    if not lo <= number <= hi:
        raise BadRequestError(f"{name} must be between {lo} and {hi} (got {number})")
    return number


def _time(value: Any, name: str) -> int | None:
    if value is None:
        return None
    try:
        return parse_time_ms(value)
    except (ValueError, TypeError):
        raise BadRequestError(f"{name} must be an ISO-8601 time or epoch milliseconds "
                              f"(got {value!r})") from None


def _bool(value: Any, name: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise BadRequestError(f"{name} must be true or false")
    return value


def _endpoint_name(request: web.Request, outbox: Outbox) -> str:
    name = request.match_info["name"]
    if name not in outbox.endpoints:
        raise NotFoundError(f"no downstream endpoint named {name!r}")
    return name


async def _body(request: web.Request) -> dict[str, Any]:
    return await read_json_object(request, request.app[RUNTIME_KEY].config.server)


def _state(outbox: Outbox, name: str, paused: dict[str, Any]) -> str:
    if name in paused:
        return str(paused[name].reason)
    ep = outbox.endpoints[name]
    if not ep.enabled:
        return "disabled"
    return "active" if ep.can_sign else "no_secret"


EMPTY_QUEUE = {"pending": 0, "held": 0, "dead": 0, "failing": 0, "oldest_pending_age_s": None}


def endpoint_list(outbox: Outbox, config: Config, stats: dict[str, dict[str, Any]],
                  paused: dict[str, Any]) -> list[dict[str, Any]]:
    """Every endpoint with its state and queue (`GET /v1/admin/endpoints`, the console):
    the configured ones in config order, then rows of endpoints no longer configured."""
    stats = dict(stats)
    out = []
    for ds in config.downstream:
        ep = outbox.endpoints[ds.name]
        out.append({
            "name": ds.name, "url": ds.url, "state": _state(outbox, ds.name, paused),
            "since": iso(paused[ds.name].since_ms) if ds.name in paused else None,
            "events": list(ds.events), "signing": ep.schemes, "timeout_s": ep.timeout_s,
            "in_flight": outbox.in_flight(ds.name), "queue": stats.pop(ds.name, EMPTY_QUEUE)})
    for name, queue in sorted(stats.items()):  # rows of endpoints no longer configured
        out.append({"name": name, "url": None, "state": "unknown", "since": None,
                    "events": [], "signing": [], "timeout_s": None, "in_flight": 0,
                    "queue": queue})
    return out


async def handle_endpoints(request: web.Request) -> web.Response:
    outbox = _outbox(request)
    runtime, store = request.app[RUNTIME_KEY], request.app[STORE_KEY]
    now_ms = runtime.now_ms()
    stats = await store.read(lambda: delivery_admin.endpoint_stats(now_ms))
    paused = await store.read(outbox_db.paused_endpoints)
    return web.json_response({"endpoints": endpoint_list(outbox, runtime.config, stats,
                                                         paused)})


async def handle_pause(request: web.Request) -> web.Response:
    outbox = _outbox(request)
    name = _endpoint_name(request, outbox)
    held = await outbox.pause(name)
    return web.json_response({"endpoint": name, "state": "paused", "held": held})


async def handle_resume(request: web.Request) -> web.Response:
    outbox = _outbox(request)
    name = _endpoint_name(request, outbox)
    released = await outbox.resume(name)
    paused = await request.app[STORE_KEY].read(outbox_db.paused_endpoints)
    return web.json_response({"endpoint": name, "state": _state(outbox, name, paused),
                              "released": released})


async def handle_deliveries(request: web.Request) -> web.Response:
    _outbox(request)
    q = request.query
    status = q.get("status") or None
    if status is not None and status not in delivery_admin.STATUSES:
        raise BadRequestError(f"status must be one of {', '.join(delivery_admin.STATUSES)}")
    filters = delivery_admin.Filters(
        status=status, endpoint=q.get("endpoint") or None, subject=q.get("subject") or None,
        event_id=q.get("event_id") or None,
        before=_int(q.get("before"), "before", 0, 1, 2**62) or None,
        limit=_int(q.get("limit"), "limit", 50, 1, 1000))
    now_ms = request.app[RUNTIME_KEY].now_ms()
    rows = await request.app[STORE_KEY].read(lambda: delivery_admin.list_deliveries(filters,
                                                                                  now_ms))
    following = str(rows[-1]["id"]) if len(rows) == filters.limit else None
    return web.json_response({"deliveries": rows, "next_before": following})


async def handle_delivery(request: web.Request) -> web.Response:
    _outbox(request)
    delivery_id = int(request.match_info["id"])
    now_ms = request.app[RUNTIME_KEY].now_ms()
    row = await request.app[STORE_KEY].read(lambda: delivery_admin.get_delivery(delivery_id,
                                                                               now_ms))
    if row is None:
        raise NotFoundError(f"no delivery {delivery_id}")
    return web.json_response(row)


async def retry(outbox: Outbox, store: Store, delivery_id: int, now_ms: int) -> bool:
    """Send one delivery again now (held if its endpoint cannot send); False if unknown."""
    active = outbox.active_endpoints()
    return await store.write(lambda: delivery_admin.retry_delivery(delivery_id, now_ms, active))


async def recover(outbox: Outbox, store: Store, since_ms: int, until_ms: int | None,
                  endpoint: str | None, dry_run: bool, now_ms: int) -> int:
    """Reopen dead and failing deliveries created in [since, until) (count them on a dry
    run); return how many."""
    active = outbox.active_endpoints()

    def work() -> int:
        return delivery_admin.recover(since_ms, until_ms, endpoint, dry_run, now_ms, active)

    return await (store.read(work) if dry_run else store.write(work))


async def handle_retry(request: web.Request) -> web.Response:
    outbox = _outbox(request)
    delivery_id = int(request.match_info["id"])
    now_ms = request.app[RUNTIME_KEY].now_ms()
    store = request.app[STORE_KEY]
    if not await retry(outbox, store, delivery_id, now_ms):
        raise NotFoundError(f"no delivery {delivery_id}")
    row = await store.read(lambda: delivery_admin.get_delivery(delivery_id, now_ms))
    return web.json_response(row)


async def handle_recover(request: web.Request) -> web.Response:
    outbox = _outbox(request)
    body = await _body(request)
    since = _time(body.get("since"), "since")
    if since is None:
        raise BadRequestError("since is required (ISO-8601 time)")
    until = _time(body.get("until"), "until")
    endpoint = body.get("endpoint")
    if endpoint is not None and endpoint not in outbox.endpoints:
        raise NotFoundError(f"no downstream endpoint named {endpoint!r}")
    dry_run = _bool(body.get("dry_run"), "dry_run")
    count = await recover(outbox, request.app[STORE_KEY], since, until, endpoint, dry_run,
                          request.app[RUNTIME_KEY].now_ms())
    return web.json_response({"matched": count, "reopened": 0 if dry_run else count,
                              "dry_run": dry_run})


def _subject(value: Any) -> tuple[str, str] | None:
    if value is None:
        return None
    platform, sep, key = str(value).partition(":")
    if not sep or platform not in PLATFORMS or not key:
        raise BadRequestError("subject must be '<apple|google>:<subject_key>'")
    return platform, key


async def handle_replay(request: web.Request) -> web.Response:
    outbox = _outbox(request)
    body = await _body(request)
    name = body.get("endpoint")
    route: Route | None = next(
        (r for r in request.app[RUNTIME_KEY].rules.routes if r.name == name), None)
    if not isinstance(name, str) or route is None:
        raise NotFoundError(f"no downstream endpoint named {name!r}")
    subject = _subject(body.get("subject"))
    since, until = _time(body.get("since"), "since"), _time(body.get("until"), "until")
    if subject is None and since is None:
        raise BadRequestError("give a subject, a since time, or both")
    dry_run = _bool(body.get("dry_run"), "dry_run")
    store, runtime = request.app[STORE_KEY], request.app[RUNTIME_KEY]
    active = name in outbox.active_endpoints()
    matched = enqueued = cursor = 0
    while True:  # one transaction per batch: a long replay never holds the store
        after, now_ms = cursor, runtime.now_ms()

        def page(after: int = after, now_ms: int = now_ms) -> delivery_admin.ReplayPage:
            return delivery_admin.replay_page(route, subject, since, until, after,
                                              REPLAY_BATCH, dry_run, now_ms, active)

        result = await (store.read(page) if dry_run else store.write(page))
        matched += result.matched
        enqueued += result.enqueued
        if result.last_cursor is None or matched >= REPLAY_MAX:
            break
        cursor = result.last_cursor
    return web.json_response({"endpoint": name, "matched": matched, "enqueued": enqueued,
                              "held": not active and not dry_run, "dry_run": dry_run,
                              "truncated": result.last_cursor is not None})


def routes() -> list[web.RouteDef]:
    return [
        web.get("/v1/admin/endpoints", handle_endpoints),
        web.post("/v1/admin/endpoints/{name}/pause", handle_pause),
        web.post("/v1/admin/endpoints/{name}/resume", handle_resume),
        web.get("/v1/admin/deliveries", handle_deliveries),
        web.post("/v1/admin/deliveries/recover", handle_recover),
        web.get(r"/v1/admin/deliveries/{id:\d{1,18}}", handle_delivery),
        web.post(r"/v1/admin/deliveries/{id:\d{1,18}}/retry", handle_retry),
        web.post("/v1/admin/replay", handle_replay),
    ]
