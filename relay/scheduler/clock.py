"""The clock: APScheduler 3.x ticks that feed re-polls and housekeeping. Durable state is in the DB.

Each tick takes a database lease first, so with several instances one runs it.
The re-poll tick only claims as many rows as there is room for and hands them to
tasks this module owns; a slow Attesto call never holds up the next tick. On exit
the scheduler stops, then the tasks are cancelled and awaited (APScheduler cannot
wait for coroutine jobs itself).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from relay.runtime import Runtime
from relay.scheduler.repoll import Poller
from relay.store.database import Store
from relay.store.housekeeping import prune
from relay.store.leases import take_lease

log = logging.getLogger("relay.scheduler")

HOUSEKEEPING_S = 3600.0


class Scheduler:
    """Owns the AsyncIOScheduler, the lease identity and the in-flight poll tasks."""

    def __init__(self, store: Store, runtime: Runtime, poller: Poller | None) -> None:
        self.store = store
        self.runtime = runtime
        self.poller = poller
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self.ticks = 0
        self._scheduler: AsyncIOScheduler | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    def in_flight(self, now_ms: int) -> frozenset[int]:
        """Rows claimed in memory whose poll is in flight (not due): for `due_stats`."""
        return self.poller.claims.held_rowids(now_ms) if self.poller else frozenset()

    @property
    def running(self) -> bool:
        return self._scheduler is not None and bool(self._scheduler.running)

    def start(self) -> None:
        cfg = self.runtime.config.scheduler
        sched = AsyncIOScheduler(job_defaults={"coalesce": True, "max_instances": 1,
                                               "misfire_grace_time": 30})
        sched.add_job(self._guard(self.repoll_tick), "interval", seconds=cfg.tick_s,
                      id="repoll", replace_existing=True)
        sched.add_job(self._guard(self.housekeeping_tick), "interval",
                      seconds=HOUSEKEEPING_S, id="housekeeping", replace_existing=True,
                      jitter=60)
        sched.start()
        self._scheduler = sched
        log.info("scheduler started (tick %.1fs, %s)", cfg.tick_s,
                 "re-polls on" if self.poller else "re-polls off: no Attesto key")

    def _guard(self, job: Callable[[], Awaitable[Any]]) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            task = asyncio.current_task()
            if task is not None:
                self._tasks.add(task)
            try:
                await job()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("scheduled job %s failed", getattr(job, "__name__", job))
            finally:
                if task is not None:
                    self._tasks.discard(task)

        run.__name__ = getattr(job, "__name__", "job")
        return run

    async def _lease(self, name: str, ttl_s: float) -> bool:
        now_ms = self.runtime.now_ms()
        owner = self.owner
        return await self.store.write(lambda: take_lease(name, owner, int(ttl_s * 1000),
                                                         now_ms))

    async def repoll_tick(self) -> int:
        """Claim as many due rows as there is room for and start polling them."""
        self.ticks += 1
        poller = self.poller
        if poller is None:
            return 0
        cfg = self.runtime.config.scheduler
        room = min(cfg.batch_size, cfg.max_concurrent_polls * 4 - len(self._tasks) + 1)
        if room <= 0 or not await self._lease("repoll", max(cfg.tick_s * 2, 10.0)):
            return 0
        now_ms = self.runtime.now_ms()
        views = await poller.claim(now_ms, room)
        for view in views:
            task = asyncio.create_task(poller.poll_one(view), name=f"repoll:{view.platform}")
            self._tasks.add(task)
            task.add_done_callback(self._finished)
        return len(views)

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("re-poll task failed: %r", task.exception())

    async def housekeeping_tick(self) -> None:
        if not await self._lease("housekeeping", HOUSEKEEPING_S / 2):
            return
        cfg = self.runtime.config
        await prune(self.store, self.runtime.now_ms(), cfg.outbox.delivered_retention_s,
                    cfg.input_log.retention_s)

    async def stop(self, timeout_s: float = 10.0) -> None:
        sched, self._scheduler = self._scheduler, None
        if sched is not None:
            sched.shutdown(wait=False)
            await asyncio.sleep(0)  # shutdown is scheduled via call_soon_threadsafe
        tasks = [t for t in self._tasks if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        if tasks:
            log.info("waiting for %d in-flight job(s)", len(tasks))
            await asyncio.wait(tasks, timeout=timeout_s)
        log.info("scheduler stopped")
