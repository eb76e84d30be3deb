"""Webhooks refused per minute, for the console: what the store does not keep.

Accepted webhooks are rows of the inbox (counted from the store, across restarts).
Refused ones leave no row, only the `relay_webhooks_total` counters; this keeps a
sample of those counters per minute, so the console can tell how many came in any
minute and in the last hour. The counters are summed across workers (as a scrape sees
them), so every worker answers alike; a restart starts the samples (and the counters)
again, and the console says since when it counts.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Mapping

from relay.metrics import Metrics, counter_totals

MINUTE_MS = 60_000
OUTCOMES = ("rejected", "failed", "duplicate")


class CounterSampler:
    """A ring of per-minute samples of counter totals (outcome -> total so far)."""

    def __init__(self, keep_minutes: int = 48 * 60) -> None:
        self._samples: collections.deque[tuple[int, dict[str, float]]] = collections.deque(
            maxlen=keep_minutes + 1)

    @property
    def since_ms(self) -> int | None:
        """When counting began (the first sample), or None before it."""
        return self._samples[0][0] if self._samples else None

    def sample(self, now_ms: int, totals: Mapping[str, float]) -> None:
        """Record the totals at `now_ms`; one sample per minute (the first one wins)."""
        minute = now_ms // MINUTE_MS * MINUTE_MS
        if self._samples and self._samples[-1][0] // MINUTE_MS * MINUTE_MS >= minute:
            return
        self._samples.append((now_ms, dict(totals)))

    def per_minute(self, outcome: str, current: Mapping[str, float],
                   now_ms: int) -> dict[int, int]:
        """Count per minute start (ms) of `outcome`, from the first sample to now."""
        out: dict[int, int] = {}
        points = [*self._samples, (now_ms, dict(current))]
        for (t0, a), (_t1, b) in zip(points, points[1:], strict=False):
            n = int(b.get(outcome, 0) - a.get(outcome, 0))
            if n > 0:
                minute = t0 // MINUTE_MS * MINUTE_MS
                out[minute] = out.get(minute, 0) + n
        return out

    def since(self, outcome: str, current: Mapping[str, float],
              from_ms: int) -> tuple[int, int | None]:
        """How many of `outcome` since `from_ms` (by the newest sample at or before it, or
        since the first sample when counting began later), and the time counted from
        (None: no sample yet)."""
        older = [s for s in self._samples if s[0] <= from_ms]
        base = older[-1] if older else (self._samples[0] if self._samples else None)
        if base is None:
            return 0, None
        count = max(0, int(current.get(outcome, 0) - base[1].get(outcome, 0)))
        return count, max(base[0], from_ms)


async def webhook_totals(metrics: Metrics) -> dict[str, float]:
    """relay_webhooks_total by outcome (with workers, read from their files off the loop)."""
    if metrics.shared_dir is None:
        return counter_totals(metrics, "relay_webhooks_total", "outcome")
    return await asyncio.to_thread(counter_totals, metrics, "relay_webhooks_total", "outcome")
