"""Identifiers: ULIDs (time-ordered, 26 Crockford base32 chars) with a type prefix."""

from __future__ import annotations

import random
import time
import uuid

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
# Ids must be unique, not secret: a PRNG seeded from the OS (at import) instead of one
# os.urandom() call per id, a syscall that gives up the GIL on every request and event.
_random = random.Random()


# Two characters per 10 bits: a ULID is 13 table lookups, not 26 shifts (one per id,
# several per request). The time's 5 pairs (10 characters) are kept for the last
# millisecond seen: a write group names all its events at one `now_ms`.
_PAIRS = tuple(a + b for a in _CROCKFORD for b in _CROCKFORD)
_LOWER_PAIRS = tuple(p.lower() for p in _PAIRS)
_RANDOM_SHIFTS = tuple(range(70, -10, -10))
_head: tuple[int, str, str] = (-1, "", "")  # (ms, upper, lower): one tuple, swapped whole


def _time_chars(ms: int) -> tuple[str, str]:
    """The first 10 characters of a ULID of millisecond `ms` (its low 50 bits), upper and
    lower case."""
    global _head
    head = _head
    if head[0] != ms:
        upper = "".join([_PAIRS[(ms >> shift) & 1023] for shift in (40, 30, 20, 10, 0)])
        head = (ms, upper, upper.lower())
        _head = head
    return head[1], head[2]


def ulid(now_ms: int | None = None) -> str:
    """A new ULID: 48-bit millisecond time then 80 random bits."""
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    rand = _random.getrandbits(80)
    pairs = _PAIRS
    return _time_chars(ms)[0] + "".join([pairs[(rand >> shift) & 1023]
                                         for shift in _RANDOM_SHIFTS])


def event_id(now_ms: int | None = None) -> str:
    """Relay's own event id: the `webhook-id` downstream dedupes on (no '.')."""
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    rand = _random.getrandbits(80)
    pairs = _LOWER_PAIRS
    return "rly_" + _time_chars(ms)[1] + "".join([pairs[(rand >> shift) & 1023]
                                                  for shift in _RANDOM_SHIFTS])


def request_id() -> str:
    return f"req_{ulid()}"


def app_user_uuid() -> str:
    """A UUID v4, what StoreKit's appAccountToken and Play's obfuscatedAccountId take."""
    return str(uuid.uuid4())
