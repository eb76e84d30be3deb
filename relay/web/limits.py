"""Per-caller token buckets on verify, restore and `/api/iap` (`[limits]`).

A caller is a principal: a service key's name (`/v1`) or an end-user JWT's `sub`
(`/api/iap`). One caller spending its budget gets 429 with `Retry-After`; the others, and
relay's own share of Attesto's rate limit, are untouched. Buckets live in this process
(with `[server] workers = N`, each worker has its own: N times the budget).
"""

from __future__ import annotations

import asyncio
import collections
import math
import time
from collections.abc import Callable

from relay.config import LimitsConfig
from relay.core.errors import RateLimitedError
from relay.scheduler.ratelimit import TokenBucket

MAX_CALLERS = 100_000  # buckets kept; the least recently seen caller's is dropped first


class CallerBuckets:
    """One token bucket per principal, `rate` tokens per second, at most `burst` saved."""

    def __init__(self, kind: str, rate: float, burst: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.kind = kind  # "service key" or "user": for the error message
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._buckets: collections.OrderedDict[str, TokenBucket] = collections.OrderedDict()

    def _bucket(self, principal: str) -> TokenBucket:
        bucket = self._buckets.get(principal)
        if bucket is None:
            bucket = self._buckets[principal] = TokenBucket(self.rate, self.burst, self._clock)
            if len(self._buckets) > MAX_CALLERS:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(principal)
        return bucket

    def take(self, principal: str) -> None:
        """Spend one token now, or raise RateLimitedError (429) saying when to come back."""
        bucket = self._bucket(principal)
        if not bucket.try_acquire():
            wait = bucket.delay_s()
            raise RateLimitedError(
                f"too many requests for this {self.kind}; retry in {math.ceil(wait)} s",
                retry_after_s=max(1, math.ceil(wait)))

    async def wait(self, principal: str, deadline: float) -> bool:
        """Spend one token, waiting for it until `deadline` (loop time); False when it
        cannot come in time (nothing is spent then)."""
        bucket = self._bucket(principal)
        loop = asyncio.get_running_loop()
        while not bucket.try_acquire():
            delay = bucket.delay_s()
            if loop.time() + delay > deadline:
                return False
            await asyncio.sleep(delay)
        return True


class InboundLimits:
    """The buckets of both kinds of caller; a reload that changes `[limits]` starts them
    afresh (full)."""

    def __init__(self, config: LimitsConfig) -> None:
        self.config = config
        self.service_keys = CallerBuckets("service key", config.service_key_rate_per_s,
                                          config.service_key_burst)
        self.users = CallerBuckets("user", config.user_rate_per_s, config.user_burst)

    def reconfigure(self, config: LimitsConfig) -> None:
        if config != self.config:
            fresh = InboundLimits(config)
            self.config, self.service_keys, self.users = (fresh.config, fresh.service_keys,
                                                          fresh.users)

