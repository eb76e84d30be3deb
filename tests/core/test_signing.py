"""Tests for relay.core.signing, cross-checked against the `standardwebhooks` package."""

import base64
import hashlib
import hmac
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from relay.core.signing import (
    WebhookSignatureError,
    generate_ed25519_keypair,
    generate_secret,
    parse_public_key,
    parse_secret,
    parse_signing_key,
    sign_headers,
    verify_headers,
)

SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SPEC_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SPEC_TS = 1614265330
SPEC_BODY = b'{"test": 2432232314}'
SPEC_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
BODY = b'{"type":"subscription.renewed","data":{"n":"\xc3\xa9"}}'


def _secret_of(size: int) -> str:
    return "whsec_" + base64.b64encode(bytes(range(size))).decode()


def test_spec_vector() -> None:
    headers = sign_headers(SPEC_ID, SPEC_TS, SPEC_BODY, [parse_secret(SPEC_SECRET)])
    assert headers == {
        "webhook-id": SPEC_ID,
        "webhook-timestamp": str(SPEC_TS),
        "webhook-signature": SPEC_SIGNATURE,
        "Idempotency-Key": SPEC_ID,
    }
    verify_headers(headers, SPEC_BODY, [parse_secret(SPEC_SECRET)], now_s=SPEC_TS)


def test_oracle_single_key() -> None:
    secret = generate_secret()
    headers = sign_headers("msg_1", int(time.time()), BODY, [parse_secret(secret)])
    assert Webhook(secret).verify(BODY, headers, json_parse=False) is None


def test_repeated_signatures_with_one_key_stay_independent() -> None:
    # The keyed HMAC is copied per signature: no content may leak into the next one.
    secret = generate_secret()
    key = parse_secret(secret)
    for n, body in enumerate([BODY, b"{}", BODY + b" ", BODY]):
        headers = sign_headers(f"msg_r{n}", SPEC_TS, body, [key])
        expected = hmac.new(key, f"msg_r{n}.{SPEC_TS}.".encode() + body, hashlib.sha256)
        assert headers["webhook-signature"] == f"v1,{base64.b64encode(expected.digest()).decode()}"
        verify_headers(headers, body, [key], now_s=SPEC_TS)


def test_oracle_rotation_either_secret_alone() -> None:
    new, old = generate_secret(), generate_secret()
    headers = sign_headers("msg_2", int(time.time()), BODY, [parse_secret(new), parse_secret(old)])
    assert headers["webhook-signature"].count("v1,") == 2
    for secret in (new, old):
        Webhook(secret).verify(BODY, headers, json_parse=False)
    with pytest.raises(WebhookVerificationError):
        Webhook(generate_secret()).verify(BODY, headers, json_parse=False)


def test_oracle_ignores_our_v1a_entry() -> None:
    secret = generate_secret()
    sk, _ = generate_ed25519_keypair()
    keys = [parse_signing_key(sk)]
    headers = sign_headers("msg_3", int(time.time()), BODY, [parse_secret(secret)], keys)
    assert headers["webhook-signature"].split(" ")[1].startswith("v1a,")
    Webhook(secret).verify(BODY, headers, json_parse=False)


def test_v1a_round_trip() -> None:
    sk, pk = generate_ed25519_keypair()
    assert sk.startswith("whsk_") and pk.startswith("whpk_")
    headers = sign_headers("msg_4", 1000, BODY, [], [parse_signing_key(sk)])
    version, _, sig = headers["webhook-signature"].partition(",")
    assert version == "v1a" and len(sig) == 88
    verify_headers(headers, BODY, [], now_s=1000, ed25519_public_keys=[parse_public_key(pk)])
    _, other_pk = generate_ed25519_keypair()
    with pytest.raises(WebhookSignatureError) as info:
        verify_headers(headers, BODY, [], 1000, ed25519_public_keys=[parse_public_key(other_pk)])
    assert info.value.reason == "mismatch"


