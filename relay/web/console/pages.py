"""The console's pages (GET) and its route table. Each page reads the store through
`queries` (one `store.read` each) and renders a template; what every handler shares is in
`plumbing`, sign-in and sign-out in `signin`, the purchase lookup in `lookup`, the actions
(POST) in `actions`.
"""

from __future__ import annotations

import logging

from aiohttp import web

from relay.outbox import admin as delivery_admin
from relay.web.appkeys import (
    ATTESTO_KEY,
    METRICS_KEY,
    OUTBOX_KEY,
    RUNTIME_KEY,
    SCHEDULER_KEY,
    STORE_KEY,
)
from relay.web.console import plots, queries, render
from relay.web.console.actions import (
    _endpoint_name,
    delivery_id_of,
    handle_pause,
    handle_recover,
    handle_resume,
    handle_retry,
)
from relay.web.console.lookup import handle_input, handle_purchase, handle_purchases
from relay.web.console.plumbing import (
    HOUR_MS,
    MINUTE_MS,
    PAGE_SIZE,
    PLOT_HOURS,
    STATIC_TYPES,
    Signed,
    console_state,
    flash_message,
    int_param,
    page,
    render_page,
)
from relay.web.console.sampler import webhook_totals
from relay.web.console.signin import (
    handle_signin,
    handle_signin_form,
    handle_signout,
)
from relay.web.routes import admin

log = logging.getLogger("relay.console")


# ---- pages ---------------------------------------------------------------------------


@page
async def handle_overview(request: web.Request, signed: Signed) -> web.StreamResponse:
    app, state = request.config_dict, console_state(request)
    runtime, store = app[RUNTIME_KEY], app[STORE_KEY]
    now_ms = runtime.now_ms()
    hours = int_param(request, "hours", PLOT_HOURS, 1, 48)
    minutes = hours * 60
    start = (now_ms // MINUTE_MS + 1) * MINUTE_MS - minutes * MINUTE_MS
    in_flight = app[SCHEDULER_KEY].in_flight(now_ms)
    figures = await store.read(lambda: queries.overview(now_ms, start, in_flight))
    totals = await webhook_totals(app[METRICS_KEY])
    sampler = state.sampler
    rejected, rejected_since = sampler.since("rejected", totals, now_ms - HOUR_MS)
    failed, _ = sampler.since("failed", totals, now_ms - HOUR_MS)
    outbox = app[OUTBOX_KEY]
    endpoints = admin.endpoint_list(outbox, runtime.config, figures.stats, figures.paused)
    attempts = figures.attempts_per_minute
    webhook_plot = plots.bar_chart(
        f"Webhooks per minute, last {hours} h", [
            plots.Series("accepted", "ok", figures.webhooks_per_minute),
            plots.Series("refused", "bad",
                         sampler.per_minute("rejected", totals, now_ms))], start, minutes)
    delivery_plot = plots.bar_chart(
        f"Delivery attempts per minute, last {hours} h", [
            plots.Series("delivered", "ok", {m: v[0] for m, v in attempts.items()}),
            plots.Series("failed", "bad", {m: v[1] for m, v in attempts.items()})],
        start, minutes)
    attesto = app[ATTESTO_KEY]
    return render_page(
        request, "overview.html", signed=signed, message=flash_message(request),
        uptime_s=(now_ms - state.started_ms) / 1000, started_ms=state.started_ms,
        store_ok=True, store=store.description,
        attesto_configured=runtime.config.credentials.attesto_api_key is not None,
        breaker=attesto.breaker, figures=figures, endpoints=endpoints,
        health=figures.health, rejected=rejected, failed=failed,
        rejected_since=rejected_since, hours=hours,
        webhook_plot=webhook_plot, delivery_plot=delivery_plot,
        webhooks_total=sum(figures.webhooks_per_minute.values()),
        delivered_total=sum(v[0] for v in attempts.values()),
        failed_total=sum(v[1] for v in attempts.values()))


@page
async def handle_endpoint(request: web.Request, signed: Signed) -> web.StreamResponse:
    app = request.config_dict
    runtime, store, outbox = app[RUNTIME_KEY], app[STORE_KEY], app[OUTBOX_KEY]
    name = _endpoint_name(request)
    status = request.query.get("status") or None
    if status not in (None, *delivery_admin.STATUSES):
        status = None
    before = int_param(request, "before", 0, 1, 2**62) or None
    filters = delivery_admin.Filters(status=status, endpoint=name, before=before,
                                     limit=PAGE_SIZE)
    now_ms = runtime.now_ms()
    data = await store.read(lambda: queries.endpoint_page(name, filters, now_ms))
    row = next(e for e in admin.endpoint_list(outbox, runtime.config, data.stats, data.paused)
               if e["name"] == name)
    deliveries = data.deliveries
    older = deliveries[-1]["id"] if len(deliveries) == PAGE_SIZE else None
    return render_page(request, "endpoint.html", signed=signed, message=flash_message(request),
                 endpoint=row, health=data.health, deliveries=deliveries, shown=status,
                 statuses=delivery_admin.STATUSES, older=older,
                 paused=name in data.paused,
                 recover_default=render.timestamp(now_ms - 86_400_000)[:16].replace(" ", "T"))


@page
async def handle_delivery(request: web.Request, signed: Signed) -> web.StreamResponse:
    app = request.config_dict
    delivery_id = delivery_id_of(request)
    now_ms = app[RUNTIME_KEY].now_ms()
    row = await app[STORE_KEY].read(lambda: delivery_admin.get_delivery(delivery_id, now_ms))
    if row is None:
        raise web.HTTPNotFound(reason=f"No delivery {delivery_id}.")
    return render_page(request, "delivery.html", signed=signed, message=flash_message(request),
                 delivery=row)


async def handle_static(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    body = console_state(request).static.get(name)
    if body is None:
        raise web.HTTPNotFound(reason="No such file.")
    return web.Response(body=body, headers={"Content-Type": STATIC_TYPES[name],
                                            "Cache-Control": "max-age=3600"})


def routes() -> list[web.RouteDef]:
    return [
        web.get("/", handle_overview),
        web.get("/signin", handle_signin_form),
        web.post("/signin", handle_signin),
        web.post("/signout", handle_signout),
        web.get("/endpoints/{name}", handle_endpoint),
        web.post("/endpoints/{name}/pause", handle_pause),
        web.post("/endpoints/{name}/resume", handle_resume),
        web.post("/endpoints/{name}/recover", handle_recover),
        web.get(r"/deliveries/{id:\d{1,18}}", handle_delivery),
        web.post(r"/deliveries/{id:\d{1,18}}/retry", handle_retry),
        web.get("/purchases", handle_purchases),
        web.get("/purchase", handle_purchase),
        web.get("/purchase/input", handle_input),
        web.get("/static/{name}", handle_static),
    ]
