"""Pure retry policy: schedule with jitter, Retry-After, and what each status means."""

from __future__ import annotations

import email.utils

import pytest
from hypothesis import given
from hypothesis import strategies as st

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
    (500, "60", Verdict.RETRY, 5.0),  # Retry-After only counts on 429, 502, 503, 504
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


# RFC 9110 §10.2.3: Retry-After = HTTP-date / delay-seconds, and delay-seconds is 1*DIGIT
# (RFC 9110 §5.6.1 via RFC 5234 DIGIT = %x30-39): ASCII digits only.
@pytest.mark.parametrize("value", ["\u00b2", "\u0663", "+5", "5.5", "-0", ""])
def test_parse_retry_after_refuses_what_is_not_ascii_delay_seconds(value: str) -> None:
    assert parse_retry_after(value, NOW) is None


@pytest.mark.parametrize("value", ["9" * 5000, "1" * 4301, "0" * 5000 + "7"])
def test_a_delay_seconds_of_any_length_is_read_without_int(value: str) -> None:
    expected = 7.0 if value.endswith("7") else MAX_RETRY_AFTER_S
    assert parse_retry_after(value, NOW) == expected


@pytest.mark.parametrize("value", ["\u00b2", "9" * 5000, "\u0663", "garbage"])
@pytest.mark.parametrize("status", [429, 502, 503, 504])
def test_decide_never_raises_on_any_retry_after(status: int, value: str) -> None:
    decision = decide(status, 1, SCHEDULE, value, NOW, lambda: 0.5)
    assert decision.verdict == Verdict.RETRY and decision.delay_s >= 5.0


@pytest.mark.parametrize("status", [429, 502, 503, 504])
@pytest.mark.parametrize("retry_after", ["0", "1", email.utils.formatdate(NOW, usegmt=True)])
def test_retry_after_never_shortens_the_schedule(status: int, retry_after: str) -> None:
    """A Retry-After is a minimum (RFC 9110 §10.2.3 "ought to wait"): `max` with the step."""
    assert decide(status, 1, SCHEDULE, retry_after, NOW, lambda: 0.5).delay_s == 5.0
    assert decide(status, 3, SCHEDULE, retry_after, NOW, lambda: 0.5).delay_s == 120.0


@pytest.mark.parametrize("status", [502, 504])
def test_502_and_504_honour_a_longer_retry_after_like_503(status: int) -> None:
    assert decide(status, 1, SCHEDULE, "60", NOW, lambda: 0.5).delay_s == 60.0


@given(st.text())
def test_parse_retry_after_never_raises(value: str) -> None:
    seconds = parse_retry_after(value, NOW)
    assert seconds is None or 0.0 <= seconds <= MAX_RETRY_AFTER_S