@pytest.mark.parametrize("msg_id", ["msg.1", "", "msg 1", "msg\r\n1"])
def test_bad_message_id_rejected(msg_id: str) -> None:
    with pytest.raises(ValueError, match="webhook id"):
        sign_headers(msg_id, 1, BODY, [parse_secret(generate_secret())])


def test_no_keys_rejected() -> None:
    with pytest.raises(ValueError, match="signing key"):
        sign_headers("msg_1", 1, BODY, [])


def test_generate_secret_parses_to_32_bytes() -> None:
    secret = generate_secret()
    assert secret.startswith("whsec_")
    assert len(parse_secret(secret)) == 32


@pytest.mark.parametrize(
    ("text", "size"),
    [
        (SPEC_SECRET, 24),
        (_secret_of(24), 24),
        (_secret_of(64), 64),
        (_secret_of(32).rstrip("="), 32),  # padding-tolerant
        (_secret_of(31).rstrip("="), 31),
    ],
)
def test_parse_secret_accepts(text: str, size: int) -> None:
    assert len(parse_secret(text)) == size


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "must start with 'whsec_'"),
        ("whsec_", "24..64 bytes"),
        (_secret_of(23), "24..64 bytes"),
        (_secret_of(65), "24..64 bytes"),
        ("whsec_not*base64!not*base64!not*base64!", "not valid base64"),
        ("whsec_a", "not valid base64"),
    ],
)
def test_parse_secret_rejects(text: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_secret(text)


def test_parse_key_errors_do_not_echo_key_material() -> None:
    with pytest.raises(ValueError) as info:
        parse_signing_key("whsk_c2VjcmV0LXNlY3JldA==")
    assert "c2VjcmV0" not in str(info.value)
    with pytest.raises(ValueError, match="whpk_"):
        parse_public_key("whsk_AAAA")


def _spec_headers(**overrides: str) -> dict[str, str]:
    headers = {"webhook-id": SPEC_ID, "webhook-timestamp": str(SPEC_TS)}
    headers["webhook-signature"] = SPEC_SIGNATURE
    headers.update(overrides)
    return {k: v for k, v in headers.items() if v != "<drop>"}


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param(_spec_headers(), id="plain"),
        pytest.param(
            {"Webhook-Id": SPEC_ID, "WEBHOOK-TIMESTAMP": str(SPEC_TS),
             "Webhook-Signature": SPEC_SIGNATURE},
            id="mixed-case-names",
        ),
        pytest.param(
            _spec_headers(**{"webhook-signature": f"v2,abc v1,{'A' * 43}= {SPEC_SIGNATURE}"}),
            id="unknown-version-and-other-v1",
        ),
        pytest.param(
            _spec_headers(**{"webhook-signature": "v1," + "A" * 43 + "= " + SPEC_SIGNATURE}),
            id="rotation-second-matches",
        ),
        pytest.param(
            _spec_headers(**{"webhook-signature": f"  {SPEC_SIGNATURE}  v2,x"}),
            id="extra-whitespace",
        ),
    ],
)
def test_verify_accepts(headers: dict[str, str]) -> None:
    verify_headers(headers, SPEC_BODY, [parse_secret(SPEC_SECRET)], now_s=SPEC_TS)


