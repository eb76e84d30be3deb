"""The outbox worker: claim due deliveries, hand them to `deliver.attempt`, record outcomes.

One transaction per cycle records every finished attempt and claims more; claimed rows
wait in a per-endpoint ready queue so a freed slot is refilled without a round trip to
the store. The worker task and the delivery session live in `relay.web.contexts`.

Pauses live in `endpoint_state`, shared by every process on the database: each cycle
reads it in its transaction (and skips those endpoints), and every sweep does even when
there is nothing else to do, so a pause, a 410 or a resume made by another process
applies here within a cycle or a sweep (`_follow`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import aiohttp

from relay.config import Config
from relay.core.retry_policy import Verdict
from relay.metrics import Metrics
from relay.outbox import deliver
from relay.outbox import queue as outbox_db
from relay.outbox.endpoints import Endpoint, build_endpoints
from relay.outbox.queue import Claimed, CycleResult, Outcome
from relay.runtime import Runtime
from relay.store.database import Store

log = logging.getLogger("relay.outbox")

ERROR_BACKOFF_S = 1.0  # wait after a failed cycle (store unavailable) before the next
RECORD_WITHIN_S = 0.05  # a finished attempt is recorded at most this long after
MAX_DEPTH = 8  # an endpoint holds at most this many times its concurrency (in flight + ready)


class Outbox:
    """Delivers outbox rows; `wake()` (a commit listener) makes it look for work at once."""

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

    # ---- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        """Restore paused endpoints, release held rows of active ones, start the task."""
        paused = await self._store.read(outbox_db.paused_endpoints)
        self._runtime.set_paused(frozenset(paused))
        for name, state in paused.items():
            log.warning("endpoint %s is %s since %d: its events are held until "
                        "`relay resume %s`", name, state.reason, state.since_ms, name)
        self._synced = asyncio.get_running_loop().time()
        active = self.active_endpoints()
        released = await self._store.write(
            lambda: outbox_db.release_held(active, self._runtime.now_ms()))
        if released:
            log.info("released %d held deliveries of active endpoints", released)
        if self._store.owns_database:  # one process owns the file: its claims died with it
            orphaned = await self._store.write(
                lambda: outbox_db.release_orphaned_claims(self._runtime.now_ms()))
            if orphaned:
                log.warning("released %d deliveries claimed by a process that did not stop "
                            "cleanly; they are sent again now", orphaned)
        self.task = asyncio.create_task(self._run(), name="relay-outbox")

    async def stop(self) -> None:
        """Let attempts in flight finish (up to stop_grace_s), then cancel the rest.

        What finished is recorded; every other claim is given back for the next start.
        """
        self._stopping = True
        if self.task is not None and not self.task.done() and self._inflight:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._stop_grace_s):
                    await self._idle.wait()
        claims = self._claims()  # before cancelling: cancelled attempts leave _inflight
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
            self.task = None
        done, self._done = self._done, []
        recorded = {o.delivery_id for o in done}
        unfinished = [c for c in claims if c.id not in recorded]
        for queue in self._ready.values():
            queue.clear()
        self._to_release = []
        now_ms = self._runtime.now_ms()

        def final() -> int:
            outbox_db.record(done, now_ms)
            return outbox_db.release(unfinished, now_ms)

        try:
            released = await self._store.write(final, notify=False)
        except Exception as exc:  # the leases expire on their own
            log.warning("could not release %d claimed deliveries at stop: %s",
                        len(unfinished), exc)
        else:
            if released:
                log.info("released %d claimed deliveries for the next start", released)

    def _claims(self) -> list[Claimed]:
        """Every claim this worker holds: in flight, ready, or waiting for release."""
        ready = [c for queue in self._ready.values() for c in queue]
        return list(self._inflight.values()) + ready + self._to_release

    def _overall_bound(self) -> asyncio.Semaphore | contextlib.nullcontext[None]:
        """The overall bound; not needed (and not paid for) while the lanes cannot exceed it."""
        if self._per_endpoint * len(self.endpoints) > self._concurrency:
            return asyncio.Semaphore(self._concurrency)
        return contextlib.nullcontext()

    def reconfigure(self, config: Config) -> list[str]:
        """Adopt a reloaded config: new secrets, URLs, timeouts and endpoints apply to the
        next attempt; attempts in flight finish as they started. ConfigError if unusable.

        Returns the endpoints that can send now and could not before (enabled, or given a
        secret): their held rows are for `release_held`."""
        before = set(self.active_endpoints())
        endpoints = build_endpoints(config)
        for name in endpoints.keys() - self.endpoints.keys():
            self._ready[name] = collections.deque()
            self._has_ready[name] = asyncio.Event()
            if self.task is not None:
                self._start_lanes(name)
        for name in self.endpoints.keys() - endpoints.keys():
            self._to_release.extend(self._drop_ready(name))
        self.endpoints = endpoints
        if isinstance(self._slots, contextlib.nullcontext):
            self._slots = self._overall_bound()  # more lanes now: the bound may be needed
        self.wake()
        return [name for name in self.active_endpoints() if name not in before]

    async def release_held(self, names: list[str]) -> int:
        """Send the held rows of `names` (endpoints that became usable) from now on."""
        now_ms = self._runtime.now_ms()
        released = await self._store.write(lambda: outbox_db.release_held(names, now_ms))
        if released:
            log.info("released %d held deliveries of %s", released, ", ".join(names))
        return released

    def wake(self) -> None:
        """Look for work at once (a commit listener: new rows may be due)."""
        self._urgent = True
        self._wake.set()

    async def poke(self) -> None:
        """Run one full cycle that starts after this call (record, claim, dispatch), and
        read which endpoints are paused, as a sweep does."""
        if self.task is None or self.task.done():
            raise RuntimeError("the outbox worker is not running")
        target = self._cycles_started + 1
        self._sweep_due = True
        self.wake()
        async with self._cycle_cond:
            await self._cycle_cond.wait_for(lambda: self._cycles_done >= target)

    async def settle(self) -> None:
        """Return once nothing is in flight, ready, unrecorded or due."""
        while True:
            await self.poke()
            if (not self._inflight and not self._done and self._last_claimed == 0
                    and not any(self._ready.values()) and not self._to_release
                    and self._cycles_started == self._cycles_done):
                return
            await self._idle.wait()

    # ---- state -------------------------------------------------------------------

    def active_endpoints(self) -> list[str]:
        paused = self._runtime.paused
        return [name for name, ep in self.endpoints.items()
                if ep.enabled and ep.can_sign and name not in paused]

    def healthy(self, stall_s: float) -> bool:
        """The worker runs, came round within `stall_s` (it does at least every sweep_s),
        and every lane is alive (a lane restarts itself after a crash, so a dead one is a
        lane something cancelled: its endpoint delivers with fewer lanes, or none)."""
        if self.task is None or self.task.done() or self.dead_lanes():
            return False
        return asyncio.get_running_loop().time() - self.beat <= stall_s

    def dead_lanes(self) -> list[str]:
        """The endpoints with a lane that ended while the worker runs (one name per lane)."""
        if self.task is None or self.task.done():
            return []
        return [name for name, lane in self._lanes if lane.done()]

    def in_flight(self, endpoint: str | None = None) -> int:
        return len(self._inflight) if endpoint is None else self._per_ep[endpoint]

    def _drop_ready(self, name: str) -> list[Claimed]:
        queue = self._ready.get(name)
        if queue is None:  # not configured here
            return []
        dropped = list(queue)
        queue.clear()
        return dropped

    @contextlib.contextmanager
    def _changing_pauses(self) -> Iterator[None]:
        """A local pause or resume: a cycle whose endpoint_state read may predate its
        commit must not undo it (`_follow` skips such a read)."""
        self._pausing += 1
        self._pause_epoch += 1
        try:
            yield
        finally:
            self._pausing -= 1
            self._pause_epoch += 1

    async def pause(self, name: str, reason: str = "paused", detail: str | None = None) -> int:
        """Hold `name`'s rows (now and for new events) until resume; survives restarts.

        Other processes on the database follow within a cycle or a sweep (`_follow`)."""
        with self._changing_pauses():
            self._runtime.set_paused(self._runtime.paused | {name})
            dropped = self._drop_ready(name)  # claimed but not started: give the leases back
            now_ms = self._runtime.now_ms()

            def work() -> int:
                held = outbox_db.hold_endpoint(name, reason, detail, now_ms)
                outbox_db.release(dropped, now_ms)
                return held

            held = await self._store.write(work)
        log.warning("endpoint %s %s: %d deliveries held", name, reason, held)
        return held

    async def resume(self, name: str) -> int:
        """Send `name`'s held rows again and route new events to it (here at once, in the
        other processes on the database within a cycle or a sweep)."""
        with self._changing_pauses():
            self._runtime.set_paused(self._runtime.paused - {name})
            self._unhold.discard(name)
            active = name in self.active_endpoints()
            releases, self._to_release = self._to_release, []  # from a 410 not given back
            now_ms = self._runtime.now_ms()

            def work() -> int:
                outbox_db.release(releases, now_ms)
                return outbox_db.resume_endpoint(name, now_ms, active)

            try:
                released = await self._store.write(work)
            except BaseException:
                self._to_release[:0] = releases
                raise
        log.info("endpoint %s resumed: %d held deliveries released", name, released)
        return released

    def _follow(self, paused: Mapping[str, str]) -> None:
        """Adopt endpoint_state as a cycle read it: pauses, 410s and resumes made by
        other processes (and by this one, already adopted: nothing to do)."""
        known, now = self._runtime.paused, frozenset(paused)
        if now == known:
            return
        for name in sorted(now - known):
            self._to_release.extend(self._drop_ready(name))  # given back in the next cycle
            what = "disabled (410 Gone)" if paused[name] == "gone" else "paused"
            log.warning("endpoint %s %s by another process: its events are held until "
                        "`relay resume %s`", name, what, name)
        for name in sorted(known - now):
            log.info("endpoint %s resumed by another process: sending its deliveries again",
                     name)
        self._runtime.set_paused(now)
        active = self.active_endpoints()
        self._unhold.update(name for name in known - now if name in active)
        self.wake()  # the next cycle gives back dropped claims and claims resumed endpoints

    # ---- the worker --------------------------------------------------------------

    def _start_lanes(self, name: str) -> None:
        self._lanes += [(name, asyncio.create_task(self._lane(name),
                                                   name=f"relay-outbox-{name}-{i}"))
                        for i in range(self._per_endpoint)]

    async def _run(self) -> None:
        self._lanes = []
        for name in self.endpoints:
            self._start_lanes(name)
        loop = asyncio.get_running_loop()
        try:
            while True:
                self.beat = loop.time()
                try:
                    async with asyncio.timeout(self._wait_s()):
                        await self._wake.wait()
                except TimeoutError:
                    self._urgent = True
                    self._sweep_due = True
                self._wake.clear()
                if not self._worth_a_cycle():
                    continue
                self._urgent = False
                try:
                    ok = await self._cycle()
                except Exception:  # a bug must not stop deliveries for good
                    log.exception("outbox cycle crashed")
                    ok = False
                if not ok:
                    await asyncio.sleep(ERROR_BACKOFF_S)  # store down: do not spin
        finally:
            for _, lane in self._lanes:
                lane.cancel()
            await asyncio.gather(*(lane for _, lane in self._lanes), return_exceptions=True)

    def _worth_a_cycle(self, endpoint: str | None = None) -> bool:
        """Batch the store round trips: a finished attempt alone does not call for one.

        A cycle runs when asked to (new rows, a poke, a timer: finished attempts wait
        at most RECORD_WITHIN_S), when nothing is in flight, or when an endpoint that
        may have more due rows has used half of its ready ones (so the refill arrives
        before its lanes run dry). A lane asks about its own endpoint only.
        """
        if self._urgent or self._to_release or not self._inflight:
            return True
        names = self._hungry if endpoint is None else (endpoint,)
        return any(name in self._hungry and len(self._ready[name])
                   < max(self._per_endpoint, self._depth[name] // 2) for name in names)

    def _wait_s(self) -> float:
        wait = RECORD_WITHIN_S if self._done else self._sweep_s
        if self._next_due_ms is None:
            return wait
        due_in = (self._next_due_ms - self._runtime.now_ms()) / 1000
        return min(wait, max(due_in, 0.0))

    def _wants(self, now_ms: int) -> tuple[dict[str, int], dict[str, int]]:
        """How many rows each active endpoint may claim now, and their lease ends.

        An endpoint that used half of its ready queue since the last cycle may hold
        twice as many rows (up to MAX_DEPTH times its concurrency): one store round
        trip then feeds more attempts. One whose queue barely moved, half as many.
        The lease covers the attempts queued ahead of a row, so a waiting row never
        loses its claim.
        """
        wants: dict[str, int] = {}
        leases: dict[str, int] = {}
        for name in ([] if self._stopping else self.active_endpoints()):
            ep = self.endpoints[name]
            ready = len(self._ready[name])
            depth = self._depth.get(name, self._per_endpoint)
            if ready < max(self._per_endpoint, depth // 2):  # used half since: it keeps up
                depth = min(depth * 2, MAX_DEPTH * self._per_endpoint)
            elif ready >= depth - self._per_endpoint:  # barely moved since: it is slow
                depth = max(depth // 2, self._per_endpoint)
            self._depth[name] = depth
            wants[name] = max(0, depth - ready - self._per_ep[name])
            rounds = -(-depth // self._per_endpoint)
            lease_s = max(self._claim_timeout_s, ep.timeout_s + 5) + rounds * (ep.timeout_s + 5)
            leases[name] = now_ms + int(lease_s * 1000)
        return wants, leases

    async def _cycle(self) -> bool:
        self._cycles_started += 1
        number = self._cycles_started
        outcomes, self._done = self._done, []
        releases, self._to_release = self._to_release, []
        unhold, self._unhold = sorted(self._unhold), set()
        now_ms = self._runtime.now_ms()
        wants, leases = self._wants(now_ms)
        skip_locked = not self._store.is_sqlite
        started = asyncio.get_running_loop().time()
        # Every cycle that goes to the store reads endpoint_state; one with nothing to do
        # goes only on a sweep (a process that believes its endpoints paused must still
        # learn of a resume).
        sweep = not self._stopping and (self._sweep_due
                                        or started - self._synced >= self._sweep_s)
        self._sweep_due = False
        epoch = self._pause_epoch
        synced = ok = True
        try:
            if outcomes or releases or wants or unhold or sweep:
                result = await self._store.write(
                    lambda: outbox_db.cycle(outcomes, wants, now_ms, leases, skip_locked,
                                            releases, unhold, sweep),
                    notify=False)
                self._synced = started
            else:  # no endpoint to feed and no sweep due: no store round trip
                result = CycleResult()
                synced = False
        except Exception as exc:
            ok = synced = False
            self._done[:0] = outcomes  # recorded next time; the leases keep the rows
            self._to_release[:0] = releases
            self._unhold.update(unhold)
            self._sweep_due = self._sweep_due or sweep
            result = CycleResult()
            log.error("outbox cycle failed (%d outcomes kept for the next): %s",
                      len(outcomes), exc)
        finally:
            self._cycles_done = number
            async with self._cycle_cond:
                self._cycle_cond.notify_all()
        if ok:
            got: dict[str, int] = collections.Counter(c.endpoint for c in result.claimed)
            self._hungry = {name for name, n in wants.items() if got[name] >= n}
        self._after(result)
        # A local pause or resume that began or ended meanwhile may be newer than this
        # read: the next cycle reads again.
        if synced and not self._pausing and self._pause_epoch == epoch:
            self._follow(result.paused)
        return ok

    def _after(self, result: CycleResult) -> None:
        for name in result.gone:
            self._runtime.set_paused(self._runtime.paused | {name})
            self._to_release.extend(self._drop_ready(name))
            self.wake()  # release their leases in the next cycle
            log.warning("endpoint %s answered 410 Gone: disabled, its events are held "
                        "until `relay resume %s`", name, name)
        for delivery_id in result.dead:
            log.warning("delivery %d is dead: retry schedule exhausted", delivery_id)
        if result.stale:
            log.info("%d attempt(s) finished after their claim was taken over", result.stale)
        self._next_due_ms = result.next_due_ms
        self._last_claimed = len(result.claimed)
        for claimed in result.claimed:
            self._ready[claimed.endpoint].append(claimed)
            self._has_ready[claimed.endpoint].set()

    async def _lane(self, name: str) -> None:
        """One of `name`'s per_endpoint_concurrency lanes, for as long as the worker runs:
        a lane that crashes (a bug) is logged and started again, so no answer from a
        downstream can leave an endpoint without lanes until a restart."""
        while True:
            try:
                await self._take_ready(name)
            except Exception:
                log.exception("outbox lane %s crashed; it starts again in %.0fs", name,
                              ERROR_BACKOFF_S)
                await asyncio.sleep(ERROR_BACKOFF_S)  # a bug that repeats must not spin

    async def _take_ready(self, name: str) -> None:
        """Take `name`'s ready rows, one at a time.

        A lane awaits the attempt itself (no task per attempt); the global bound is
        `_slots`. A cancelled attempt leaves its row claimed: stop() releases it, a
        process crash lets the lease run out. An attempt that raises (a bug) gives its
        row back for the next cycle, then lets the lane crash.
        """
        queue, has_ready = self._ready[name], self._has_ready[name]
        now_ms = self._runtime.now_ms
        while True:
            if not queue or self._stopping:
                has_ready.clear()
                await has_ready.wait()
                continue
            async with self._slots:
                if not queue:  # another lane of this endpoint took the last one
                    continue
                c = queue.popleft()
                if c.token <= now_ms():  # waited past its lease: claimable again, skip it
                    continue
                ep = self.endpoints.get(name)  # per attempt: a reload may change it
                if ep is None:  # removed by a reload: give the row back
                    self._to_release.append(c)
                    self.wake()
                    continue
                self._inflight[c.id] = c
                self._per_ep[name] += 1
                if self._idle.is_set():
                    self._idle.clear()
                try:
                    outcome = await deliver.attempt(self._session, ep, c, now_ms, self._rand)
                except Exception:
                    self._to_release.append(c)
                    self.wake()
                    raise
                finally:
                    del self._inflight[c.id]
                    self._per_ep[name] -= 1
                    if not self._inflight:
                        self._idle.set()
            self._done.append(outcome)
            self._count(c, outcome)
            if self._worth_a_cycle(name):  # checked here: a wake per attempt costs the loop
                self._wake.set()

    def _count(self, c: Claimed, outcome: Outcome) -> None:
        if self._metrics is None:
            return
        key = (c.endpoint, outcome.verdict)
        series = self._series.get(key)
        if series is None:  # labels() costs a lookup per call: keep each child
            series = self._series[key] = (
                self._metrics.delivery_attempts.labels(c.endpoint, str(outcome.verdict)),
                self._metrics.delivery_latency.labels(c.endpoint))
        series[0].inc()
        if outcome.verdict == Verdict.DELIVERED and c.created_ms:
            finished_ms = outcome.started_ms + outcome.duration_ms
            series[1].observe(max(0, finished_ms - c.created_ms) / 1000)
