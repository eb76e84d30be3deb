"""Attesto verify answers → snapshots, and what a verify may change on a stored row (pure)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from relay.attesto.sim_records import AppleTransaction
from relay.attesto.simulator import AttestoSimulator
from relay.core.domain import PurchaseView, State
from relay.core.verify_snapshot import (
    AttestoResponseError,
    apple_snapshot,
    google_snapshot,
    reconcile_apple,
    reconcile_google,
)

NOW = 1_800_000_000_000
DAY = 86_400_000


def apple_body(txn: AppleTransaction) -> dict[str, Any]:
    return {"valid": True, "environment": txn.environment, "transaction": txn.normalized(),
            "appUserId": txn.app_account_token, "version": "sim"}


def txn(**kw: Any) -> AppleTransaction:
    base: dict[str, Any] = dict(transaction_id="t2", original_transaction_id="o1",
                                product_id="premium.monthly", expires_ms=NOW + 20 * DAY,
                                purchase_ms=NOW - 10 * DAY, signed_ms=NOW,
                                app_account_token="11111111-2222-4333-8444-555555555555")
    return AttestoSimulator().add_apple(**{**base, **kw})


def google_body(state: str = "SUBSCRIPTION_STATE_ACTIVE", **raw: Any) -> dict[str, Any]:
    line = {"productId": "premium", "expiryTime": "2027-01-15T08:00:00.123456789Z",
            "autoRenewingPlan": {"autoRenewEnabled": True},
            "offerDetails": {"basePlanId": "monthly"}}
    response = {"subscriptionState": state, "lineItems": [line], "testPurchase": {}, **raw}
    return {"valid": True, "purchase": {
        "kind": "androidpublisher#subscriptionPurchaseV2", "packageName": "com.example.app",
        "productId": "ignored-for-subs", "purchaseToken": "tok-2", "expiryTime": None,
        "rawResponse": response}, "appUserId": "u-uuid", "version": "sim"}


def stored(snap_state: str = "active", expires: int | None = NOW + 20 * DAY,
           store_time: int = NOW - 5 * DAY, kind: str = "subscription",
           latest_ref: str | None = "t2") -> PurchaseView:
    return PurchaseView(platform="apple", subject_key="o1", kind=kind, user_id="u1",
                        app_user_id=None, product_id="premium.monthly", base_plan_id=None,
                        state=snap_state, state_reason=None, environment="sandbox",
                        expires_ms=expires, auto_renew=False, latest_ref=latest_ref,
                        package_name=None, store_time_ms=store_time, sequence=3,
                        created_ms=0, updated_ms=0)


def test_apple_subscription_snapshot() -> None:
    snap = apple_snapshot(apple_body(txn()), "user-1", NOW)
    assert (snap.platform, snap.subject_key, snap.latest_ref) == ("apple", "o1", "t2")
    assert (snap.kind, snap.state, snap.product_id) == ("subscription", State.ACTIVE,
                                                        "premium.monthly")
    assert snap.expires_ms == NOW + 20 * DAY and snap.environment == "sandbox"
    assert snap.observed_ms == NOW - 10 * DAY  # the transaction's own time, not signedDate
    assert snap.app_user_id == "11111111-2222-4333-8444-555555555555"
    assert snap.user_id == "user-1" and snap.auto_renew is None


def test_apple_refund_and_products() -> None:
    refunded = apple_snapshot(apple_body(txn(revocation_ms=NOW - DAY)), "u", NOW)
    assert refunded.state == State.REFUNDED and refunded.observed_ms == NOW - DAY
    for kind in ("Consumable", "Non-Consumable"):
        snap = apple_snapshot(apple_body(txn(type=kind, expires_ms=None)), "u", NOW)
        assert (snap.kind, snap.state, snap.expires_ms) == ("product", State.OWNED, None)
    nonrenewing = apple_snapshot(apple_body(txn(type="Non-Renewing Subscription")), "u", NOW)
    assert nonrenewing.kind == "subscription"


@pytest.mark.parametrize("mutate", [
    lambda b: b.pop("transaction"),
    lambda b: b["transaction"].pop("originalTransactionId"),
    lambda b: b["transaction"].update(productId=7),
    lambda b: b["transaction"]["rawDecodedPayload"].update(expiresDate="soon"),
])
def test_malformed_apple_answers_raise(mutate: Any) -> None:
    body = apple_body(txn())
    mutate(body)
    with pytest.raises(AttestoResponseError):
        apple_snapshot(body, "u", NOW)


@pytest.mark.parametrize(("state", "auto_renew", "expected"), [
    ("SUBSCRIPTION_STATE_ACTIVE", True, State.ACTIVE),
    ("SUBSCRIPTION_STATE_ACTIVE", False, State.ACTIVE_NOT_RENEWING),
    ("SUBSCRIPTION_STATE_IN_GRACE_PERIOD", True, State.GRACE),
    ("SUBSCRIPTION_STATE_ON_HOLD", True, State.ON_HOLD),
    ("SUBSCRIPTION_STATE_PAUSED", True, State.PAUSED),
    ("SUBSCRIPTION_STATE_EXPIRED", False, State.EXPIRED),
    ("SUBSCRIPTION_STATE_PENDING", True, State.PENDING),
    ("SUBSCRIPTION_STATE_PENDING_PURCHASE_CANCELED", False, State.EXPIRED),
    ("SUBSCRIPTION_STATE_CANCELED", False, State.ACTIVE_NOT_RENEWING),
    ("SUBSCRIPTION_STATE_UNSPECIFIED", True, None),
])
def test_google_subscription_states(state: str, auto_renew: bool,
                                    expected: State | None) -> None:
    body = google_body(state)
    body["purchase"]["rawResponse"]["lineItems"][0]["autoRenewingPlan"] = {
        "autoRenewEnabled": auto_renew}
    snap, linked = google_snapshot(body, "tok-2", "u", NOW)
    assert snap.state == expected and linked is None
    assert (snap.subject_key, snap.latest_ref, snap.kind) == ("tok-2", "tok-2", "subscription")
    assert (snap.product_id, snap.base_plan_id) == ("premium", "monthly")
    assert snap.expires_ms == NOW + 123  # nanoseconds truncated to ms
    assert snap.environment == "sandbox" and snap.app_user_id == "u-uuid"
    assert snap.observed_ms == NOW  # Google verify sees the live state


def test_google_canceled_past_expiry_is_expired_and_linked_token_is_returned() -> None:
    body = google_body("SUBSCRIPTION_STATE_CANCELED", linkedPurchaseToken="tok-1")
    snap, linked = google_snapshot(body, "tok-2", "u", NOW + 400 * DAY)
    assert snap.state == State.EXPIRED and snap.state_reason == "canceled"
    assert linked == "tok-1"
    body["purchase"]["rawResponse"].pop("testPurchase")
    assert google_snapshot(body, "tok-2", "u", NOW)[0].environment == "production"


@pytest.mark.parametrize(("purchase_state", "consumed", "expected"), [
    (0, 0, State.OWNED), (0, 1, State.CONSUMED), (1, 0, State.REFUNDED), (2, 0, State.PENDING)])
def test_google_products(purchase_state: int, consumed: int, expected: State) -> None:
    body = {"valid": True, "purchase": {
        "kind": "androidpublisher#productPurchase", "packageName": "com.example.app",
        "productId": "coins_100", "purchaseToken": "ptok", "purchaseState": purchase_state,
        "consumptionState": consumed, "rawResponse": {"purchaseType": 0}}, "appUserId": None}
    snap, linked = google_snapshot(body, "ptok", "u", NOW)
    assert (snap.kind, snap.state, snap.product_id, linked) == ("product", expected,
                                                               "coins_100", None)


def test_reconcile_apple_first_sight_newer_period_and_refund() -> None:
    snap = apple_snapshot(apple_body(txn()), "u", NOW)
    assert reconcile_apple(snap, None) == snap
    # A later period than the stored one wins even over a later-stored state.
    older = stored(expires=NOW - 10 * DAY, store_time=NOW, snap_state="expired")
    newer = reconcile_apple(snap, older)
    assert newer.state == State.ACTIVE and newer.observed_ms == NOW + 1
    # A refund of the stored period is final.
    refund = apple_snapshot(apple_body(txn(revocation_ms=NOW - DAY)), "u", NOW)
    got = reconcile_apple(refund, stored(store_time=NOW + 5))
    assert got.state == State.REFUNDED and got.observed_ms == NOW + 6


@pytest.mark.parametrize("row", [
    stored(),  # same period, a webhook knows more (renewal status, billing state)
    stored(expires=NOW + 50 * DAY),  # the row already knows a later period
    stored(snap_state="refunded"),  # refunded already
    stored(kind="product", expires=None),  # a product re-verified
])
def test_reconcile_apple_identity_only(row: PurchaseView) -> None:
    snap = apple_snapshot(apple_body(txn()), "u", NOW)
    got = reconcile_apple(snap, row)
    assert (got.state, got.expires_ms, got.auto_renew, got.latest_ref) == (None, None, None,
                                                                          None)
    assert got.user_id == "u" and got.app_user_id == snap.app_user_id
    assert got.observed_ms == row.store_time_ms and got.kind is None
    assert got.product_id is None  # the row has one: an older transaction's must not win


def test_reconcile_google() -> None:
    snap, _ = google_snapshot(google_body(), "tok-2", "u", NOW)
    row = replace(stored(), platform="google", subject_key="tok-1")
    assert reconcile_google(snap, row, current=True) == snap
    assert reconcile_google(snap, None, current=False) == snap
    old = reconcile_google(snap, row, current=False)
    assert old.state is None and old.observed_ms == row.store_time_ms
    assert old.base_plan_id == "monthly"  # the row has none: filled in
