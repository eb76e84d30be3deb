"""The console's HTTP side: a sub-application with its security middleware, sign-in and
sign-out, the pages (GET) and the actions (POST, session + CSRF token).

Pages read the store through `queries` (one `store.read` each); actions go through the
same functions as the admin API (`routes.admin`, `Outbox.pause/resume`).
"""

from __future__ import annotations

import functools
import ipaddress
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import jinja2
from aiohttp import web
from aiohttp.typedefs import Handler
from multidict import MultiDictProxy

from relay import __version__, delivery_admin, lookups
from relay.appkeys import ATTESTO_KEY, METRICS_KEY, RUNTIME_KEY, STORE_KEY
from relay.console import plots, queries, render, security
from relay.console.sampler import CounterSampler, webhook_totals
from relay.domain import PLATFORMS, entitlement_keys, is_entitled, parse_time_ms
from relay.errors import RelayError
from relay.outbox import OUTBOX_KEY
from relay.routes import admin

log = logging.getLogger(__name__)

MINUTE_MS = 60_000
HOUR_MS = 3_600_000
PLOT_HOURS = 6  # default span of the overview's plots; ?hours=1..48
PAGE_SIZE = 50
MAX_SECRET_CHARS = 1024
CSP = ("default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
       "frame-ancestors 'none'; base-uri 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=()",
}
STATIC_TYPES = {"console.css": "text/css; charset=utf-8", "favicon.svg": "image/svg+xml"}
# Messages after an action (POST, then redirect); only these texts, never the request's.
MESSAGES = {
    "paused": "Paused: {n} deliveries held until you resume the endpoint.",
    "resumed": "Resumed: {n} held deliveries released.",
    "retried": "Queued: the delivery is sent again now.",
    "recovered": "Reopened {n} dead or failing deliveries.",
    "recover_dry": "Dry run: {n} dead or failing deliveries match; nothing was changed.",
    "signed_out": "Signed out.",
}


@dataclass(slots=True)
class ConsoleState:
    """What the console keeps for the life of the app."""

    base: str  # its path, without a trailing slash
    env: jinja2.Environment
    sampler: CounterSampler = field(default_factory=CounterSampler)
    started_ms: int = 0
    static: dict[str, bytes] = field(default_factory=dict)


CONSOLE_KEY = web.AppKey("console", ConsoleState)


@dataclass(frozen=True, slots=True)
class Signed:
    """A request from a signed-in browser."""

    session: security.Session
    csrf: str
    token: str


# ---- plumbing ------------------------------------------------------------------------


def _state(request: web.Request) -> ConsoleState:
    return request.config_dict[CONSOLE_KEY]


def _page(request: web.Request, name: str, status: int = 200, **context: Any) -> web.Response:
    state = _state(request)
    runtime = request.config_dict[RUNTIME_KEY]
    text = render.render(state.env, name, base=state.base, version=__version__,
                         now_ms=runtime.now_ms(), **context)
    return web.Response(text=text, status=status, content_type="text/html", charset="utf-8")


def _error(request: web.Request, status: int, message: str,
           headers: dict[str, str] | None = None) -> web.Response:
    response = _page(request, "error.html", status=status, status_code=status,
                     message=message, signed=None)
    response.headers.update(headers or {})
    return response


def _redirect(location: str) -> web.Response:
    """303 See Other to a path on this origin (relative: right behind any proxy)."""
    return web.Response(status=303, headers={"Location": location})


def _secure(response: web.StreamResponse) -> None:
    response.headers.update(SECURITY_HEADERS)
    response.headers.setdefault("Cache-Control", "no-store")


