"""ULIDs: 26 Crockford base32 characters, the first ten the millisecond time."""

from __future__ import annotations

import pytest

from relay.core import ids


def _decode(text: str) -> int:
    value = 0
    for char in text:
        value = value * 32 + ids._CROCKFORD.index(char)
    return value


def test_ulid_encodes_time_then_randomness() -> None:
    for ms in (0, 1, 1_700_000_000_123, (1 << 48) - 1):
        u = ids.ulid(ms)
        assert len(u) == 26 and set(u) <= set(ids._CROCKFORD)
        assert _decode(u[:10]) == ms
        assert _decode(u) >> 80 == ms


def test_ulids_sort_by_time_and_differ() -> None:
    made = [ids.ulid(ms) for ms in range(1_700_000_000_000, 1_700_000_000_200)]
    assert made == sorted(made)
    assert len({ids.ulid(5) for _ in range(1000)}) == 1000


def test_prefixed_ids() -> None:
    event = ids.event_id(1)
    assert event.startswith("rly_") and event == event.lower() and len(event) == 30
    assert _decode(event[4:].upper()[:10]) == 1
    assert ids.request_id().startswith("req_") and len(ids.request_id()) == 30


def _reference_ulid(ms: int, rand: int) -> str:
    """A ULID as 26 shifts of the 128-bit value would spell it."""
    value = (ms << 80) | rand
    crockford = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
    return "".join(crockford[(value >> shift) & 31] for shift in range(125, -5, -5))


@pytest.mark.parametrize("ms", [0, 1, 1_800_000_000_000, 1_800_000_000_001,
                                1_800_000_000_000, (1 << 48) - 1, (1 << 50) + 7, -3])
def test_ulid_and_event_id_spell_the_time_and_the_random_bits(ms: int) -> None:
    for _ in range(20):  # the time's characters are kept per millisecond: several per ms
        state = ids._random.getstate()
        rand = ids._random.getrandbits(80)
        ids._random.setstate(state)
        assert ids.ulid(ms) == _reference_ulid(ms, rand)
        ids._random.setstate(state)
        assert ids.event_id(ms) == "rly_" + _reference_ulid(ms, rand).lower()
