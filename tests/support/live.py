"""relay (and a simulated Attesto) served from a background thread, for blocking clients.

Hypothesis and schemathesis drive it with real requests; the app is the real one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import types
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from aiohttp import web

from relay.attesto.simulator import AttestoSimulator
from relay.config import DownstreamConfig
from relay.web.app import create_app
from relay.web.appkeys import STORE_KEY
from tests.conftest import make_config
from tests.support.webhooks import ENTITLEMENTS

T = TypeVar("T")


class LiveRelay:
    """relay served from a thread's own event loop; `url` is its base."""

    def __init__(self, state: Path) -> None:
        # A held endpoint: events get outbox rows, but no worker wakes (and draws from
        # `random`) while hypothesis generates the next example.
        held = DownstreamConfig(name="billing", url="http://127.0.0.1:9/hook", enabled=False)
        self.state = state
        self.sim = AttestoSimulator()
        self.config = make_config(state, downstream=(held,), server={"max_body_bytes": 65_536},
                                  entitlements=types.MappingProxyType(ENTITLEMENTS))
        self.ready = threading.Event()
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        attesto = web.AppRunner(self.sim.app())  # Attesto, on the same loop
        self.loop.run_until_complete(attesto.setup())
        self.loop.run_until_complete(web.TCPSite(attesto, "127.0.0.1", 0).start())
        attesto_url = f"http://127.0.0.1:{attesto.addresses[0][1]}"
        self.config = dataclasses.replace(self.config, attesto=dataclasses.replace(
            self.config.attesto, base_url=attesto_url))
        self.app = create_app(self.config)
        runner = web.AppRunner(self.app)
        self.loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        self.port = runner.addresses[0][1]
        self.ready.set()
        self.loop.run_forever()
        self.loop.run_until_complete(runner.cleanup())
        self.loop.run_until_complete(attesto.cleanup())

    def __enter__(self) -> LiveRelay:
        self.thread.start()
        assert self.ready.wait(30)
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def read(self, fn: Callable[[], T]) -> T:
        """Run `fn` on relay's store thread (as relay reads) from the test's thread."""
        future = asyncio.run_coroutine_threadsafe(self.app[STORE_KEY].read(fn), self.loop)
        return future.result(30)
