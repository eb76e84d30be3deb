"""The outbox as the application runs it: the cleanup context and the app keys.

The worker starts after the store opens and stops (giving back its claims) before
the store closes; the delivery session with the SSRF-guarded resolver is its own.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from aiohttp import web
from aiohttp.abc import AbstractResolver

from relay import deliver
from relay.appkeys import RUNTIME_KEY, STORE_KEY
from relay.endpoints import build_endpoints
from relay.outbox import Outbox
from relay.ssrf import GuardedResolver, parse_allow_networks

log = logging.getLogger(__name__)

OUTBOX_KEY = web.AppKey("outbox", Outbox)
# Tests map hostnames to addresses with their own resolver; the guard still wraps it.
RESOLVER_KEY = web.AppKey("outbox_resolver", AbstractResolver)


async def outbox_ctx(app: web.Application) -> AsyncIterator[None]:
    """Refuse unusable endpoints (ConfigError), then run the worker until the app stops."""
    runtime, store = app[RUNTIME_KEY], app[STORE_KEY]
    config = runtime.config
    endpoints = build_endpoints(config)
    allow = parse_allow_networks(config.outbox.allow_networks)
    resolver = GuardedResolver(allow, app.get(RESOLVER_KEY))
    session = deliver.delivery_session(resolver, config.outbox.concurrency)
    try:
        await deliver.check_hostnames(resolver, endpoints, allow, config.source)
        outbox = Outbox(store, runtime, session, endpoints)
        app[OUTBOX_KEY] = outbox
        store.add_commit_listener(outbox.wake)
        await outbox.start()
        log.info("outbox started: %d endpoint(s), %d active", len(endpoints),
                 len(outbox.active_endpoints()))
        yield
        await outbox.stop()
    finally:
        await session.close()
