"""The admin console: web pages for the people who run relay, served by relay itself.

Server-rendered HTML (Jinja2, autoescaped), inline SVG plots, one stylesheet; no script
and no asset from elsewhere, so it works with JavaScript off under a strict CSP. Mounted
as a sub-application at `[console] path`; it answers only while credential admin-token
is set. Sign-in, sessions and CSRF: `security`; pages and actions: `pages`; the purchase
lookup (history, transactions, explain): `lookup`; store reads: `queries`; plots:
`plots`; refused webhooks per minute: `sampler`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib.resources
from collections.abc import AsyncIterator

from aiohttp import web

from relay.config import Config
from relay.metrics import Metrics
from relay.runtime import Runtime
from relay.web.appkeys import METRICS_KEY, RUNTIME_KEY
from relay.web.console import render
from relay.web.console.pages import routes
from relay.web.console.plumbing import (
    CONSOLE_KEY,
    STATIC_TYPES,
    ConsoleState,
    console_middleware,
)
from relay.web.console.sampler import webhook_totals

SAMPLE_EVERY_S = 60.0


def install(app: web.Application, config: Config) -> None:
    """Mount the console at `[console] path` (unless `[console] enabled = false`)."""
    c = config.console
    if not c.enabled:
        return
    console = web.Application(middlewares=[console_middleware])
    console[CONSOLE_KEY] = ConsoleState(base=c.path, env=render.environment())
    console.cleanup_ctx.append(functools.partial(_console_ctx, runtime=app[RUNTIME_KEY],
                                                 metrics=app[METRICS_KEY]))
    console.router.add_routes(routes())

    async def to_console(request: web.Request) -> web.Response:
        return web.Response(status=308, headers={"Location": c.path + "/"})

    app.router.add_get(c.path, to_console)  # before the sub-app, which would take it
    app.add_subapp(c.path, console)


def _read_assets(state: ConsoleState) -> None:
    render.load_templates(state.env)
    folder = importlib.resources.files("relay.web.console") / "static"
    for name in STATIC_TYPES:
        state.static[name] = (folder / name).read_bytes()


async def _console_ctx(console: web.Application, *, runtime: Runtime,
                       metrics: Metrics) -> AsyncIterator[None]:
    """Load templates and assets (off the loop), then sample the webhook counters each
    minute for as long as the app runs."""
    state = console[CONSOLE_KEY]
    await asyncio.to_thread(_read_assets, state)
    state.started_ms = runtime.now_ms()

    async def sample() -> None:
        while True:
            state.sampler.sample(runtime.now_ms(), await webhook_totals(metrics))
            await asyncio.sleep(SAMPLE_EVERY_S - runtime.clock() % SAMPLE_EVERY_S + 0.01)

    task = asyncio.create_task(sample(), name="relay-console-sampler")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
