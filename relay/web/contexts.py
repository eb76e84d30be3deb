"""The app's resources and their lifetimes: each one a cleanup context, opened in order at
start-up and closed in reverse at shutdown (store, ingest link, HTTP session, Attesto client,
outbox, scheduler). `relay.web.app` lists them; nothing here runs before the app starts.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from relay import __version__
from relay.attesto.client import AttestoClient
from relay.core.addresses import parse_allow_networks
from relay.intake.link import IngestLink
from relay.outbox import deliver
from relay.outbox.endpoints import build_endpoints
from relay.outbox.ssrf import GuardedResolver
from relay.outbox.worker import Outbox
from relay.scheduler.clock import Scheduler
from relay.scheduler.ratelimit import TokenBucket
from relay.scheduler.repoll import Outcome, Poller, attesto_fetcher
from relay.web.appkeys import (
    ATTESTO_KEY,
    HTTP_KEY,
    INGEST_LINK_KEY,
    METRICS_KEY,
    OUTBOX_KEY,
    RESOLVER_KEY,
    RUNTIME_KEY,
    SCHEDULER_KEY,
    STORE_KEY,
)

log = logging.getLogger("relay.app")
outbox_log = logging.getLogger("relay.outbox")


async def store_ctx(app: web.Application) -> AsyncIterator[None]:
    store = app[STORE_KEY]
    config = app[RUNTIME_KEY].config
    version = await store.open(migrate=config.store.auto_migrate
                               and not config.server.supervised)
    log.info("store open: %s (schema %d)", store.description, version)
    yield
    await store.close()
    log.info("store closed")


async def ingest_ctx(app: web.Application, *, path: str) -> AsyncIterator[None]:
    """The link to the ingest writer; what it commits wakes the outbox as our commits do."""
    link = IngestLink(path, app[STORE_KEY].committed_elsewhere)
    app[INGEST_LINK_KEY] = link
    yield
    await link.close()


async def http_ctx(app: web.Application) -> AsyncIterator[None]:
    """One client session for all outbound calls, with explicit timeouts, no redirects."""
    cfg = app[RUNTIME_KEY].config
    session = aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=cfg.attesto.timeout_s,
                                      sock_connect=cfg.attesto.connect_timeout_s),
        headers={"User-Agent": f"relay/{__version__}"},
        connector=aiohttp.TCPConnector(limit=256, ttl_dns_cache=60),
        raise_for_status=False,
    )
    app[HTTP_KEY] = session
    yield
    await session.close()


async def attesto_ctx(app: web.Application) -> AsyncIterator[None]:
    """The Attesto client on the shared session (its breaker and cap live as long as the app)."""
    cfg = app[RUNTIME_KEY].config
    app[ATTESTO_KEY] = AttestoClient(app[HTTP_KEY], cfg.attesto, cfg.credentials.attesto_api_key,
                                     metrics=app[METRICS_KEY])
    yield


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
        outbox = Outbox(store, runtime, session, endpoints, metrics=app[METRICS_KEY])
        app[OUTBOX_KEY] = outbox
        store.add_commit_listener(outbox.on_commit)
        await outbox.start()
        outbox_log.info("outbox started: %d endpoint(s), %d active", len(endpoints),
                        len(outbox.active_endpoints()))
        yield
        await outbox.stop()
    finally:
        await session.close()


async def scheduler_ctx(app: web.Application) -> AsyncIterator[None]:
    """Re-polls and housekeeping; re-polls need the Attesto key, the scheduler needs enabling."""
    runtime, store, metrics = app[RUNTIME_KEY], app[STORE_KEY], app[METRICS_KEY]
    cfg = runtime.config
    poller = None
    if cfg.credentials.attesto_api_key is not None:
        def count(view: object, outcome: Outcome) -> None:
            metrics.repolls.labels(str(outcome)).inc()
            if outcome is Outcome.EXPIRED_NO_RENEWAL:
                metrics.renewal_not_seen.inc()

        rate = cfg.scheduler.max_polls_per_s
        poller = Poller(store, runtime, attesto_fetcher(app[ATTESTO_KEY], runtime),
                        TokenBucket(rate, max(1.0, rate)), on_outcome=count)
    scheduler = Scheduler(store, runtime, poller)
    app[SCHEDULER_KEY] = scheduler
    if cfg.scheduler.enabled:
        scheduler.start()
    yield
    await scheduler.stop()
