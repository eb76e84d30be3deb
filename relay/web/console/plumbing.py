"""What every console handler shares: its state, its answers (a page, an error, a
redirect), the security middleware (headers, CSP), who the client is and over what
transport, the signed-in check, and the `page` / `action` decorators (session, CSRF)."""

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

from relay import __version__
from relay.core.errors import RelayError
from relay.web.appkeys import RUNTIME_KEY, STORE_KEY
from relay.web.console import render, security
from relay.web.console.sampler import CounterSampler

log = logging.getLogger("relay.console")

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


def console_state(request: web.Request) -> ConsoleState:
    return request.config_dict[CONSOLE_KEY]


def render_page(request: web.Request, name: str, status: int = 200, **context: Any) -> web.Response:
    state = console_state(request)
    runtime = request.config_dict[RUNTIME_KEY]
    text = render.render(state.env, name, base=state.base, version=__version__,
                         now_ms=runtime.now_ms(), **context)
    return web.Response(text=text, status=status, content_type="text/html", charset="utf-8")


def error_page(request: web.Request, status: int, message: str,
           headers: dict[str, str] | None = None) -> web.Response:
    response = render_page(request, "error.html", status=status, status_code=status,
                     message=message, signed=None)
    response.headers.update(headers or {})
    return response


def redirect(location: str) -> web.Response:
    """303 See Other to a path on this origin (relative: right behind any proxy)."""
    return web.Response(status=303, headers={"Location": location})


def add_security_headers(response: web.StreamResponse) -> None:
    response.headers.update(SECURITY_HEADERS)
    response.headers.setdefault("Cache-Control", "no-store")


@web.middleware
async def console_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Security headers on every answer; errors as HTML pages; off without admin-token."""
    config = request.config_dict[RUNTIME_KEY].config
    response: web.StreamResponse
    try:
        if config.credentials.admin_token is None:
            response = error_page(request, 503, "The console is off: credential 'admin-token' "
                              "is not set.")
        else:
            response = await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            add_security_headers(exc)
            raise
        response = error_page(request, exc.status, exc.reason)
    except RelayError as exc:
        response = error_page(request, exc.status, exc.message)
    except Exception:
        log.exception("console: unhandled error on %s %s", request.method, request.path)
        response = error_page(request, 500, "An internal error occurred; see relay's log.")
    add_security_headers(response)
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


async def signed_in(request: web.Request) -> Signed | None:
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
        signed = await signed_in(request)
        if signed is None:
            return redirect(f"{console_state(request).base}/signin?"
                             f"{urlencode({'next': request.path_qs})}")
        return await fn(request, signed)

    return wrapper


def action(fn: ActionHandler) -> Handler:
    """An action (POST): a session, a matching CSRF token, and not from another site."""

    @functools.wraps(fn)
    async def wrapper(request: web.Request) -> web.StreamResponse:
        signed = await signed_in(request)
        if signed is None:
            return error_page(request, 403, "Your session has ended: sign in again.")
        form = await request.post()
        given = form.get("csrf")
        if (request.headers.get("Sec-Fetch-Site", "").lower() == "cross-site"
                or not isinstance(given, str) or not security.csrf_ok(signed.token, given)):
            log.warning("console: %s %s refused: missing or wrong CSRF token client=%s",
                        request.method, request.path, _client(request))
            return error_page(request, 403, "Refused: this form is missing its CSRF token or "
                          "it does not match your session. Reload the page and try again.")
        return await fn(request, signed, form)

    return wrapper


def safe_next(state: ConsoleState, value: str | None) -> str:
    """Where to go after sign-in: a console path only (no open redirect)."""
    if (value and value.startswith(state.base + "/") and "//" not in value
            and "\\" not in value and "/signin" not in value
            and value.isascii() and value.isprintable() and " " not in value):
        return value
    return state.base + "/"


def flash_message(request: web.Request) -> str | None:
    template = MESSAGES.get(request.query.get("msg", ""))
    if template is None:
        return None
    n = request.query.get("n", "0")
    return template.format(n=int(n) if n.isdigit() else 0)


def int_param(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(name, "")
    return min(max(int(raw), lo), hi) if raw.isdigit() else default
