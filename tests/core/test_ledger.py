"""What relay reads about a paid transaction from the stores' payloads (core/ledger.py),
checked against payloads built from the stores' own models (tests/lifecycle/stores.py).

Apple (App Store Server API › JWSTransactionDecodedPayload): `transactionId` identifies
one purchase or renewal, `price` is milli-units (attesto-contract §2.1: 9990 = 9.99),
`revocationDate` "the date that the App Store refunded the transaction or revoked it from
Family Sharing", `inAppOwnershipType` PURCHASED or FAMILY_SHARED.
Google (androidpublisher v3): `lineItems[].latestSuccessfulOrderId` "the order id of the
latest successful order associated with this item"; RTDN VoidedPurchaseNotification
`refundType` 1 full refund, 2 quantity-based partial refund ("applicable only to
multi-quantity purchases").
"""

from __future__ import annotations

import pytest

from relay.core.domain import EntitlementPolicy, PurchaseView, TxnFact, access_rule
from relay.core.ledger import (
    LedgerEntry,
    apple_fact,
    change_events,
    google_facts,
    void_fact,
    with_period_start,
)
from relay.core.rules import Route
from tests.lifecycle.stores import DAY_MS, apple_transaction, play_subscription

T0 = 1_800_000_000_000


def test_an_apple_transaction_is_one_row_with_its_period_and_price() -> None:
    txn = apple_transaction("2000000002", "2000000000", "com.example.premium",
                            T0, T0 + 30 * DAY_MS, renewal=True)
    fact = apple_fact(txn, T0 + 5)
    assert fact == TxnFact(
        transaction_id="2000000002", product_id="com.example.premium", period_start_ms=T0,
        period_end_ms=T0 + 30 * DAY_MS, price_micros=9_990_000, currency="USD",
        ownership="purchased", observed_ms=T0 + 5)


def test_an_apple_revocation_is_a_refund_unless_family_shared_or_a_revoke() -> None:
    refunded = apple_transaction("t", "o", "p", T0, T0 + DAY_MS, revocation_ms=T0 + 9)
    fact = apple_fact(refunded, T0 + 10)
    assert fact is not None and (fact.refunded_ms, fact.revoked_ms) == (T0 + 9, None)
    shared = apple_transaction("t", "o", "p", T0, T0 + DAY_MS, revocation_ms=T0 + 9,
                               family_shared=True)
    fact = apple_fact(shared, T0 + 10)
    assert fact is not None and (fact.refunded_ms, fact.revoked_ms, fact.ownership) == (
        None, T0 + 9, "family_shared")
    fact = apple_fact(refunded, T0 + 10, revoke=True)
    assert fact is not None and (fact.refunded_ms, fact.revoked_ms) == (None, T0 + 9)


def test_a_verify_answer_reads_the_same_as_the_notification() -> None:
    """Attesto's verify answer: ISO dates in `transaction`, ms in `rawDecodedPayload`."""
    from tests.lifecycle.attesto import apple_verify_answer

    txn = apple_transaction("t2", "o", "p", T0, T0 + DAY_MS, revocation_ms=T0 + 7)
    answer = apple_verify_answer(txn)["transaction"]
    merged = {**answer, **answer["rawDecodedPayload"]}
    assert apple_fact(merged, T0 + 99) == apple_fact(txn, T0 + 99)
    del answer["rawDecodedPayload"]  # the envelope alone: the same facts from its ISO dates
    assert apple_fact(answer, T0 + 99) == apple_fact(txn, T0 + 99)


def test_google_orders_come_from_the_line_items_and_only_paid_periods_end() -> None:
    sub = play_subscription("SUBSCRIPTION_STATE_ACTIVE", product="premium_monthly",
                            start_ms=T0, expiry_ms=T0 + 30 * DAY_MS,
                            order_id="GPA.1111-2222-3333-44444")
    purchase = {"productId": "premium_monthly", "orderId": None}
    [first] = google_facts(purchase, sub, paid=True)
    assert (first.transaction_id, first.period_start_ms, first.period_end_ms,
            first.observed_ms) == ("GPA.1111-2222-3333-44444", T0, T0 + 30 * DAY_MS, 0)
    grace = play_subscription("SUBSCRIPTION_STATE_IN_GRACE_PERIOD",
                              product="premium_monthly", start_ms=T0,
                              expiry_ms=T0 + 33 * DAY_MS,
                              order_id="GPA.1111-2222-3333-44444..0")
    [renewal] = google_facts(purchase, grace, paid=False)
    # The renewal order: no start of its own; in grace the expiry is not what it bought.
    assert (renewal.transaction_id, renewal.period_start_ms, renewal.period_end_ms) == (
        "GPA.1111-2222-3333-44444..0", None, None)


