"""The outbox's lanes: `per_endpoint_concurrency` tasks per endpoint, each sending that
endpoint's ready rows one at a time (`deliver.attempt`) and restarting itself if it crashes."""

from __future__ import annotations

import asyncio
import logging

from relay.core.retry_policy import Verdict
from relay.outbox import deliver
from relay.outbox.queue import Claimed, Outcome
from relay.outbox.state import ERROR_BACKOFF_S, WorkerState

log = logging.getLogger("relay.outbox")


class Lanes(WorkerState):
    """Starts and runs the lanes; counts each attempt in the metrics."""

    def _start_lanes(self, name: str) -> None:
        self._lanes += [(name, asyncio.create_task(self._lane(name),
                                                   name=f"relay-outbox-{name}-{i}"))
                        for i in range(self._per_endpoint)]

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
