"""The application factory: the app's state, its cleanup contexts in order, middlewares, routes."""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import web

from relay.config import Config
from relay.intake import wire as ingest_wire
from relay.metrics import Metrics
from relay.runtime import Runtime
from relay.store.database import Store
from relay.web import console, contexts, openapi, watchdog
from relay.web.appkeys import (
    LIMITS_KEY,
    METRICS_KEY,
    RUNTIME_KEY,
    STORE_KEY,
)
from relay.web.limits import InboundLimits
from relay.web.middlewares import request_middleware
from relay.web.routes import (
    admin,
    events,
    health,
    history,
    iap,
    metrics,
    repoll_admin,
    verify,
    webhooks,
)

log = logging.getLogger("relay.app")


def create_app(config: Config, *, clock: Callable[[], float] = time.time,
               store_pragmas: Mapping[str, Any] | None = None,
               environ: Mapping[str, str] | None = None) -> web.Application:
    """Build the app; no I/O here, it all happens in the cleanup contexts."""
    app = web.Application(
        middlewares=[request_middleware],
        client_max_size=config.server.max_body_bytes,
        handler_args={"max_field_size": 16384},
    )
    app[RUNTIME_KEY] = Runtime(config, clock)
    # Worker processes share the store; their supervisor migrated it before starting them.
    app[STORE_KEY] = Store(config.store, environ, store_pragmas,
                           shared=config.server.supervised)
    app[METRICS_KEY] = Metrics()
    app[LIMITS_KEY] = InboundLimits(config.limits)
    app.cleanup_ctx.append(contexts.store_ctx)
    ingest_socket = (os.environ if environ is None else environ).get(ingest_wire.SOCKET_ENV)
    if ingest_socket:  # a worker of `[server] ingest_writer`: that process stores webhooks
        app.cleanup_ctx.append(functools.partial(contexts.ingest_ctx, path=ingest_socket))
    app.cleanup_ctx.append(contexts.http_ctx)
    app.cleanup_ctx.append(contexts.attesto_ctx)
    app.cleanup_ctx.append(contexts.outbox_ctx)
    app.cleanup_ctx.append(contexts.scheduler_ctx)
    app.cleanup_ctx.append(watchdog.watchdog_ctx)
    app.router.add_routes(health.routes())
    app.router.add_routes(verify.routes())
    app.router.add_routes(iap.routes())
    webhooks.install(app, config.webhooks.path)
    app.router.add_routes(admin.routes())
    app.router.add_routes(events.routes())
    app.router.add_routes(history.routes())
    app.router.add_routes(repoll_admin.routes())
    app.router.add_routes(metrics.routes())
    app.router.add_routes(openapi.routes())
    console.install(app, config)
    for feature in config.disabled_features():
        log.warning("disabled: %s", feature)
    return app