def test_attestos_latest_order_id_counts_only_while_paid_up() -> None:
    """`latestOrderId` may name a declined or pending renewal order (its deprecation note)."""
    sub = {"lineItems": [{"productId": "p"}], "startTime": "2027-01-15T08:00:00Z"}
    purchase = {"productId": "p", "orderId": "GPA.9..3", "expiryTime": None}
    assert [f.transaction_id for f in google_facts(purchase, sub, paid=True)] == ["GPA.9..3"]
    assert google_facts(purchase, sub, paid=False) == ()


def test_a_renewal_order_starts_where_the_purchase_period_ended() -> None:
    before = PurchaseView("google", "tok", "subscription", None, None, "p", None, "active",
                          None, None, T0 + 30 * DAY_MS, True, "tok", None, T0, 1, T0, T0)
    fact = TxnFact("GPA.1..0", period_end_ms=T0 + 60 * DAY_MS)
    assert with_period_start(fact, before).period_start_ms == T0 + 30 * DAY_MS
    same = TxnFact("GPA.1..0", period_end_ms=T0 + 30 * DAY_MS)  # not a new period
    assert with_period_start(same, before).period_start_ms is None


@pytest.mark.parametrize(("refund_type", "refunded"), [(1, True), (None, True), (2, False)])
def test_a_void_refunds_its_order_unless_partial(refund_type: int | None,
                                                 refunded: bool) -> None:
    fact = void_fact("GPA.1..4", refund_type, T0)
    assert fact is not None and fact.transaction_id == "GPA.1..4"
    assert (fact.refunded_ms is not None, fact.observed_ms > 0) == (refunded, refunded)
    assert void_fact(None, 1, T0) is None


def _entry(**kw: object) -> LedgerEntry:
    base: dict[str, object] = dict(
        cursor=7, platform="apple", transaction_id="t", subject_key="o", user_id="u",
        product_id="p", environment="production", ownership="purchased",
        period_start_ms=T0, period_end_ms=None, price_micros=9_990_000, currency="USD",
        refunded_ms=None, revoked_ms=None, observed_ms=T0, created_ms=T0, updated_ms=T0,
        version=1, change="recorded")
    base.update(kw)
    return LedgerEntry(**base)  # type: ignore[arg-type]


def test_the_row_json_and_the_events_a_change_relays() -> None:
    row = _entry().to_json()
    assert (row["cursor"], row["price"], row["price_micros"], row["period_start"]) == (
        "7", "9.99", 9_990_000, "2027-01-15T08:00:00.000Z")
    assert _entry(price_micros=1_000_000).to_json()["price"] == "1"
    assert change_events(_entry()) == [("transaction.recorded", 1)]
    assert change_events(_entry(refunded_ms=T0, version=2)) == [
        ("transaction.recorded", 1), ("transaction.refunded", 2)]
    assert change_events(_entry(change="refunded", refunded_ms=T0, version=3)) == [
        ("transaction.refunded", 3)]
    assert change_events(_entry(change="user_bound")) == []


@pytest.mark.parametrize(("events", "takes"), [
    (("*",), False), (("*.refunded",), False), (("transaction.*",), True),
    (("transaction.refunded",), True), (("subscription.*", "transaction.*"), True)])
def test_transaction_events_are_opt_in(events: tuple[str, ...], takes: bool) -> None:
    route = Route("x", events=events)
    assert route.matches_event("transaction.refunded", "apple") is takes
    # other families as before
    assert route.matches_event("subscription.refunded", "apple") is (
        "*" in events or "*.refunded" in events or "subscription.*" in events)


@pytest.mark.parametrize(("state", "auto_renew", "grace_end", "pending", "rule", "extra_s"), [
    ("active", True, None, False, "renewal_grace", 86_400),
    ("active", False, None, False, "clock_leeway", 60),
    ("active_not_renewing", None, None, False, "clock_leeway", 60),
    ("grace", True, T0 + 10 * DAY_MS, False, "grace_end", None),
    ("grace", True, None, False, "grace_end_unknown", 86_400),
    ("active", True, None, True, "period_pending", 86_400)])
def test_access_rule_names_the_rule_behind_access_until(
        state: str, auto_renew: bool | None, grace_end: int | None, pending: bool,
        rule: str, extra_s: int | None) -> None:
    p = PurchaseView("apple", "o", "subscription", None, None, "p", None, state, None, None,
                     T0, auto_renew, "t", None, T0 - 1, 1, T0, T0, period_pending=pending,
                     grace_expires_ms=grace_end)
    until, name = access_rule(p, EntitlementPolicy())
    assert name == rule
    assert until == (grace_end + 60_000 if extra_s is None else T0 + extra_s * 1000)