@pytest.mark.parametrize(
    ("headers", "body", "now_s", "reason"),
    [
        (_spec_headers(**{"webhook-id": "<drop>"}), SPEC_BODY, SPEC_TS, "missing"),
        (_spec_headers(**{"webhook-signature": ""}), SPEC_BODY, SPEC_TS, "missing"),
        (_spec_headers(**{"webhook-timestamp": "<drop>"}), SPEC_BODY, SPEC_TS, "missing"),
        (_spec_headers(), SPEC_BODY + b" ", SPEC_TS, "mismatch"),
        (_spec_headers(), SPEC_BODY, SPEC_TS + 301, "stale"),
        (_spec_headers(), SPEC_BODY, SPEC_TS - 301, "stale"),
        (_spec_headers(**{"webhook-timestamp": f"{SPEC_TS}.0"}), SPEC_BODY, SPEC_TS, "malformed"),
        (_spec_headers(**{"webhook-timestamp": "1e9"}), SPEC_BODY, SPEC_TS, "malformed"),
        (_spec_headers(**{"webhook-timestamp": "9" * 5000}), SPEC_BODY, SPEC_TS, "malformed"),
        (_spec_headers(**{"webhook-signature": "v1"}), SPEC_BODY, SPEC_TS, "malformed"),
        (_spec_headers(**{"webhook-signature": "v1,***"}), SPEC_BODY, SPEC_TS, "malformed"),
        (_spec_headers(**{"webhook-signature": "v1,AAAA"}), SPEC_BODY, SPEC_TS, "malformed"),
        (_spec_headers(**{"webhook-signature": "v1a,AAAA"}), SPEC_BODY, SPEC_TS, "malformed"),
        (_spec_headers(**{"webhook-signature": "v2,abc"}), SPEC_BODY, SPEC_TS, "mismatch"),
        (_spec_headers(**{"webhook-id": "msg_\ud800"}), SPEC_BODY, SPEC_TS, "malformed"),
        (_spec_headers(**{"webhook-id": "msg_\udcff"}), SPEC_BODY, SPEC_TS, "mismatch"),
    ],
)
def test_verify_rejects(headers: dict[str, str], body: bytes, now_s: int, reason: str) -> None:
    with pytest.raises(WebhookSignatureError) as info:
        verify_headers(headers, body, [parse_secret(SPEC_SECRET)], now_s=now_s)
    assert info.value.reason == reason


@pytest.mark.parametrize("skew_s", [-300, 300])
def test_verify_window_edges_pass(skew_s: int) -> None:
    key = parse_secret(SPEC_SECRET)
    verify_headers(_spec_headers(), SPEC_BODY, [key], now_s=SPEC_TS + skew_s)


_HEADER_NAMES = st.sampled_from(["webhook-id", "webhook-timestamp", "webhook-signature", "x"])
# Surrogates included: aiohttp decodes header bytes with surrogateescape.
_HEADER_TEXT = st.text(st.one_of(st.characters(), st.characters(categories=["Cs"])))
_SIG_PIECES = st.sampled_from(["v1,", "v1a,", "v2,", " ", ",", "=", SPEC_SIGNATURE[3:], "AAAA"])


@given(
    st.dictionaries(
        _HEADER_NAMES, st.one_of(_HEADER_TEXT, st.lists(_SIG_PIECES).map("".join))
    ),
    st.binary(),
)
def test_arbitrary_headers_raise_only_signature_error(headers: dict[str, str], body: bytes) -> None:
    _, pk = generate_ed25519_keypair()
    try:
        verify_headers(headers, body, [parse_secret(SPEC_SECRET)], now_s=SPEC_TS,
                       ed25519_public_keys=[parse_public_key(pk)])
    except WebhookSignatureError:
        pass


@pytest.mark.parametrize("size", [1, 24, 32, 63, 64, 65, 100])
def test_v1_matches_hmac_new_for_every_key_size(size: int) -> None:
    # The pre-keyed pads must give RFC 2104's HMAC: short keys padded, long ones hashed.
    key = bytes((7 * i + 3) % 256 for i in range(size))
    headers = sign_headers("msg_k", SPEC_TS, BODY, [key, key[::-1]])
    expected = [hmac.new(k, f"msg_k.{SPEC_TS}.".encode() + BODY, hashlib.sha256).digest()
                for k in (key, key[::-1])]
    assert headers["webhook-signature"] == " ".join(
        f"v1,{base64.b64encode(mac).decode()}" for mac in expected)
    verify_headers(headers, BODY, [key[::-1]], now_s=SPEC_TS)
