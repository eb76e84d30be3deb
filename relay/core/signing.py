"""Standard Webhooks outbound signing: `whsec_`/`whsk_` keys, `v1` HMAC and `v1a` Ed25519 headers.

Pure: stdlib plus `cryptography`, no I/O, the clock is injected. Must not import aiohttp or peewee.
"""

import base64
import binascii
import functools
import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

SECRET_PREFIX = "whsec_"
SIGNING_KEY_PREFIX = "whsk_"
PUBLIC_KEY_PREFIX = "whpk_"
_TIMESTAMP_RE = re.compile(r"[0-9]{1,15}")
_MSG_ID_RE = re.compile(r"[^.\s]+")  # no '.' (it separates the signed parts), no space

_BLOCK = 64  # SHA-256's block size: the HMAC key is padded (or first hashed) to it
_INNER = bytes(b ^ 0x36 for b in range(256))  # RFC 2104's ipad and opad, as translations
_OUTER = bytes(b ^ 0x5C for b in range(256))

if TYPE_CHECKING:
    from hashlib import _Hash

Reason = Literal["missing", "malformed", "stale", "mismatch"]


class WebhookSignatureError(Exception):
    """Raised when Standard Webhooks headers are missing, malformed, stale or match no key."""

    def __init__(self, reason: Reason) -> None:
        super().__init__(f"webhook signature {reason}")
        self.reason = reason


def _b64(data: bytes) -> str:
    return binascii.b2a_base64(data, newline=False).decode("ascii")


def _decode_prefixed(text: str, prefix: str, what: str) -> bytes:
    # Messages never echo the text: it is key material.
    if not text.startswith(prefix):
        raise ValueError(f"{what} must start with {prefix!r}")
    payload = text[len(prefix) :]
    try:
        # Padding-tolerant: Svix and others print secrets without '='.
        return base64.b64decode(payload + "=" * (-len(payload) % 4), validate=True)
    except binascii.Error:
        raise ValueError(f"{what} is not valid base64 after {prefix!r}") from None


def parse_secret(text: str) -> bytes:
    """Decode a `whsec_<base64>` secret to the 24..64 raw HMAC key bytes; ValueError otherwise."""
    key = _decode_prefixed(text, SECRET_PREFIX, "webhook secret")
    if not 24 <= len(key) <= 64:
        raise ValueError(f"webhook secret must decode to 24..64 bytes (got {len(key)})")
    return key


def generate_secret() -> str:
    """Return a new `whsec_` secret holding 32 random bytes."""
    return SECRET_PREFIX + _b64(secrets.token_bytes(32))


def parse_signing_key(text: str) -> Ed25519PrivateKey:
    """Decode a `whsk_<base64>` Ed25519 private key (32-byte raw seed); ValueError otherwise."""
    raw = _decode_prefixed(text, SIGNING_KEY_PREFIX, "signing key")
    if len(raw) != 32:
        raise ValueError(f"signing key must decode to 32 bytes (got {len(raw)})")
    return Ed25519PrivateKey.from_private_bytes(raw)


def parse_public_key(text: str) -> Ed25519PublicKey:
    """Decode a `whpk_<base64>` Ed25519 public key (32 raw bytes); ValueError otherwise."""
    raw = _decode_prefixed(text, PUBLIC_KEY_PREFIX, "public key")
    if len(raw) != 32:
        raise ValueError(f"public key must decode to 32 bytes (got {len(raw)})")
    return Ed25519PublicKey.from_public_bytes(raw)


