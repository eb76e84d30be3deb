"""systemd watchdog: `WATCHDOG=1` only while the loop, the store thread and the outbox are healthy.

With `WatchdogSec=` in the unit, systemd kills and restarts relay when the pings stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from relay import systemd
from relay.web.appkeys import OUTBOX_KEY, RUNTIME_KEY, STORE_KEY

log = logging.getLogger("relay.watchdog")

STALL_FLOOR_S = 30.0  # the outbox may spend this long in one cycle before it counts as stuck


class Watchdog:
    """Checks health every `interval_s`; pings systemd only when every check passes."""

    def __init__(self, app: web.Application, interval_s: float,
                 stall_s: float | None = None) -> None:
        self.app = app
        self.interval_s = interval_s
        sweep_s = app[RUNTIME_KEY].config.outbox.sweep_s
        self.stall_s = stall_s if stall_s is not None else max(STALL_FLOOR_S, 3 * sweep_s)
        self.problems: list[str] = []

    async def check(self) -> list[str]:
        """What is wrong now (empty: healthy). The loop is healthy if this runs at all."""
        problems = []
        try:
            async with asyncio.timeout(self.interval_s):
                ok = await self.app[STORE_KEY].ping()
        except TimeoutError:
            ok = False
        if not ok:
            problems.append("store thread does not answer")
        outbox = self.app.get(OUTBOX_KEY)
        if outbox is not None and not outbox.healthy(self.stall_s):
            dead = outbox.dead_lanes()
            problems.extend(f"outbox lane {name} is dead" for name in sorted(set(dead)))
            if not dead:
                problems.append("outbox worker stalled")
        return problems

    async def run(self) -> None:
        while True:
            problems = await self.check()
            if problems:
                if problems != self.problems:
                    log.error("watchdog: unhealthy (%s); not pinging systemd",
                              "; ".join(problems))
                systemd.notify("STATUS=unhealthy: " + "; ".join(problems))
            else:
                if self.problems:
                    log.warning("watchdog: healthy again")
                    systemd.notify("STATUS=serving")
                systemd.notify("WATCHDOG=1")
            self.problems = problems
            await asyncio.sleep(self.interval_s)


async def watchdog_ctx(app: web.Application, **kw: Any) -> AsyncIterator[None]:
    """Run the watchdog while the app runs, when systemd asked for one (WATCHDOG_USEC)."""
    interval = systemd.watchdog_interval_s()
    task = None
    if interval is not None:
        task = asyncio.create_task(Watchdog(app, interval, **kw).run(), name="relay-watchdog")
        log.info("watchdog: pinging systemd every %.1fs while healthy", interval)
    yield
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