@web.middleware
async def console_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Security headers on every answer; errors as HTML pages; off without admin-token."""
    config = request.config_dict[RUNTIME_KEY].config
    response: web.StreamResponse
    try:
        if config.credentials.admin_token is None:
            response = _error(request, 503, "The console is off: credential 'admin-token' "
                              "is not set.")
        else:
            response = await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            _secure(exc)
            raise
        response = _error(request, exc.status, exc.reason)
    except RelayError as exc:
        response = _error(request, exc.status, exc.message)
    except Exception:
        log.exception("console: unhandled error on %s %s", request.method, request.path)
        response = _error(request, 500, "An internal error occurred; see relay's log.")
    _secure(response)
    return response


def _client(request: web.Request) -> str:
    """The client address; behind a proxy on loopback, the last X-Forwarded-For hop."""
    peer = request.remote or "-"
    forwarded = request.headers.get("X-Forwarded-For", "")
    if forwarded and _is_loopback(peer):
        return forwarded.split(",")[-1].strip()[:128] or peer
    return peer


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def _transport(request: web.Request) -> str:
    """"https" (TLS here, or a proxy on loopback that says the browser used HTTPS),
    "loopback" (plain HTTP straight from this machine: an SSH tunnel, a local browser) or
    "insecure" (plain HTTP that crossed a network, or a proxy that does not say HTTPS)."""
    if request.secure:
        return "https"
    if not _is_loopback(request.remote or ""):
        return "insecure"  # forwarding headers count only from a proxy on this machine
    proto = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
    if proto == "https" or "proto=https" in request.headers.get("Forwarded", "").lower():
        return "https"
    proxied = any(h in request.headers for h in ("X-Forwarded-For", "X-Forwarded-Proto",
                                                  "Forwarded"))
    return "insecure" if proxied else "loopback"


async def _signed(request: web.Request) -> Signed | None:
    token = request.cookies.get(security.COOKIE, "")
    if not token or len(token) > 128:
        return None
    runtime = request.config_dict[RUNTIME_KEY]
    keys = security.session_keys(runtime.config, token)
    now_ms = runtime.now_ms()
    session = await request.config_dict[STORE_KEY].read(
        lambda: security.find_session(keys, now_ms))
    if session is None:
        return None
    return Signed(session, security.csrf_token(token), token)


PageHandler = Callable[[web.Request, Signed], Awaitable[web.StreamResponse]]
ActionHandler = Callable[[web.Request, Signed, MultiDictProxy[Any]],
                         Awaitable[web.StreamResponse]]


def page(fn: PageHandler) -> Handler:
    """A page: signed-in browsers only; others go to the sign-in page and come back."""

    @functools.wraps(fn)
    async def wrapper(request: web.Request) -> web.StreamResponse:
        signed = await _signed(request)
        if signed is None:
            return _redirect(f"{_state(request).base}/signin?"
                             f"{urlencode({'next': request.path_qs})}")
        return await fn(request, signed)

    return wrapper


def action(fn: ActionHandler) -> Handler:
    """An action (POST): a session, a matching CSRF token, and not from another site."""

    @functools.wraps(fn)
    async def wrapper(request: web.Request) -> web.StreamResponse:
        signed = await _signed(request)
        if signed is None:
            return _error(request, 403, "Your session has ended: sign in again.")
        form = await request.post()
        given = form.get("csrf")
        if (request.headers.get("Sec-Fetch-Site", "").lower() == "cross-site"
                or not isinstance(given, str) or not security.csrf_ok(signed.token, given)):
            log.warning("console: %s %s refused: missing or wrong CSRF token client=%s",
                        request.method, request.path, _client(request))
            return _error(request, 403, "Refused: this form is missing its CSRF token or "
                          "it does not match your session. Reload the page and try again.")
        return await fn(request, signed, form)

    return wrapper


def _safe_next(state: ConsoleState, value: str | None) -> str:
    """Where to go after sign-in: a console path only (no open redirect)."""
    if (value and value.startswith(state.base + "/") and "//" not in value
            and "\\" not in value and "/signin" not in value
            and value.isascii() and value.isprintable() and " " not in value):
        return value
    return state.base + "/"


def _message(request: web.Request) -> str | None:
    template = MESSAGES.get(request.query.get("msg", ""))
    if template is None:
        return None
    n = request.query.get("n", "0")
    return template.format(n=int(n) if n.isdigit() else 0)


# ---- sign-in and sign-out --------------------------------------------------------------


async def handle_signin_form(request: web.Request) -> web.StreamResponse:
    state = _state(request)
    if await _signed(request) is not None:
        return _redirect(_safe_next(state, request.query.get("next")))
    return _page(request, "signin.html", signed=None, error=None,
                 next=_safe_next(state, request.query.get("next")),
                 insecure=_transport(request) == "insecure", message=_message(request))


async def handle_signin(request: web.Request) -> web.StreamResponse:
    state, runtime = _state(request), request.config_dict[RUNTIME_KEY]
    config = runtime.config
    transport = _transport(request)
    if transport == "insecure":
        return _error(request, 403, "Refused: sign-in over plain HTTP across a network would "
                      "expose the session. Use an SSH tunnel to 127.0.0.1 or an HTTPS "
                      "reverse proxy that sets X-Forwarded-Proto: https.")
    if request.headers.get("Sec-Fetch-Site", "").lower() == "cross-site":
        return _error(request, 403, "Refused: a sign-in from another site.")
    form = await request.post()
    given = form.get("secret")
    wanted = form.get("next")
    next_path = _safe_next(state, wanted if isinstance(wanted, str) else None)
    credential = None
    if isinstance(given, str) and 0 < len(given) <= MAX_SECRET_CHARS:
        credential = security.matching_credential(config, given)
    token = security.new_token()
    secret = dict(security.sign_in_secrets(config)).get(credential or "")
    key = security.session_key(secret, token) if secret is not None else None
    client, c = _client(request), config.console
    now_ms = runtime.now_ms()
    result = await request.config_dict[STORE_KEY].write(
        lambda: security.sign_in(client, credential, key, now_ms, c.session_ttl_s,
                                 c.max_failed_signins, c.failed_signin_window_s))
    if result.retry_after_s:
        log.warning("console sign-in refused: too many failed sign-ins client=%s", client)
        return _error(request, 429, "Too many failed sign-ins: try again in "
                      f"{render.age(result.retry_after_s)}.",
                      {"Retry-After": str(result.retry_after_s)})
    if not result.ok:
        log.warning("console sign-in failed client=%s", client)
        return _page(request, "signin.html", status=401, signed=None, next=next_path,
                     error="That is not the admin token or the console password.",
                     insecure=False, message=None)
    log.info("console sign-in client=%s credential=%s", client, credential)
    response = _redirect(next_path)
    response.set_cookie(security.COOKIE, token, path=state.base + "/", httponly=True,
                        samesite="Strict", secure=transport == "https",
                        max_age=c.session_ttl_s)
    return response


@action
async def handle_signout(request: web.Request, signed: Signed,
                         form: MultiDictProxy[Any]) -> web.StreamResponse:
    state, runtime = _state(request), request.config_dict[RUNTIME_KEY]
    keys = security.session_keys(runtime.config, signed.token)
    await request.config_dict[STORE_KEY].write(lambda: security.sign_out(keys))
    log.info("console sign-out client=%s", _client(request))
    response = _redirect(f"{state.base}/signin?msg=signed_out")
    response.del_cookie(security.COOKIE, path=state.base + "/")
    return response


# ---- pages ---------------------------------------------------------------------------


def _int_param(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(name, "")
    return min(max(int(raw), lo), hi) if raw.isdigit() else default


@page
async def handle_overview(request: web.Request, signed: Signed) -> web.StreamResponse:
    app, state = request.config_dict, _state(request)
    runtime, store = app[RUNTIME_KEY], app[STORE_KEY]
    now_ms = runtime.now_ms()
    hours = _int_param(request, "hours", PLOT_HOURS, 1, 48)
    minutes = hours * 60
    start = (now_ms // MINUTE_MS + 1) * MINUTE_MS - minutes * MINUTE_MS
    figures = await store.read(lambda: queries.overview(now_ms, start))
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
    return _page(
        request, "overview.html", signed=signed, message=_message(request),
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


def _endpoint_name(request: web.Request) -> str:
    name = request.match_info["name"]
    if name not in request.config_dict[OUTBOX_KEY].endpoints:
        raise web.HTTPNotFound(reason=f"No downstream endpoint named {name!r}.")
    return name


@page
async def handle_endpoint(request: web.Request, signed: Signed) -> web.StreamResponse:
    app = request.config_dict
    runtime, store, outbox = app[RUNTIME_KEY], app[STORE_KEY], app[OUTBOX_KEY]
    name = _endpoint_name(request)
    status = request.query.get("status") or None
    if status not in (None, *delivery_admin.STATUSES):
        status = None
    before = _int_param(request, "before", 0, 1, 2**62) or None
    filters = delivery_admin.Filters(status=status, endpoint=name, before=before,
                                     limit=PAGE_SIZE)
    now_ms = runtime.now_ms()
    data = await store.read(lambda: queries.endpoint_page(name, filters, now_ms))
    row = next(e for e in admin.endpoint_list(outbox, runtime.config, data.stats, data.paused)
               if e["name"] == name)
    deliveries = data.deliveries
    older = deliveries[-1]["id"] if len(deliveries) == PAGE_SIZE else None
    return _page(request, "endpoint.html", signed=signed, message=_message(request),
                 endpoint=row, health=data.health, deliveries=deliveries, shown=status,
                 statuses=delivery_admin.STATUSES, older=older,
                 paused=name in data.paused,
                 recover_default=render.timestamp(now_ms - 86_400_000)[:16].replace(" ", "T"))


def _delivery_id(request: web.Request) -> int:
    return int(request.match_info["id"])


@page
async def handle_delivery(request: web.Request, signed: Signed) -> web.StreamResponse:
    app = request.config_dict
    delivery_id = _delivery_id(request)
    now_ms = app[RUNTIME_KEY].now_ms()
    row = await app[STORE_KEY].read(lambda: delivery_admin.get_delivery(delivery_id, now_ms))
    if row is None:
        raise web.HTTPNotFound(reason=f"No delivery {delivery_id}.")
    return _page(request, "delivery.html", signed=signed, message=_message(request),
                 delivery=row)


@page
async def handle_purchases(request: web.Request, signed: Signed) -> web.StreamResponse:
    """The lookup form; by user id it lists the user's purchases."""
    state, store = _state(request), request.config_dict[STORE_KEY]
    q = request.query
    platform, key, user = q.get("platform", ""), q.get("key", "").strip(), q.get("user", "")
    if key:
        if platform not in PLATFORMS:
            return _page(request, "purchases.html", status=400, signed=signed, message=None,
                         error="Choose apple or google.", platform=platform, key=key,
                         user="", purchases=None)
        return _redirect(f"{state.base}/purchase?{urlencode({'platform': platform, 'key': key})}")
    purchases = None
    user = user.strip()
    if user:
        purchases = await store.read(lambda: lookups.user_purchases(user))
    return _page(request, "purchases.html", signed=signed, message=None, error=None,
                 platform=platform, key=key, user=user, purchases=purchases)


