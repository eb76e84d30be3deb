"""normalizer: Attesto envelopes (built by the fake Attesto) → snapshots; bad envelopes → 400."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from relay.attesto.sim_records import unsigned_jws
from relay.attesto.simulator import AttestoSimulator
from relay.core.domain import State, parse_time_ms
from relay.core.errors import BadRequestError
from relay.core.normalizer import decode_jws_payload, normalize

NOW = 1_800_000_000_000
EXPIRES = NOW + 30 * 86_400_000


def doc(body: bytes) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(body)
    return value


def apple_sub(sim: AttestoSimulator, **kw: Any):  # type: ignore[no-untyped-def]
    values: dict[str, Any] = {"transaction_id": "2000000000000002",
                              "original_transaction_id": "2000000000000001",
                              "product_id": "com.example.premium", "expires_ms": EXPIRES,
                              "purchase_ms": NOW - 1000, "environment": "production",
                              "app_account_token": "11111111-2222-4333-8444-555555555555"}
    values.update(kw)
    return sim.add_apple(**values)


def test_apple_renewal_reads_the_transaction_and_renewal_info(sim: AttestoSimulator) -> None:
    txn = apple_sub(sim)
    n = normalize(doc(sim.apple_webhook("DID_RENEW", txn, signed_ms=NOW - 5,
                                        auto_renew=True)), NOW)
    s = n.snapshot
    assert s is not None
    assert (s.platform, s.subject_key, s.kind) == ("apple", "2000000000000001", "subscription")
    assert s.observed_ms == NOW - 5 and s.received_ms == NOW
    assert s.expires_ms == EXPIRES and s.latest_ref == "2000000000000002"
    assert s.environment == "production" and s.auto_renew is True
    assert s.state == State.ACTIVE and s.event_type == "subscription.renewed"
    assert s.app_user_id == "11111111-2222-4333-8444-555555555555"
    assert s.attesto_event_id == n.event_id and s.poll_now is False
    assert s.product_id == "com.example.premium"


def test_apple_renewal_info_off_means_not_renewing(sim: AttestoSimulator) -> None:
    txn = apple_sub(sim)
    n = normalize(doc(sim.apple_webhook("DID_RENEW", txn, signed_ms=NOW, auto_renew=False)),
                  NOW)
    assert n.snapshot is not None
    assert n.snapshot.state == State.ACTIVE_NOT_RENEWING and n.snapshot.auto_renew is False


def test_apple_revocation_and_expired_reason(sim: AttestoSimulator) -> None:
    txn = apple_sub(sim, revocation_ms=NOW - 10, revocation_reason=1)
    n = normalize(doc(sim.apple_webhook("REVOKE", txn, signed_ms=NOW)), NOW)
    assert n.snapshot is not None and n.snapshot.state == State.REVOKED
    txn = apple_sub(sim)
    n = normalize(doc(sim.apple_webhook("EXPIRED", txn, subtype="VOLUNTARY", signed_ms=NOW)),
                  NOW)
    assert n.snapshot is not None
    assert (n.snapshot.state, n.snapshot.state_reason) == (State.EXPIRED, "voluntary")


def test_apple_status_field_decides_a_keep_event(sim: AttestoSimulator) -> None:
    txn = apple_sub(sim)
    n = normalize(doc(sim.apple_webhook("PRICE_INCREASE", txn, signed_ms=NOW, status=4)), NOW)
    assert n.snapshot is not None and n.snapshot.state == State.GRACE


def test_apple_product(sim: AttestoSimulator) -> None:
    txn = apple_sub(sim, type="Non-Consumable", expires_ms=None, product_id="lifetime")
    n = normalize(doc(sim.apple_webhook("ONE_TIME_CHARGE", txn, signed_ms=NOW)), NOW)
    assert n.snapshot is not None
    assert (n.snapshot.kind, n.snapshot.state, n.snapshot.expires_ms) == ("product",
                                                                          State.OWNED, None)


def test_apple_unknown_keeps_identity_only(sim: AttestoSimulator) -> None:
    txn = apple_sub(sim)
    n = normalize(doc(sim.apple_webhook("DID_CHANGE_RENEWAL_STATUS", txn, signed_ms=NOW,
                                        auto_renew=False)), NOW)
    s = n.snapshot
    assert n.event == "unknown" and s is not None
    assert (s.state, s.expires_ms, s.auto_renew) == (None, None, None)
    assert s.latest_ref == "2000000000000002"  # identity, not state: the newest transaction
    assert s.subject_key == "2000000000000001" and s.event_type == "unknown"


def test_apple_test_has_no_subject(sim: AttestoSimulator) -> None:
    n = normalize(doc(sim.apple_webhook("TEST", None, signed_ms=NOW)), NOW)
    assert (n.event, n.snapshot, n.source, n.environment) == ("test", None, "apple", "sandbox")
    assert n.occurred_ms == NOW


def test_google_subscription_marks_a_re_verify(sim: AttestoSimulator) -> None:
    p = sim.add_google(token="current-token", product_id="premium_monthly",
                       account_id="11111111-2222-4333-8444-555555555555")
    n = normalize(doc(sim.google_webhook(3, p, event_time_ms=NOW - 7, root_token="root")), NOW)
    s = n.snapshot
    assert s is not None
    assert (s.platform, s.subject_key, s.latest_ref) == ("google", "root", "current-token")
    assert s.observed_ms == NOW - 7 and s.poll_now is True
    assert s.state == State.ACTIVE_NOT_RENEWING and s.auto_renew is False
    assert s.expires_ms is None and s.package_name == sim.package_name
    assert s.product_id == "premium_monthly" and s.app_user_id == p.account_id


def test_google_product_and_voided_and_test(sim: AttestoSimulator) -> None:
    p = sim.add_google(token="otp-token", product_id="coins", kind="product")
    n = normalize(doc(sim.google_webhook(1, p, event_time_ms=NOW, kind="product")), NOW)
    assert n.snapshot is not None
    assert (n.snapshot.kind, n.snapshot.state, n.snapshot.latest_ref) == ("product",
                                                                          State.OWNED,
                                                                          "otp-token")
    n = normalize(doc(sim.google_webhook(1, p, event_time_ms=NOW, kind="voided")), NOW)
    assert (n.snapshot, n.refund_token, n.event) == (None, "otp-token",
                                                     "subscription.refunded")
    n = normalize(doc(sim.google_webhook(None, None, event_time_ms=NOW)), NOW)
    assert (n.snapshot, n.refund_token, n.event) == (None, None, "test")


def test_garbage_inside_data_is_read_as_absent(sim: AttestoSimulator) -> None:
    txn = apple_sub(sim)
    d = doc(sim.apple_webhook("DID_RENEW", txn, signed_ms=NOW))
    d["data"]["data"]["signedTransactionInfo"] = "not.a-jws!.x"
    d["data"]["signedDate"] = "yesterday"
    n = normalize(d, NOW + 1)
    assert n.snapshot is not None
    assert n.snapshot.expires_ms is None and n.snapshot.latest_ref is None
    assert n.snapshot.observed_ms == parse_time_ms(d["timestamp"])  # Attesto receive time
    assert n.snapshot.state == State.ACTIVE


def test_missing_store_time_falls_back_to_attesto_receive_time(sim: AttestoSimulator) -> None:
    p = sim.add_google(token="tok", product_id="premium")
    d = doc(sim.google_webhook(2, p, event_time_ms=NOW))
    del d["data"]["eventTimeMillis"]
    d["timestamp"] = "2027-01-15T08:00:00.123Z"
    assert normalize(d, NOW + 99).occurred_ms == 1_800_000_000_123
    d["timestamp"] = "garbage"
    assert normalize(d, NOW + 99).occurred_ms == NOW + 99


@pytest.mark.parametrize("token", [
    None, 42, "", "a.b", "a.b.c.d", "x.!!!.y",
    "x." + base64.urlsafe_b64encode(b"[1,2]").decode().rstrip("=") + ".y",
    "x." + base64.urlsafe_b64encode(b"\xff\xfe").decode().rstrip("=") + ".y",
])
def test_decode_jws_payload_never_raises(token: Any) -> None:
    assert decode_jws_payload(token) == {}


def test_decode_jws_payload_reads_unpadded_base64url() -> None:
    assert decode_jws_payload(unsigned_jws({"a": "é?>"})) == {"a": "é?>"}


def _valid(sim: AttestoSimulator) -> dict[str, Any]:
    return doc(sim.apple_webhook("DID_RENEW", apple_sub(sim), signed_ms=NOW))


@pytest.mark.parametrize(("field", "value"), [
    ("eventId", None), ("eventId", ""), ("eventId", 7), ("eventId", "e" * 65),
    ("event", None), ("event", ["x"]), ("reason", 3), ("source", "amazon"),
    ("source", None), ("appUserId", 5), ("appUserId", "u" * 65), ("data", None),
    ("data", "text"), ("subject", "key"), ("subject", {"key": ""}),
    ("subject", {"key": 12}), ("subject", {"key": "k", "type": "bundle"}),
    ("subject", {"key": "k", "productId": 3}),
])
def test_malformed_envelopes_are_400(sim: AttestoSimulator, field: str, value: Any) -> None:
    d = _valid(sim)
    d[field] = value
    with pytest.raises(BadRequestError) as info:
        normalize(d, NOW)
    assert info.value.code == "invalid_envelope"
    assert info.value.details is not None
    assert info.value.details["field"].split(".")[0] == field


def _segment(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def test_a_deeply_nested_jws_payload_reads_as_absent() -> None:
    """RecursionError is not a ValueError: json.loads of 100,000 '[' must not escape."""
    deep = "h." + _segment(b"[" * 100_000 + b"]" * 100_000) + ".s"
    assert decode_jws_payload(deep) == {}


@pytest.mark.parametrize("value", ["\u00b2", "\u0663\u0663", "9" * 5000])
def test_a_number_int_cannot_read_is_absent(sim: AttestoSimulator, value: str) -> None:
    """`data.signedDate` that str.isdigit() accepts and int() refuses: the envelope time."""
    body = doc(sim.apple_webhook("DID_RENEW", apple_sub(sim), signed_ms=NOW - 5,
                                 auto_renew=True))
    body["data"]["signedDate"] = value
    n = normalize(body, NOW)
    assert n.snapshot is not None and n.snapshot.observed_ms == parse_time_ms(body["timestamp"])
