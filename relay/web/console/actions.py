"""The console's actions (POST, session + CSRF): pause, resume, recover-since and retry,
through the same functions as the admin API."""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web
from multidict import MultiDictProxy

from relay.core.domain import parse_time_ms
from relay.web.appkeys import OUTBOX_KEY, RUNTIME_KEY, STORE_KEY
from relay.web.console.plumbing import (
    Signed,
    _client,
    action,
    console_state,
    error_page,
    redirect,
)
from relay.web.routes import admin

log = logging.getLogger("relay.console")


def _endpoint_name(request: web.Request) -> str:
    name = request.match_info["name"]
    if name not in request.config_dict[OUTBOX_KEY].endpoints:
        raise web.HTTPNotFound(reason=f"No downstream endpoint named {name!r}.")
    return name


def delivery_id_of(request: web.Request) -> int:
    return int(request.match_info["id"])


@action
async def handle_pause(request: web.Request, signed: Signed,
                       form: MultiDictProxy[Any]) -> web.StreamResponse:
    name = _endpoint_name(request)
    held = await request.config_dict[OUTBOX_KEY].pause(name)
    log.info("console: endpoint %s paused client=%s", name, _client(request))
    return redirect(f"{console_state(request).base}/endpoints/{name}?msg=paused&n={held}")


@action
async def handle_resume(request: web.Request, signed: Signed,
                        form: MultiDictProxy[Any]) -> web.StreamResponse:
    name = _endpoint_name(request)
    released = await request.config_dict[OUTBOX_KEY].resume(name)
    log.info("console: endpoint %s resumed client=%s", name, _client(request))
    return redirect(f"{console_state(request).base}/endpoints/{name}?msg=resumed&n={released}")


@action
async def handle_recover(request: web.Request, signed: Signed,
                         form: MultiDictProxy[Any]) -> web.StreamResponse:
    app = request.config_dict
    name = _endpoint_name(request)
    raw = form.get("since")
    try:
        since = parse_time_ms(raw) if isinstance(raw, str) else None
    except ValueError:
        since = None
    if since is None:
        return error_page(request, 400, "Give a time to recover since, e.g. 2026-05-01T00:00 "
                      "(UTC).")
    dry_run = form.get("dry_run") == "1"
    count = await admin.recover(app[OUTBOX_KEY], app[STORE_KEY], since, None, name, dry_run,
                                app[RUNTIME_KEY].now_ms())
    log.info("console: recover endpoint %s since %d: %d %s client=%s", name, since, count,
             "match (dry run)" if dry_run else "reopened", _client(request))
    what = "recover_dry" if dry_run else "recovered"
    return redirect(f"{console_state(request).base}/endpoints/{name}?msg={what}&n={count}")


@action
async def handle_retry(request: web.Request, signed: Signed,
                       form: MultiDictProxy[Any]) -> web.StreamResponse:
    app = request.config_dict
    delivery_id = delivery_id_of(request)
    if not await admin.retry(app[OUTBOX_KEY], app[STORE_KEY], delivery_id,
                             app[RUNTIME_KEY].now_ms()):
        raise web.HTTPNotFound(reason=f"No delivery {delivery_id}.")
    log.info("console: delivery %d retried client=%s", delivery_id, _client(request))
    return redirect(f"{console_state(request).base}/deliveries/{delivery_id}?msg=retried")