@dataclass(frozen=True, slots=True)
class PurchaseSection:
    """One section of the purchase page: its title and template. A section with data of
    its own (issue 18's history and explain) adds a loader to `queries.purchase_page`."""

    id: str
    title: str
    template: str


PURCHASE_SECTIONS: tuple[PurchaseSection, ...] = (
    PurchaseSection("purchase", "Stored row", "purchase_row.html"),
    PurchaseSection("entitlements", "Entitlements", "purchase_entitlements.html"),
    PurchaseSection("events", "Relayed events", "purchase_events.html"),
    PurchaseSection("deliveries", "Deliveries", "purchase_deliveries.html"),
)


@page
async def handle_purchase(request: web.Request, signed: Signed) -> web.StreamResponse:
    app = request.config_dict
    runtime, store = app[RUNTIME_KEY], app[STORE_KEY]
    platform, key = request.query.get("platform", ""), request.query.get("key", "")
    if platform not in PLATFORMS or not key:
        raise web.HTTPNotFound(reason="Give a platform (apple or google) and a subject key.")
    now_ms = runtime.now_ms()
    data = await store.read(lambda: queries.purchase_page(platform, key, now_ms))
    if data is None:
        return _page(request, "purchases.html", status=404, signed=signed, message=None,
                     error="No purchase with that platform and subject key.",
                     platform=platform, key=key, user="", purchases=None)
    rules = runtime.rules
    view = data.purchase
    return _page(request, "purchase.html", signed=signed, message=_message(request),
                 p=view, data=data, sections=PURCHASE_SECTIONS,
                 keys=entitlement_keys(rules.entitlements, view.product_id, view.base_plan_id),
                 entitled=is_entitled(view, now_ms, rules.entitlement_policy))


