"""The application factory: resources in cleanup contexts, middlewares, the route table."""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import aiohttp
from aiohttp import web

from relay import __version__, console, ingest_wire, openapi, outbox, watchdog
from relay.appkeys import (
    ATTESTO_KEY,
    HTTP_KEY,
    INGEST_LINK_KEY,
    METRICS_KEY,
    RUNTIME_KEY,
    SCHEDULER_KEY,
    STORE_KEY,
)
from relay.attesto import AttestoClient
from relay.config import Config
from relay.ingest_link import IngestLink
from relay.metrics import Metrics
from relay.middlewares import error_middleware, request_id_middleware
from relay.ratelimit import TokenBucket
from relay.repoll import Outcome, Poller, attesto_fetcher
from relay.routes import admin, events, health, iap, metrics, repoll_admin, verify, webhooks
from relay.runtime import Runtime
from relay.scheduler import Scheduler
from relay.store import Store

log = logging.getLogger(__name__)


def create_app(config: Config, *, clock: Callable[[], float] = time.time,
               store_pragmas: Mapping[str, Any] | None = None,
               environ: Mapping[str, str] | None = None) -> web.Application:
    """Build the app; no I/O here, it all happens in the cleanup contexts."""
    app = web.Application(
        middlewares=[request_id_middleware, error_middleware],
        client_max_size=config.server.max_body_bytes,
        handler_args={"max_field_size": 16384},
    )
    app[RUNTIME_KEY] = Runtime(config, clock)
    # Worker processes share the store; their supervisor migrated it before starting them.
    app[STORE_KEY] = Store(config.store, environ, store_pragmas,
                           shared=config.server.supervised)
    app[METRICS_KEY] = Metrics()
    app.cleanup_ctx.append(_store_ctx)
    ingest_socket = (os.environ if environ is None else environ).get(ingest_wire.SOCKET_ENV)
    if ingest_socket:  # a worker of `[server] ingest_writer`: that process stores webhooks
        app.cleanup_ctx.append(functools.partial(_ingest_ctx, path=ingest_socket))
    app.cleanup_ctx.append(_http_ctx)
    app.cleanup_ctx.append(_attesto_ctx)
    app.cleanup_ctx.append(outbox.outbox_ctx)
    app.cleanup_ctx.append(_scheduler_ctx)
    app.cleanup_ctx.append(watchdog.watchdog_ctx)
    app.router.add_routes(health.routes())
    app.router.add_routes(verify.routes())
    app.router.add_routes(iap.routes())
    webhooks.install(app, config.webhooks.path)
    app.router.add_routes(admin.routes())
    app.router.add_routes(events.routes())
    app.router.add_routes(repoll_admin.routes())
    app.router.add_routes(metrics.routes())
    app.router.add_routes(openapi.routes())
    console.install(app, config)
    for feature in config.disabled_features():
        log.warning("disabled: %s", feature)
    return app


async def _store_ctx(app: web.Application) -> AsyncIterator[None]:
    store = app[STORE_KEY]
    config = app[RUNTIME_KEY].config
    version = await store.open(migrate=config.store.auto_migrate
                               and not config.server.supervised)
    log.info("store open: %s (schema %d)", store.description, version)
    yield
    await store.close()
    log.info("store closed")


async def _ingest_ctx(app: web.Application, *, path: str) -> AsyncIterator[None]:
    """The link to the ingest writer; what it commits wakes the outbox as our commits do."""
    link = IngestLink(path, app[STORE_KEY].committed_elsewhere)
    app[INGEST_LINK_KEY] = link
    yield
    await link.close()


async def _http_ctx(app: web.Application) -> AsyncIterator[None]:
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


async def _attesto_ctx(app: web.Application) -> AsyncIterator[None]:
    """The Attesto client on the shared session (its breaker and cap live as long as the app)."""
    cfg = app[RUNTIME_KEY].config
    app[ATTESTO_KEY] = AttestoClient(app[HTTP_KEY], cfg.attesto, cfg.credentials.attesto_api_key,
                                     metrics=app[METRICS_KEY])
    yield


async def _scheduler_ctx(app: web.Application) -> AsyncIterator[None]:
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
