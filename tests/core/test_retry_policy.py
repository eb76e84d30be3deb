"""Pure retry policy: schedule with jitter, Retry-After, and what each status means."""

from __future__ import annotations

import email.utils

import pytest

from relay.core.retry_policy import (
    MAX_RETRY_AFTER_S,
    Verdict,
    decide,
    parse_retry_after,
    scheduled_delay,
)

NOW = 1_800_000_000.0
SCHEDULE = (5.0, 30.0, 120.0)


@pytest.mark.parametrize(("value", "expected"), [
    (None, None), ("120", 120.0), (" 7 ", 7.0), ("0", 0.0), ("soon", None), ("-5", None),
    ("999999999", MAX_RETRY_AFTER_S),
    (email.utils.formatdate(NOW + 90, usegmt=True), 90.0),
    (email.utils.formatdate(NOW - 90, usegmt=True), 0.0),  # a date in the past: now
    ("Wed, 21 Oct 2015 07:28:00", None),  # no zone: not an HTTP-date
])
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, NOW) == expected


@pytest.mark.parametrize(("rand", "expected"), [(0.0, 4.0), (0.5, 5.0), (1.0, 6.0)])
def test_first_delay_is_jittered_within_20_percent(rand: float, expected: float) -> None:
    assert scheduled_delay(SCHEDULE, 1, lambda: rand) == pytest.approx(expected)


def test_schedule_steps_then_exhausts() -> None:
    mid = lambda: 0.5  # noqa: E731 - no jitter
    assert [scheduled_delay(SCHEDULE, n, mid) for n in (1, 2, 3, 4)] == [5.0, 30.0, 120.0, None]
    assert scheduled_delay(SCHEDULE, 0, mid) is None


def test_default_schedule_reaches_about_three_days() -> None:
    from relay.config import OutboxConfig

    total_h = sum(OutboxConfig().retry_schedule_s) / 3600
    assert 70 <= total_h <= 80


@pytest.mark.parametrize(("status", "retry_after", "verdict", "delay"), [
    (200, None, Verdict.DELIVERED, 0.0),
    (204, None, Verdict.DELIVERED, 0.0),
    (302, None, Verdict.RETRY, 5.0),  # a redirect is a failure, not followed
    (410, None, Verdict.GONE, 0.0),
    (500, "60", Verdict.RETRY, 5.0),  # Retry-After only counts on 429 and 503
    (503, "60", Verdict.RETRY, 60.0),
    (429, "120", Verdict.RETRY, 120.0),
    (429, None, Verdict.RETRY, 5.0),
    (400, None, Verdict.RETRY, 5.0),
    (None, None, Verdict.RETRY, 5.0),  # timeout, refused, SSRF guard
])
def test_decide_first_attempt(status: int | None, retry_after: str | None, verdict: Verdict,
                              delay: float) -> None:
    decision = decide(status, 1, SCHEDULE, retry_after, NOW, lambda: 0.5)
    assert (decision.verdict, decision.delay_s) == (verdict, delay)


def test_decide_after_the_last_retry_is_dead_even_with_retry_after() -> None:
    assert decide(500, 4, SCHEDULE, None, NOW).verdict == Verdict.DEAD
    assert decide(429, 4, SCHEDULE, "5", NOW).verdict == Verdict.DEAD
    assert decide(200, 4, SCHEDULE, None, NOW).verdict == Verdict.DELIVERED
