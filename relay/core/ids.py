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
# several per request).
_PAIRS = tuple(a + b for a in _CROCKFORD for b in _CROCKFORD)


def ulid(now_ms: int | None = None) -> str:
    """A new ULID: 48-bit millisecond time then 80 random bits."""
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    value = (ms << 80) | _random.getrandbits(80)
    pairs = _PAIRS
    return "".join([pairs[(value >> shift) & 1023] for shift in range(120, -10, -10)])


def event_id(now_ms: int | None = None) -> str:
    """Relay's own event id: the `webhook-id` downstream dedupes on (no '.')."""
    return f"rly_{ulid(now_ms).lower()}"


def request_id() -> str:
    return f"req_{ulid()}"


def app_user_uuid() -> str:
    """A UUID v4, what StoreKit's appAccountToken and Play's obfuscatedAccountId take."""
    return str(uuid.uuid4())
