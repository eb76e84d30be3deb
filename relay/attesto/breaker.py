"""A circuit breaker for one peer: stop calling it after repeated failures, probe, recover.

Pure: the caller passes the monotonic time in seconds. Closed → (threshold consecutive
failures) → open for `cooldown_s` → half-open: one probe goes through; its success
closes the breaker, its failure opens it again. A probe that ends with neither (cancelled,
or refused before it called the peer) must say so (`probe_ended`, in a `finally`), or
every later call would be refused.
"""

from __future__ import annotations

from enum import StrEnum


class BreakerState(StrEnum):
    CLOSED = "closed"  # calls flow; failures are counted
    OPEN = "open"  # calls are refused until the cooldown ends
    HALF_OPEN = "half_open"  # one probe call is in flight; others are refused


class Breaker:
    """Count consecutive failures; refuse calls while open. Not thread-safe (one loop)."""

    def __init__(self, threshold: int = 5, cooldown_s: float = 5.0) -> None:
        if threshold < 1 or cooldown_s <= 0:
            raise ValueError("threshold must be >= 1 and cooldown_s > 0")
        self.threshold = threshold
        self.cooldown_s = cooldown_s
        self.state = BreakerState.CLOSED
        self.failures = 0
        self.opened_at = 0.0
        self.times_opened = 0
        self.probes = 0  # probes let through so far; the latest one is the one out

    def probe(self) -> int | None:
        """The number of the probe out now (right after `refuse_for` let a call through:
        that call), or None when closed."""
        return self.probes if self.state == BreakerState.HALF_OPEN else None

    def refuse_for(self, now: float) -> float | None:
        """None if a call may go now (half-open: this call is the probe); else seconds to wait."""
        if self.state == BreakerState.CLOSED:
            return None
        remaining = self.opened_at + self.cooldown_s - now
        if self.state == BreakerState.OPEN and remaining <= 0:
            self.state = BreakerState.HALF_OPEN
            self.probes += 1
            return None
        # Half-open with the probe still out: tell others to come back shortly.
        return max(remaining, 0.0) if self.state == BreakerState.OPEN else self.cooldown_s

    def probe_ended(self, probe: int, now: float) -> None:
        """Probe `probe` is over. If it recorded neither success nor failure, the next call
        probes instead (the breaker stays open, its cooldown already spent)."""
        if self.state == BreakerState.HALF_OPEN and self.probes == probe:
            self.state = BreakerState.OPEN
            self.opened_at = now - self.cooldown_s

    def success(self) -> None:
        self.state = BreakerState.CLOSED
        self.failures = 0

    def failure(self, now: float) -> bool:
        """Record a failed call; return True when this failure opened the breaker."""
        self.failures += 1
        if self.state == BreakerState.HALF_OPEN or (
                self.state == BreakerState.CLOSED and self.failures >= self.threshold):
            self.state = BreakerState.OPEN
            self.opened_at = now
            self.times_opened += 1
            return True
        return False