async def handle_static(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    body = _state(request).static.get(name)
    if body is None:
        raise web.HTTPNotFound(reason="No such file.")
    return web.Response(body=body, headers={"Content-Type": STATIC_TYPES[name],
                                            "Cache-Control": "max-age=3600"})


# ---- actions -------------------------------------------------------------------------


@action
async def handle_pause(request: web.Request, signed: Signed,
                       form: MultiDictProxy[Any]) -> web.StreamResponse:
    name = _endpoint_name(request)
    held = await request.config_dict[OUTBOX_KEY].pause(name)
    log.info("console: endpoint %s paused client=%s", name, _client(request))
    return _redirect(f"{_state(request).base}/endpoints/{name}?msg=paused&n={held}")


@action
async def handle_resume(request: web.Request, signed: Signed,
                        form: MultiDictProxy[Any]) -> web.StreamResponse:
    name = _endpoint_name(request)
    released = await request.config_dict[OUTBOX_KEY].resume(name)
    log.info("console: endpoint %s resumed client=%s", name, _client(request))
    return _redirect(f"{_state(request).base}/endpoints/{name}?msg=resumed&n={released}")


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
        return _error(request, 400, "Give a time to recover since, e.g. 2026-05-01T00:00 "
                      "(UTC).")
    dry_run = form.get("dry_run") == "1"
    count = await admin.recover(app[OUTBOX_KEY], app[STORE_KEY], since, None, name, dry_run,
                                app[RUNTIME_KEY].now_ms())
    log.info("console: recover endpoint %s since %d: %d %s client=%s", name, since, count,
             "match (dry run)" if dry_run else "reopened", _client(request))
    what = "recover_dry" if dry_run else "recovered"
    return _redirect(f"{_state(request).base}/endpoints/{name}?msg={what}&n={count}")


@action
async def handle_retry(request: web.Request, signed: Signed,
                       form: MultiDictProxy[Any]) -> web.StreamResponse:
    app = request.config_dict
    delivery_id = _delivery_id(request)
    if not await admin.retry(app[OUTBOX_KEY], app[STORE_KEY], delivery_id,
                             app[RUNTIME_KEY].now_ms()):
        raise web.HTTPNotFound(reason=f"No delivery {delivery_id}.")
    log.info("console: delivery %d retried client=%s", delivery_id, _client(request))
    return _redirect(f"{_state(request).base}/deliveries/{delivery_id}?msg=retried")


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
        web.get("/static/{name}", handle_static),
    ]
