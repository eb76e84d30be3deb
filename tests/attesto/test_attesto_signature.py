"""Tests for relay.attesto.signature: the Attesto §4.2 vector, window, rotation, parsing."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.attesto.signature import (
    REASONS,
    AttestoSignatureError,
    sign_attesto,
    verify_attesto,
)

SECRET = "whsec-example-0123456789abcdefghijklmnopqrstuv"
OLD_SECRET = "old-secret-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
T = 1776513600
BODY = b'{"event":"test","eventId":"evt_01JR8Q3Z5K7M9N2P4R6T8V0W1X"}'
V1 = "792907f1ff5cac546b3c70f706081a495809d6225d159b10592d672eb399d726"
HEADER = f"t={T},v1={V1}"


def test_contract_vector() -> None:
    assert sign_attesto(SECRET, T, BODY) == HEADER
    assert verify_attesto(HEADER, BODY, [SECRET], now_s=T) == T


@pytest.mark.parametrize(
    ("header", "secrets"),
    [
        pytest.param(HEADER, [SECRET], id="exact"),
        pytest.param(HEADER, [SECRET, OLD_SECRET], id="rotation-new-first"),
        pytest.param(HEADER, [OLD_SECRET, SECRET], id="rotation-old-first"),
        pytest.param(sign_attesto(OLD_SECRET, T, BODY), [SECRET, OLD_SECRET], id="old-secret"),
        pytest.param(f"t={T},v1={V1.upper()}", [SECRET], id="upper-hex"),
        pytest.param(f" t = {T} ,  v1={V1} ", [SECRET], id="spaces-around-pairs"),
        pytest.param(f"v1={V1},t={T}", [SECRET], id="reordered"),
        pytest.param(f"t={T},v1={V1},v0=abc,x=", [SECRET], id="unknown-keys-ignored"),
    ],
)
def test_accepts(header: str, secrets: list[str]) -> None:
    assert verify_attesto(header, BODY, secrets, now_s=T) == T


@pytest.mark.parametrize(
    ("header", "body", "secrets", "reason"),
    [
        pytest.param(None, BODY, [SECRET], "missing", id="missing"),
        pytest.param("", BODY, [SECRET], "missing", id="empty"),
        pytest.param("   ", BODY, [SECRET], "missing", id="blank"),
        pytest.param(HEADER, BODY + b" ", [SECRET], "mismatch", id="tampered-body"),
        pytest.param(HEADER, BODY, [OLD_SECRET], "mismatch", id="wrong-secret"),
        pytest.param(HEADER, BODY, [], "mismatch", id="no-secrets"),
        pytest.param(f"{HEADER},v1={V1}", BODY, [SECRET], "malformed", id="two-v1"),
        pytest.param(f"t={T},{HEADER}", BODY, [SECRET], "malformed", id="two-t"),
        pytest.param(f"v1={V1}", BODY, [SECRET], "malformed", id="no-t"),
        pytest.param(f"t={T}", BODY, [SECRET], "malformed", id="no-v1"),
        pytest.param(f"t=17765136OO,v1={V1}", BODY, [SECRET], "malformed", id="non-integer-t"),
        pytest.param(f"t={T}.0,v1={V1}", BODY, [SECRET], "malformed", id="float-t"),
        pytest.param(f"t=-{T},v1={V1}", BODY, [SECRET], "malformed", id="negative-t"),
        pytest.param(f"t={'9' * 5000},v1={V1}", BODY, [SECRET], "malformed", id="huge-t"),
        pytest.param(f"t={T},v1={'z' * 64}", BODY, [SECRET], "malformed", id="non-hex-v1"),
        pytest.param(f"t={T},v1={V1[:-2]}", BODY, [SECRET], "malformed", id="short-v1"),
        pytest.param(f"t={T},v1={V1}00", BODY, [SECRET], "malformed", id="long-v1"),
        pytest.param(f"t={T};v1={V1}", BODY, [SECRET], "malformed", id="semicolon"),
        pytest.param(V1, BODY, [SECRET], "malformed", id="bare-hex"),
    ],
)
def test_rejects(header: str | None, body: bytes, secrets: list[str], reason: str) -> None:
    with pytest.raises(AttestoSignatureError) as info:
        verify_attesto(header, body, secrets, now_s=T)
    assert info.value.reason == reason


@pytest.mark.parametrize(
    ("skew_s", "ok"),
    [(-301, False), (-300, True), (0, True), (300, True), (301, False)],
)
def test_replay_window(skew_s: int, ok: bool) -> None:
    t = T + skew_s  # the signature's t relative to now
    header = sign_attesto(SECRET, t, BODY)
    if ok:
        assert verify_attesto(header, BODY, [SECRET], now_s=T) == t
    else:
        with pytest.raises(AttestoSignatureError) as info:
            verify_attesto(header, BODY, [SECRET], now_s=T)
        assert info.value.reason == "stale"


def test_stale_is_checked_before_secret() -> None:
    header = sign_attesto(OLD_SECRET, T - 1000, BODY)
    with pytest.raises(AttestoSignatureError) as info:
        verify_attesto(header, BODY, [SECRET], now_s=T)
    assert info.value.reason == "stale"


_fragments = st.sampled_from(["t=", "v1=", ",", "=", " ", str(T), V1, V1.upper(), "\x00", "é"])


# Surrogates included: aiohttp decodes header bytes with surrogateescape.
_text = st.text(st.one_of(st.characters(), st.characters(categories=["Cs"])))


@given(st.one_of(_text, st.lists(st.one_of(_fragments, st.text(max_size=5))).map("".join)))
def test_arbitrary_header_raises_only_signature_error(header: str) -> None:
    try:
        verify_attesto(header, BODY, [SECRET], now_s=T)
    except AttestoSignatureError as exc:
        assert exc.reason in REASONS


@given(secret=st.text(min_size=1), body=st.binary(), t=st.integers(0, 2**40))
def test_sign_verify_round_trip(secret: str, body: bytes, t: int) -> None:
    header = sign_attesto(secret, t, body)
    assert verify_attesto(header, body, ["other", secret], now_s=t) == t


@given(t=st.integers(0, 10**15 - 1), v1=st.from_regex(r"[0-9a-fA-F]{64}", fullmatch=True),
       spaced=st.booleans())
def test_canonical_header_parses_as_the_general_form(t: int, v1: str, spaced: bool) -> None:
    from relay.attesto.signature import _parse

    canonical = f"t={t},v1={v1}"
    general = f" v1 = {v1} , t={t} " if spaced else f"v1={v1},t={t}"
    assert _parse(canonical) == _parse(general) == (t, v1.lower())


def test_one_secret_signs_many_bodies_independently() -> None:
    first = sign_attesto(SECRET, T, BODY)
    other = sign_attesto(SECRET, T, BODY + b" ")
    assert sign_attesto(SECRET, T, BODY) == first == HEADER and other != first
    assert verify_attesto(other, BODY + b" ", [SECRET], now_s=T) == T
