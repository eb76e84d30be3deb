"""Pausing and resuming endpoints: held rows, `endpoint_state` shared by every process on
the database, and following the pauses, 410s and resumes another process made."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping

from relay.outbox import queue as outbox_db
from relay.outbox.state import WorkerState

log = logging.getLogger("relay.outbox")


class Pauses(WorkerState):
    """Holds an endpoint's rows until it is resumed; adopts other processes' changes."""

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
