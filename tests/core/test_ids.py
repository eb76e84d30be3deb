"""ULIDs: 26 Crockford base32 characters, the first ten the millisecond time."""

from __future__ import annotations

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
