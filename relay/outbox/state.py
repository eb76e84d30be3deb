"""The outbox worker's state, shared by its parts (`relay.outbox.worker` runs the cycles,
`lanes` sends, `pauses` holds and releases endpoints): the ready queues, what is in flight,
what waits to be recorded or given back, and the few questions every part asks of it."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp

from relay.core.retry_policy import Verdict
from relay.metrics import Metrics
from relay.outbox.endpoints import Endpoint
from relay.outbox.queue import Claimed, Outcome
from relay.runtime import Runtime
from relay.store.database import Store

log = logging.getLogger("relay.outbox")

ERROR_BACKOFF_S = 1.0  # wait after a failed cycle (store unavailable) before the next
RECORD_WITHIN_S = 0.05  # a finished attempt is recorded at most this long after
MAX_DEPTH = 8  # an endpoint holds at most this many times its concurrency (in flight + ready)


class WorkerState:
    """The outbox worker's fields and the questions its parts share."""

    def __init__(self, store: Store, runtime: Runtime, session: aiohttp.ClientSession,
                 endpoints: Mapping[str, Endpoint], *,
                 rand: Callable[[], float] = random.random,
                 metrics: Metrics | None = None) -> None:
        self._store = store
        self._metrics = metrics
        self._series: dict[tuple[str, Verdict], tuple[Any, Any]] = {}  # metric children
        self._runtime = runtime
        self._session = session
        self.endpoints = dict(endpoints)
        self._rand = rand
        cfg = runtime.config.outbox
        self._concurrency = cfg.concurrency
        self._per_endpoint = cfg.per_endpoint_concurrency
        self._claim_timeout_s = cfg.claim_timeout_s
        self._sweep_s = cfg.sweep_s
        self._stop_grace_s = cfg.stop_grace_s
        self._stopping = False  # lanes start nothing new, cycles claim nothing
        self._wake = asyncio.Event()
        self._wake_soon = False  # wake() scheduled the event's set for the next turn
        self._urgent = True  # the next wake must run a cycle (new rows, a poke, a timer)
        self._hungry: set[str] = set()  # active endpoints whose last claim got all it asked
        self._idle = asyncio.Event()
        self._idle.set()
        self._cycle_cond = asyncio.Condition()
        self._cycles_started = 0
        self._cycles_done = 0
        self._last_claimed = 0
        self._next_due_ms: int | None = None
        # Claimed rows waiting for a lane; the deques live as long as the worker.
        self._ready = {name: collections.deque[Claimed]() for name in self.endpoints}
        self._has_ready = {name: asyncio.Event() for name in self.endpoints}
        self._slots = self._overall_bound()
        self._depth: dict[str, int] = {}  # rows an endpoint may hold, adapted every cycle
        self._inflight: dict[int, Claimed] = {}
        self._per_ep: collections.Counter[str] = collections.Counter()
        self._lanes: list[tuple[str, asyncio.Task[None]]] = []  # (endpoint, lane)
        self._done: list[Outcome] = []
        self._to_release: list[Claimed] = []  # dropped from the ready queue (pause, 410)
        # Following the pauses made by other processes (endpoint_state):
        self._sweep_due = False  # the next cycle reads endpoint_state even with no work
        self._synced = 0.0  # loop time of the last cycle that read it
        self._pausing = 0  # local pause()/resume() calls in progress
        self._pause_epoch = 0  # bumped when one starts or ends: a cycle's read may be older
        self._unhold: set[str] = set()  # resumed elsewhere: release their held rows
        self.task: asyncio.Task[None] | None = None
        self.beat = 0.0  # loop time the worker last came round (idle or between cycles)

    def wake(self) -> None:
        """Look for work on the loop's next turn (a commit listener: new rows may be due).

        Not at once: the store calls its listeners before it settles the callers of the
        same commit, so a worker woken at once would run its cycle before they resume
        (verify and webhook answers would wait for it)."""
        self._urgent = True
        if self._wake.is_set() or self._wake_soon:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop running: nothing can be waiting for an answer
            self._wake.set()
            return
        self._wake_soon = True
        loop.call_soon(self._wake_now)

    def on_commit(self) -> None:
        """The store's commit listener: `wake()`, unless the cycle would have nothing to do
        (no active endpoint to claim for, nothing to record, give back or release, no sweep
        due): a commit of webhooks or verifies then costs the worker nothing."""
        if (self._done or self._to_release or self._unhold or self._sweep_due
                or self.active_endpoints()):
            self.wake()
        elif not self._stopping and self.task is not None:
            try:
                now = asyncio.get_running_loop().time()
            except RuntimeError:
                return
            if now - self._synced >= self._sweep_s:  # an overdue sweep: as before
                self.wake()

    def _wake_now(self) -> None:
        self._wake_soon = False
        self._wake.set()

    def active_endpoints(self) -> list[str]:
        paused = self._runtime.paused
        return [name for name, ep in self.endpoints.items()
                if ep.enabled and ep.can_sign and name not in paused]

    def in_flight(self, endpoint: str | None = None) -> int:
        return len(self._inflight) if endpoint is None else self._per_ep[endpoint]

    def _drop_ready(self, name: str) -> list[Claimed]:
        queue = self._ready.get(name)
        if queue is None:  # not configured here
            return []
        dropped = list(queue)
        queue.clear()
        return dropped

    def _worth_a_cycle(self, endpoint: str | None = None) -> bool:
        """Batch the store round trips: a finished attempt alone does not call for one.

        A cycle runs when asked to (new rows, a poke, a timer: finished attempts wait
        at most RECORD_WITHIN_S), when nothing is in flight, or when an endpoint that
        may have more due rows has used half of its ready ones (so the refill arrives
        before its lanes run dry). A lane asks about its own endpoint only.
        """
        if self._urgent or self._to_release or not self._inflight:
            return True
        if endpoint is not None:  # a lane, after every attempt: no generator
            return endpoint in self._hungry and len(self._ready[endpoint]) < max(
                self._per_endpoint, self._depth[endpoint] // 2)
        return any(len(self._ready[name]) < max(self._per_endpoint, self._depth[name] // 2)
                   for name in self._hungry)

    def _overall_bound(self) -> asyncio.Semaphore | contextlib.nullcontext[None]:
        """The overall bound; not needed (and not paid for) while the lanes cannot exceed it."""
        if self._per_endpoint * len(self.endpoints) > self._concurrency:
            return asyncio.Semaphore(self._concurrency)
        return contextlib.nullcontext()
