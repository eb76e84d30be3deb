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

from relay.config import Config
from relay.outbox import queue as outbox_db
from relay.outbox.endpoints import build_endpoints
from relay.outbox.lanes import Lanes
from relay.outbox.pauses import Pauses
from relay.outbox.queue import Claimed, CycleResult
from relay.outbox.state import ERROR_BACKOFF_S, MAX_DEPTH, RECORD_WITHIN_S

log = logging.getLogger("relay.outbox")


class Outbox(Lanes, Pauses):
    """Delivers outbox rows; `wake()` (a commit listener) makes it look for work at once.

    Its state is `WorkerState`'s; its lanes (`Lanes`) send, its cycles (here) record and
    claim, and `Pauses` holds and releases endpoints."""

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

    # ---- the worker --------------------------------------------------------------

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