def generate_ed25519_keypair() -> tuple[str, str]:
    """Return a new (`whsk_…`, `whpk_…`) Ed25519 key pair."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return SIGNING_KEY_PREFIX + _b64(private), PUBLIC_KEY_PREFIX + _b64(public)


def _content(msg_id: str, timestamp: str, body: bytes) -> bytes:
    # The timestamp is signed exactly as it travels in the header.
    return f"{msg_id}.{timestamp}.".encode("utf-8", "surrogateescape") + body


@functools.lru_cache(maxsize=64)
def _pads(key: bytes) -> "tuple[_Hash, _Hash]":
    # HMAC-SHA256 (RFC 2104) with the key's inner and outer pads hashed once: two C-level
    # hash copies per signature cost less than copying an `hmac.HMAC` (a Python object),
    # and far less than hmac.new, which pads and hashes the key again every time.
    if len(key) > _BLOCK:
        key = hashlib.sha256(key).digest()
    key = key.ljust(_BLOCK, b"\0")
    return (hashlib.sha256(key.translate(_INNER)), hashlib.sha256(key.translate(_OUTER)))


def _hmac(key: bytes, content: bytes) -> bytes:
    # Copies of the pre-keyed pads, not the one-shot hmac.digest: the one-shot always
    # releases the GIL, and getting it back from the store thread costs more than signing
    # a small body.
    inner, outer = _pads(key)
    mac = inner.copy()
    mac.update(content)
    out = outer.copy()
    out.update(mac.digest())
    return out.digest()


def sign_headers(
    msg_id: str,
    timestamp_s: int,
    body: bytes,
    hmac_keys: Sequence[bytes],
    ed25519_keys: Sequence[Ed25519PrivateKey] = (),
) -> dict[str, str]:
    """Return the webhook-id/-timestamp/-signature and Idempotency-Key headers for one attempt.

    `msg_id` is the event id (same on every retry); `timestamp_s` is the attempt time in
    integer Unix seconds. Entries are `v1` per HMAC key in order, then `v1a` per Ed25519 key.
    """
    if not _MSG_ID_RE.fullmatch(msg_id):
        raise ValueError("webhook id must be non-empty, without '.' or whitespace")
    timestamp = str(timestamp_s)
    content = _content(msg_id, timestamp, body)
    if len(hmac_keys) == 1 and not ed25519_keys:  # the usual case: no list, no join
        signature = "v1," + _b64(_hmac(hmac_keys[0], content))
    elif hmac_keys or ed25519_keys:
        entries = ["v1," + _b64(_hmac(key, content)) for key in hmac_keys]
        entries += ["v1a," + _b64(key.sign(content)) for key in ed25519_keys]
        signature = " ".join(entries)
    else:
        raise ValueError("at least one signing key is required")
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": timestamp,
        "webhook-signature": signature,
        "Idempotency-Key": msg_id,
    }


def verify_headers(
    headers: Mapping[str, str],
    body: bytes,
    hmac_keys: Sequence[bytes],
    now_s: int,
    tolerance_s: int = 300,
    ed25519_public_keys: Sequence[Ed25519PublicKey] = (),
) -> None:
    """Verify Standard Webhooks headers over the raw body; raise WebhookSignatureError if bad.

    Header names are case-insensitive; the timestamp must be an integer within
    `tolerance_s` either side of `now_s`. Unknown versions are skipped; a malformed entry
    of a known version rejects the whole header. Nothing but WebhookSignatureError escapes.
    """
    lowered = {name.lower(): value for name, value in headers.items()}
    msg_id = lowered.get("webhook-id")
    timestamp = lowered.get("webhook-timestamp")
    signature = lowered.get("webhook-signature")
    if not msg_id or not timestamp or not signature:
        raise WebhookSignatureError("missing")
    if not _TIMESTAMP_RE.fullmatch(timestamp):
        raise WebhookSignatureError("malformed")
    if abs(now_s - int(timestamp)) > tolerance_s:
        raise WebhookSignatureError("stale")
    try:
        content = _content(msg_id, timestamp, body)
    except UnicodeEncodeError:
        # aiohttp decodes header bytes with surrogateescape; lone surrogates cannot be signed.
        raise WebhookSignatureError("malformed") from None
    expected = [_hmac(key, content) for key in hmac_keys]
    matched = False
    for entry in signature.split():
        version, sep, encoded = entry.partition(",")
        if version not in ("v1", "v1a"):
            continue
        try:
            sig = base64.b64decode(encoded, validate=True) if sep else b""
        except binascii.Error:
            sig = b""
        if version == "v1":
            if len(sig) != 32:
                raise WebhookSignatureError("malformed")
            for mac in expected:
                matched |= hmac.compare_digest(mac, sig)
        else:
            if len(sig) != 64:
                raise WebhookSignatureError("malformed")
            for public_key in ed25519_public_keys:
                try:
                    public_key.verify(sig, content)
                    matched = True
                except InvalidSignature:
                    pass
    if not matched:
        raise WebhookSignatureError("mismatch")
