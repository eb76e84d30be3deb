"""`iso` writes times as Attesto does and `parse_time_ms` reads them back, both exact to the
millisecond over 1970..9999 (float timestamps lost the last millisecond far out)."""

from __future__ import annotations

import random

import pytest

from relay.core.domain import MAX_TIME_MS, iso, parse_time_ms


@pytest.mark.parametrize(("ms", "text"), [
    (0, "1970-01-01T00:00:00.000Z"),
    (1_800_000_000_123, "2027-01-15T08:00:00.123Z"),
    (MAX_TIME_MS, "9999-12-31T23:59:59.999Z"),  # a float division once gave .998
    (106_852_994_960_411, "5356-01-14T11:29:20.411Z"),
])
def test_known_times(ms: int, text: str) -> None:
    assert iso(ms) == text


def test_round_trips_through_the_parser() -> None:
    rng = random.Random(7)
    for ms in [rng.randrange(0, MAX_TIME_MS + 1) for _ in range(20_000)]:
        assert parse_time_ms(iso(ms)) == ms


def test_none_stays_none() -> None:
    assert iso(None) is None
