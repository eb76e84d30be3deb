"""Attesto inbound webhook signatures (`t=<unix s>,v1=<hex HMAC-SHA256>`, attesto-contract §4.2).

Pure: stdlib only, no I/O, the clock is injected. Must not import aiohttp, peewee or config.
"""

import functools
import hashlib
import hmac
import re
from collections.abc import Sequence
from typing import Literal, get_args

# Bounded digit count keeps int() away from CPython's 4300-digit ValueError.
_T_RE = re.compile(r"[0-9]{1,15}")
_V1_RE = re.compile(r"[0-9a-f]{64}")

Reason = Literal["missing", "malformed", "stale", "mismatch"]
REASONS: frozenset[str] = frozenset(get_args(Reason))


class AttestoSignatureError(Exception):
    """Raised when an Attesto signature header is missing, malformed, stale or wrong.

    `reason` is one of `REASONS`; it is stable and safe to log or count.
    """

    def __init__(self, reason: Reason) -> None:
        super().__init__(f"attesto signature {reason}")
        self.reason = reason


# hashlib gives up the GIL while it hashes 2,048 bytes or more, and the event loop then
# waits to win it back from the store thread; fed in smaller pieces it keeps it.
_PIECE = 2047


@functools.lru_cache(maxsize=16)
def _keyed(secret: str) -> hmac.HMAC:
    # The key's pads hashed once: a copy per delivery costs less than hmac.new.
    return hmac.new(secret.encode("utf-8"), digestmod=hashlib.sha256)


def _digest(secret: str, t: int, body: bytes) -> str:
    mac = _keyed(secret).copy()
    mac.update(f"{t}.".encode())
    view = memoryview(body)
    for start in range(0, len(view), _PIECE):
        mac.update(view[start:start + _PIECE])
    return mac.hexdigest()


def sign_attesto(secret: str, t: int, body: bytes) -> str:
    """Return the header value `t=<t>,v1=<64 lower-case hex>` Attesto would send."""
    return f"t={t},v1={_digest(secret, t, body)}"


# The header as Attesto writes it; anything else goes through the general parse.
_CANONICAL = re.compile(r"t=([0-9]{1,15}),v1=([0-9a-f]{64})")


def _parse(header: str) -> tuple[int, str]:
    canonical = _CANONICAL.fullmatch(header)
    if canonical is not None:
        return int(canonical[1]), canonical[2]
    fields: dict[str, str] = {}
    for part in header.split(","):
        part = part.strip()
        if not part:
            continue
        key, sep, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            raise AttestoSignatureError("malformed")
        if key in fields:
            raise AttestoSignatureError("malformed")
        fields[key] = value
    t_text, v1 = fields.get("t"), fields.get("v1")
    if t_text is None or v1 is None:
        raise AttestoSignatureError("malformed")
    v1 = v1.lower()
    if not _T_RE.fullmatch(t_text) or not _V1_RE.fullmatch(v1):
        raise AttestoSignatureError("malformed")
    return int(t_text), v1


def verify_attesto(
    header: str | None,
    body: bytes,
    secrets: Sequence[str],
    now_s: int,
    tolerance_s: int = 300,
) -> int:
    """Check an Attesto signature header against the raw body; return its timestamp `t`.

    Order: parse, then the replay window (`|now_s - t| <= tolerance_s`), then every
    secret in constant time (rotation: any match wins). Raises only
    `AttestoSignatureError`.
    """
    if header is None or not header.strip():
        raise AttestoSignatureError("missing")
    t, given = _parse(header)
    if abs(now_s - t) > tolerance_s:
        raise AttestoSignatureError("stale")
    given_bytes = given.encode("ascii")
    matched = False
    # No early exit: the time taken must not reveal which secret matched.
    for secret in secrets:
        expected = _digest(secret, t, body).encode("ascii")
        matched |= hmac.compare_digest(expected, given_bytes)
    if not matched:
        raise AttestoSignatureError("mismatch")
    return t
