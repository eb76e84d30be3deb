"""A token bucket for outbound calls, with a pause for upstream 429 Retry-After."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class TokenBucket:
    """`rate` tokens per second, at most `burst` saved up. `acquire()` waits for one."""

    def __init__(self, rate: float, burst: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0:
            raise ValueError("rate must be > 0")
        self.rate = rate
        self.burst = burst if burst is not None else max(1.0, rate)
        self._clock = clock
        self._tokens = self.burst
        self._stamp = clock()
        self._paused_until = 0.0
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    def pause(self, seconds: float) -> None:
        """Take no tokens for `seconds` (an upstream asked us to back off)."""
        self._paused_until = max(self._paused_until, self._clock() + seconds)

    def delay_s(self) -> float:
        """How long until a token is available (0 when one is)."""
        self._refill()
        wait = max(0.0, self._paused_until - self._clock())
        if self._tokens < 1:
            wait = max(wait, (1 - self._tokens) / self.rate)
        return wait

    def try_acquire(self) -> bool:
        if self.delay_s() > 0:
            return False
        self._tokens -= 1
        return True

    async def acquire(self) -> None:
        async with self._lock:  # first come, first served
            while not self.try_acquire():
                await asyncio.sleep(self.delay_s())
