"""Helpers for the outbox tests: emit events through the pipeline, read delivery rows."""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from relay.core.domain import EventView, Snapshot, State
from relay.outbox.worker import Outbox
from relay.store import pipeline
from relay.store.models import Attempt, Delivery
from relay.web.appkeys import OUTBOX_KEY, RUNTIME_KEY, STORE_KEY
from tests.conftest import Clock

_counter = itertools.count(1)
App = TestClient[web.Request, web.Application]


def now_clock() -> Clock:
    """A controllable clock that starts at the real time, so signatures verify."""
    return Clock(float(int(time.time())))


def outbox_of(client: App) -> Outbox:
    return client.app[OUTBOX_KEY]


async def emit(client: App, subject: str = "1000001", *, platform: str = "apple",
               event_type: str = "subscription.renewed", environment: str = "production",
               count: int = 1) -> list[EventView]:
    """Apply `count` webhook snapshots for one subject; return the events stored."""
    runtime, store = client.app[RUNTIME_KEY], client.app[STORE_KEY]
    out: list[EventView] = []
    for _ in range(count):
        now = runtime.now_ms()
        snap = Snapshot(
            platform=platform, subject_key=subject, source="webhook", observed_ms=now,
            received_ms=now, kind="subscription", product_id="premium.monthly",
            state=State.ACTIVE, expires_ms=now + 30 * 86_400_000, environment=environment,
            event_type=event_type, attesto_event_id=f"evt_{next(_counter):08d}")
        applied = await store.write(lambda s=snap, n=now: pipeline.apply(s, runtime.rules, n))
        out.extend(applied.events)
    return out


async def deliveries(client: App, **where: Any) -> list[dict[str, Any]]:
    """Delivery rows (as dicts, in id order), optionally filtered by column values."""
    def read() -> list[dict[str, Any]]:
        q = Delivery.select().order_by(Delivery.id)
        for key, value in where.items():
            q = q.where(getattr(Delivery, key) == value)
        return list(q.dicts())

    return await client.app[STORE_KEY].read(read)


async def attempts(client: App, delivery_id: int) -> list[dict[str, Any]]:
    return await client.app[STORE_KEY].read(lambda: list(
        Attempt.select().where(Attempt.delivery == delivery_id).order_by(Attempt.id).dicts()))


class Hanging:
    """A downstream whose handler blocks until released; `entered` fires per request."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.count = 0
        self._arrived = asyncio.Condition()

    async def wait_count(self, n: int) -> None:
        async with asyncio.timeout(5), self._arrived:
            await self._arrived.wait_for(lambda: self.count >= n)

    def app(self) -> web.Application:
        async def handle(request: web.Request) -> web.Response:
            await request.read()
            self.count += 1
            self.entered.set()
            async with self._arrived:
                self._arrived.notify_all()
            await self.release.wait()
            return web.Response(text="ok")

        app = web.Application()
        app.router.add_post("/hook", handle)
        return app


async def serve(aiohttp_server: Any, app: web.Application) -> str:
    server: TestServer = await aiohttp_server(app, host="127.0.0.1")
    return str(server.make_url("/hook"))
