"""Signing in (the admin token or the console password, into a server-side session; failed
attempts throttled) and signing out."""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web
from multidict import MultiDictProxy

from relay.web.appkeys import RUNTIME_KEY, STORE_KEY
from relay.web.console import render, security
from relay.web.console.plumbing import (
    MAX_SECRET_CHARS,
    Signed,
    _client,
    _transport,
    action,
    console_state,
    error_page,
    flash_message,
    redirect,
    render_page,
    safe_next,
    signed_in,
)

log = logging.getLogger("relay.console")


async def handle_signin_form(request: web.Request) -> web.StreamResponse:
    state = console_state(request)
    if await signed_in(request) is not None:
        return redirect(safe_next(state, request.query.get("next")))
    return render_page(request, "signin.html", signed=None, error=None,
                 next=safe_next(state, request.query.get("next")),
                 insecure=_transport(request) == "insecure", message=flash_message(request))


async def handle_signin(request: web.Request) -> web.StreamResponse:
    state, runtime = console_state(request), request.config_dict[RUNTIME_KEY]
    config = runtime.config
    transport = _transport(request)
    if transport == "insecure":
        return error_page(request, 403, "Refused: sign-in over plain HTTP across a network would "
                      "expose the session. Use an SSH tunnel to 127.0.0.1 or an HTTPS "
                      "reverse proxy that sets X-Forwarded-Proto: https.")
    if request.headers.get("Sec-Fetch-Site", "").lower() == "cross-site":
        return error_page(request, 403, "Refused: a sign-in from another site.")
    form = await request.post()
    given = form.get("secret")
    wanted = form.get("next")
    next_path = safe_next(state, wanted if isinstance(wanted, str) else None)
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
        return error_page(request, 429, "Too many failed sign-ins: try again in "
                      f"{render.age(result.retry_after_s)}.",
                      {"Retry-After": str(result.retry_after_s)})
    if not result.ok:
        log.warning("console sign-in failed client=%s", client)
        return render_page(request, "signin.html", status=401, signed=None, next=next_path,
                     error="That is not the admin token or the console password.",
                     insecure=False, message=None)
    log.info("console sign-in client=%s credential=%s", client, credential)
    response = redirect(next_path)
    response.set_cookie(security.COOKIE, token, path=state.base + "/", httponly=True,
                        samesite="Strict", secure=transport == "https",
                        max_age=c.session_ttl_s)
    return response


@action
async def handle_signout(request: web.Request, signed: Signed,
                         form: MultiDictProxy[Any]) -> web.StreamResponse:
    state, runtime = console_state(request), request.config_dict[RUNTIME_KEY]
    keys = security.session_keys(runtime.config, signed.token)
    await request.config_dict[STORE_KEY].write(lambda: security.sign_out(keys))
    log.info("console sign-out client=%s", _client(request))
    response = redirect(f"{state.base}/signin?msg=signed_out")
    response.del_cookie(security.COOKIE, path=state.base + "/")
    return response
