"""What one delivery attempt's outcome means: delivered, retry when, disable, or dead.

Pure: stdlib only, the clock and the randomness are injected. Must not do I/O.
"""

from __future__ import annotations

import email.utils
import enum
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

JITTER = 0.2  # each scheduled delay varies by up to ±20 %
MAX_RETRY_AFTER_S = 86_400.0  # a Retry-After beyond a day is taken as a day
# Answers whose Retry-After can lengthen the wait: throttled, or a gateway/server that is down.
THROTTLE_STATUSES = frozenset({429, 502, 503, 504})


class Verdict(enum.StrEnum):
    DELIVERED = "delivered"
    RETRY = "retry"
    GONE = "gone"  # 410: disable the endpoint, hold its rows
    DEAD = "dead"  # the schedule is exhausted


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    delay_s: float = 0.0  # for RETRY: seconds until the next attempt


def delay_seconds(text: str, cap: float) -> float | None:
    """RFC 9110 delay-seconds (1*DIGIT: ASCII digits, any length) as seconds, at most `cap`;
    None for anything else. Never calls int() on a long string (it refuses 4,300 digits)."""
    if not text or not text.isascii() or not text.isdigit():
        return None
    digits = text.lstrip("0")
    if len(digits) > 15:  # beyond any cap worth having
        return cap
    return min(float(int(digits or "0")), cap)


def parse_retry_after(value: str | None, now_s: float) -> float | None:
    """Seconds a `Retry-After` header asks for (delta-seconds or HTTP-date), bounded to a
    day; None when absent or unreadable."""
    if value is None:
        return None
    text = value.strip()
    if text[:1].isdigit():
        return delay_seconds(text, MAX_RETRY_AFTER_S)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        return None
    return min(max(when.timestamp() - now_s, 0.0), MAX_RETRY_AFTER_S)


def scheduled_delay(schedule: Sequence[float], attempts: int,
                    rand: Callable[[], float] = random.random) -> float | None:
    """Delay after the `attempts`-th failed attempt (1-based), jittered; None when exhausted."""
    if attempts < 1 or attempts > len(schedule):
        return None
    base = float(schedule[attempts - 1])
    return max(0.0, base * (1.0 + JITTER * (2.0 * rand() - 1.0)))


def decide(status: int | None, attempts: int, schedule: Sequence[float],
           retry_after: str | None, now_s: float,
           rand: Callable[[], float] = random.random) -> Decision:
    """Judge one attempt: `status` None means no HTTP answer (timeout, refused, SSRF...).

    Only 2xx is success; 3xx is a failure (redirects are never followed); 410 disables
    the endpoint. A `Retry-After` on 429, 502, 503 or 504 can only lengthen the scheduled
    wait (a peer asking for 0 s must not spend the schedule in seconds); one that cannot
    be read is ignored. `attempts` counts this attempt too. After `len(schedule)` retries
    the row is dead.
    """
    if status is not None and 200 <= status < 300:
        return Decision(Verdict.DELIVERED)
    if status == 410:
        return Decision(Verdict.GONE)
    delay = scheduled_delay(schedule, attempts, rand)
    if delay is None:
        return Decision(Verdict.DEAD)
    if status in THROTTLE_STATUSES:
        asked = parse_retry_after(retry_after, now_s)
        if asked is not None:
            delay = max(delay, asked)
    return Decision(Verdict.RETRY, delay)
