"""The ten defects of issue 15, one test each (each failed on main at 52d9077).

Every expectation comes from the stores' documentation, cited per test; the inputs are
built in the stores' shapes (tests/lifecycle/stores.py) and wrapped as Attesto does
(tests/lifecycle/attesto.py).
"""

from __future__ import annotations

import json

from relay.core.normalizer import normalize
from relay.intake import inbox
from relay.intake.inbox import Delivered, Inbound
from relay.web.appkeys import RUNTIME_KEY, SCHEDULER_KEY, STORE_KEY
from tests.lifecycle.attesto import google_envelope
from tests.lifecycle.harness import Relay
from tests.lifecycle.stores import (
    DAY_MS,
    apple_notification,
    apple_renewal,
    apple_transaction,
    play_subscription,
    rtdn_subscription,
    rtdn_voided,
)

P = "com.example.premium"
G = "premium_monthly"
HOUR = 3600


def _txn(life: Relay, tid: str, start: int, end: int, **kw: object) -> dict[str, object]:
    return apple_transaction(tid, "o1", P, start, end, **kw)  # type: ignore[arg-type]


async def _subscribe(life: Relay, *, expires_in_ms: int = DAY_MS) -> dict[str, object]:
    now = life.now_ms
    t1 = _txn(life, "t1", now - 29 * DAY_MS, now + expires_in_ms)
    await life.apple_webhook(apple_notification(
        "SUBSCRIBED", "INITIAL_BUY", uuid="n-sub", signed_ms=now, txn=t1,
        renewal=apple_renewal("o1", P, auto_renew=True, signed_ms=now), status=1))
    life.attesto.apple["t1"] = t1
    await life.verify_apple("u1", "t1")
    return t1


async def test_defect1_apple_billing_grace_lasts_until_grace_period_expires_date(
        life: Relay) -> None:
    """App Store Server Notifications V2 › notificationType DID_FAIL_TO_RENEW: "If the
    subtype is GRACE_PERIOD, continue to provide service through the grace period";
    JWSRenewalInfoDecodedPayload › gracePeriodExpiresDate: "the time when the billing
    grace period for a subscription renewal expires"; status 4 = billing grace period."""
    t1 = await _subscribe(life, expires_in_ms=HOUR * 1000)
    life.advance(HOUR + 60)
    grace_end = life.now_ms + 16 * DAY_MS
    await life.apple_webhook(apple_notification(
        "DID_FAIL_TO_RENEW", "GRACE_PERIOD", uuid="n-grace", signed_ms=life.now_ms, txn=t1,
        renewal=apple_renewal("o1", P, auto_renew=True, signed_ms=life.now_ms,
                              grace_expires_ms=grace_end, in_billing_retry=True), status=4))
    life.advance(3 * 86_400)  # well past the lapsed period and relay's own 24 h leeway
    assert await life.entitlements("u1") == ["premium"]
    await life.repoll()  # the re-poll must not expire a grace row before the grace end
    row = await life.row("apple", "o1")
    assert row is not None and row["state"] == "grace"
    assert await life.entitlements("u1") == ["premium"]
    life.advance((grace_end - life.now_ms) / 1000 + 120)
    assert await life.entitlements("u1") == []


async def test_defect2_apple_refund_of_an_older_transaction_keeps_the_current_period(
        life: Relay) -> None:
    """Notifications V2 › REFUND: "the App Store successfully refunded a transaction";
    the transaction is the one in signedTransactionInfo, here last month's (t1), while
    `data.status` 1 says the subscription is active (status: "1 The auto-renewable
    subscription is active")."""
    now = life.now_ms
    t1 = await _subscribe(life)
    t2 = _txn(life, "t2", now + DAY_MS, now + 31 * DAY_MS, renewal=True)
    life.advance(86_400 + 60)
    await life.apple_webhook(apple_notification(
        "DID_RENEW", None, uuid="n-renew", signed_ms=life.now_ms, txn=t2,
        renewal=apple_renewal("o1", P, auto_renew=True, signed_ms=life.now_ms), status=1))
    life.advance(5 * 86_400)
    refunded_t1 = dict(t1, revocationDate=life.now_ms, revocationReason=1)
    await life.apple_webhook(apple_notification(
        "REFUND", None, uuid="n-refund", signed_ms=life.now_ms, txn=refunded_t1,
        renewal=apple_renewal("o1", P, auto_renew=True, signed_ms=life.now_ms), status=1))
    row = await life.row("apple", "o1")
    assert row is not None
    assert (row["state"], row["expires_ms"], row["latest_ref"]) == (
        "active", now + 31 * DAY_MS, "t2")
    assert await life.entitlements("u1") == ["premium"]
    events = await life.new_events()
    assert events[-1]["type"] == "subscription.refunded"  # recorded and relayed
    assert events[-1]["state"] == "active"


async def test_defect3_apple_status_wins_over_the_event(life: Relay) -> None:
    """Notifications V2 › status: "The status of an auto-renewable subscription as of the
    signedDate": 3 billing retry (no service: DID_FAIL_TO_RENEW without subtype "you can
    stop providing the subscription service"), 4 billing grace period (service continues)."""
    t1 = await _subscribe(life, expires_in_ms=HOUR * 1000)
    life.advance(HOUR + 60)
    now = life.now_ms
    await life.apple_webhook(apple_notification(
        "DID_FAIL_TO_RENEW", None, uuid="n-fail", signed_ms=now, txn=t1,
        renewal=apple_renewal("o1", P, auto_renew=True, signed_ms=now,
                              in_billing_retry=True), status=3))
    life.advance(60)
    await life.apple_webhook(apple_notification(
        "DID_CHANGE_RENEWAL_STATUS", "AUTO_RENEW_ENABLED", uuid="n-on", signed_ms=life.now_ms,
        txn=t1, renewal=apple_renewal("o1", P, auto_renew=True, signed_ms=life.now_ms,
                                      in_billing_retry=True), status=3))
    row = await life.row("apple", "o1")
    assert row is not None and row["state"] == "billing_retry"
    assert await life.entitlements("u1") == []


async def test_defect3_auto_renew_disabled_in_grace_keeps_access(life: Relay) -> None:
    """Notifications V2 › status 4 "billing grace period": service continues until
    gracePeriodExpiresDate, whatever autoRenewStatus says."""
    t1 = await _subscribe(life, expires_in_ms=HOUR * 1000)
    life.advance(HOUR + 60)
    grace_end = life.now_ms + 16 * DAY_MS
    for uuid, ntype, subtype, renew in (("g1", "DID_FAIL_TO_RENEW", "GRACE_PERIOD", True),
                                        ("g2", "DID_CHANGE_RENEWAL_STATUS",
                                         "AUTO_RENEW_DISABLED", False)):
        await life.apple_webhook(apple_notification(
            ntype, subtype, uuid=uuid, signed_ms=life.now_ms, txn=t1,
            renewal=apple_renewal("o1", P, auto_renew=renew, signed_ms=life.now_ms,
                                  grace_expires_ms=grace_end, in_billing_retry=True),
            status=4))
        life.advance(60)
    life.advance(2 * 86_400)
    row = await life.row("apple", "o1")
    assert row is not None and row["state"] == "grace"
    assert await life.entitlements("u1") == ["premium"]


async def test_defect3_refund_with_status_active_leaves_the_subscription_active(
        life: Relay) -> None:
    """Notifications V2 › status 1: the subscription is active as of signedDate; a REFUND
    that comes with it does not end the subscription."""
    t1 = await _subscribe(life)
    life.advance(60)
    await life.apple_webhook(apple_notification(
        "REFUND", None, uuid="n-r", signed_ms=life.now_ms,
        txn=dict(t1, revocationDate=life.now_ms, revocationReason=1),
        renewal=apple_renewal("o1", P, auto_renew=True, signed_ms=life.now_ms), status=1))
    row = await life.row("apple", "o1")
    assert row is not None and row["state"] == "active"
    assert await life.entitlements("u1") == ["premium"]


async def _google_purchase(life: Relay, token: str = "tokA") -> None:
    now = life.now_ms
    life.attesto.google[token] = (play_subscription(
        "SUBSCRIPTION_STATE_ACTIVE", product=G, expiry_ms=now + 30 * DAY_MS, start_ms=now,
        order_id="GPA.1111-2222-3333-44444"), G)
    await life.google_webhook(rtdn_subscription(4, token, G, now), root=token)
    await life.verify_google("u1", token, G)


async def test_defect4_google_void_of_an_old_order_re_verifies_and_keeps_access(
        life: Relay) -> None:
    """RTDN reference › VoidedPurchaseNotification: `orderId` names the voided order (a
    renewal order ends in ..N); `refundType` 2 is a quantity-based partial refund.
    subscriptionsv2.get is "the source of truth" (Subscription lifecycle): it still says
    SUBSCRIPTION_STATE_ACTIVE, so access stays; the void is recorded and relayed."""
    await _google_purchase(life)
    await life.new_events()
    life.attesto.calls.clear()
    life.advance(60)
    for refund_type in (1, 2):
        await life.google_webhook(rtdn_voided("tokA", "GPA.1111-2222-3333-44444..0",
                                              life.now_ms, refund_type=refund_type), root=None)
        events = await life.new_events()
        assert [e["type"] for e in events] == ["subscription.refunded"]
        assert events[0]["subject_key"] == "tokA"
        await life.repoll()
        assert ("google", "tokA") in life.attesto.calls
        row = await life.row("google", "tokA")
        assert row is not None and row["state"] == "active"
        assert await life.entitlements("u1") == ["premium"]


async def test_defect5_late_notification_about_a_replaced_token_changes_nothing(
        life: Relay) -> None:
    """RTDN / subscriptionsv2 › linkedPurchaseToken: an upgrade gives a new token linked to
    the old one; the old token is replaced (canceledStateContext.replacementCancellation).
    Only the current token's state may set the row."""
    await _google_purchase(life)
    life.advance(60)
    now = life.now_ms
    life.attesto.google["tokB"] = (play_subscription(
        "SUBSCRIPTION_STATE_ACTIVE", product="pro_monthly", expiry_ms=now + 30 * DAY_MS,
        start_ms=now, linked="tokA", order_id="GPA.5555-6666-7777-88888"), "pro_monthly")
    life.attesto.google["tokA"] = (play_subscription(
        "SUBSCRIPTION_STATE_EXPIRED", product=G, expiry_ms=now, start_ms=now - DAY_MS,
        replaced=True), G)
    await life.google_webhook(rtdn_subscription(4, "tokB", "pro_monthly", now), root="tokA")
    await life.repoll()
    life.advance(60)
    await life.google_webhook(rtdn_subscription(13, "tokA", G, life.now_ms), root="tokA")
    await life.repoll()
    row = await life.row("google", "tokA")
    assert row is not None
    assert (row["latest_ref"], row["state"], row["product_id"]) == (
        "tokB", "active", "pro_monthly")
    assert await life.entitlements("u1") == ["premium", "pro"]


async def test_defect5_re_poll_of_the_root_token_racing_an_upgrade(life: Relay) -> None:
    """The re-poll of token A is in flight when the upgrade's webhook (token B) commits;
    A's answer (replaced) must not set the row that B now owns."""
    await _google_purchase(life)
    life.advance(60)
    now = life.now_ms
    life.attesto.google["tokB"] = (play_subscription(
        "SUBSCRIPTION_STATE_ACTIVE", product="pro_monthly", expiry_ms=now + 30 * DAY_MS,
        start_ms=now, linked="tokA"), "pro_monthly")
    life.attesto.google["tokA"] = (play_subscription(
        "SUBSCRIPTION_STATE_EXPIRED", product=G, expiry_ms=now, start_ms=now - DAY_MS,
        replaced=True), G)
    upgrade = rtdn_subscription(4, "tokB", "pro_monthly", now)

    async def racing(platform: str, ref: str) -> None:
        if ref == "tokA":  # Play answers for A only after the upgrade webhook is stored
            life.attesto.before_answer = None
            await life.google_webhook(upgrade, root="tokA")

    life.attesto.before_answer = racing
    # make the row due now and poll it
    def due() -> None:
        from relay.store.models import Purchase
        Purchase.update(next_poll_ms=0).execute()
    await life.client.app[STORE_KEY].write(due)
    await life.repoll()
    row = await life.row("google", "tokA")
    assert row is not None and row["latest_ref"] == "tokB" and row["state"] == "active"
    assert await life.entitlements("u1") == ["premium", "pro"]


async def test_defect6_environment_filtered_endpoint_gets_google_events(life: Relay) -> None:
    """RTDN notifications carry no environment; subscriptionsv2 › testPurchase is "only
    present if this subscription purchase is a test purchase": production here. The
    `prod` endpoint must get the purchase event; the `sandbox` one must not."""
    now = life.now_ms
    life.attesto.google["tokP"] = (play_subscription(
        "SUBSCRIPTION_STATE_ACTIVE", product=G, expiry_ms=now + 30 * DAY_MS, start_ms=now), G)
    await life.google_webhook(rtdn_subscription(4, "tokP", G, now), root="tokP")
    await life.repoll()
    events = await life.new_events()
    purchased = [e for e in events if e["type"] == "subscription.purchased"]
    assert purchased and purchased[0]["_endpoints"] == ["all", "prod"]


async def test_defect7_inbox_pruning_keeps_the_dedupe_key(life: Relay) -> None:
    """attesto-contract §4.3/§4.4: a delivery is retried for ~7 h with the same eventId;
    relay must apply it once whatever its retention settings."""
    runtime = life.client.app[RUNTIME_KEY]
    import dataclasses
    cfg = runtime.config
    # Every retention as short as it goes: [scheduler] retention_s (what relay before
    # issue 15 pruned the inbox by) and [input_log] retention_s (what prunes bodies now).
    short = {"input_log": dataclasses.replace(cfg.input_log, retention_s=60)} \
        if hasattr(cfg, "input_log") else {}
    runtime.replace(dataclasses.replace(
        cfg, scheduler=dataclasses.replace(cfg.scheduler, retention_s=60), **short))
    now = life.now_ms
    note = rtdn_subscription(4, "tokD", G, now)
    body = google_envelope(note, event_id="evt_01DEDUPE0000000000000000", received_ms=now,
                           root_token="tokD")
    assert (await life.post(body))["status"] == "accepted"
    life.advance(2 * HOUR)
    await life.client.app[SCHEDULER_KEY].housekeeping_tick()
    assert (await life.post(body))["status"] == "duplicate"


async def test_defect8_first_sight_reflects_the_store_answer(life: Relay) -> None:
    """App Store Server API › JWSTransactionDecodedPayload: `expiresDate` "the UNIX time
    ... the subscription expires or renews" (here five days ago) and `revocationDate`
    "the App Store refunded the transaction or revoked it from Family Sharing"."""
    now = life.now_ms
    life.attesto.apple["x1"] = apple_transaction("x1", "ox1", P, now - 35 * DAY_MS,
                                                 now - 5 * DAY_MS)
    life.attesto.apple["r1"] = apple_transaction("r1", "or1", P, now - DAY_MS,
                                                 now + 29 * DAY_MS, revocation_ms=now - 60_000)
    await life.verify_apple("u8", "x1")
    await life.verify_apple("u8", "r1")
    rows = [await life.row("apple", k) for k in ("ox1", "or1")]
    assert [r["state"] for r in rows if r] == ["expired", "refunded"]
    events = await life.new_events()
    assert [(e["type"], e["state"]) for e in events] == [
        ("subscription.expired", "expired"), ("subscription.refunded", "refunded")]
    assert await life.entitlements("u8") == []


async def test_defect9_a_later_verify_relays_the_user(life: Relay) -> None:
    """attesto-contract §6: a webhook often arrives before any verify (user unknown); the
    verify that binds the purchase to a user must tell downstream which user."""
    now = life.now_ms
    t1 = apple_transaction("b1", "ob1", P, now, now + 30 * DAY_MS)
    life.attesto.apple["b1"] = t1
    await life.apple_webhook(apple_notification(
        "SUBSCRIBED", "INITIAL_BUY", uuid="n-b", signed_ms=now, txn=t1,
        renewal=apple_renewal("ob1", P, auto_renew=True, signed_ms=now), status=1))
    first = await life.new_events()
    assert first[0]["user_id"] is None
    await life.verify_apple("u9", "b1")
    events = await life.new_events()
    assert [(e["type"], e["user_id"]) for e in events] == [("subscription.user_bound", "u9")]


async def test_defect10_void_and_its_purchase_in_one_group(life: Relay) -> None:
    """Items of one group commit see the items before them: the void names the purchase
    stored by the item just before it."""
    now = life.now_ms
    runtime = life.client.app[RUNTIME_KEY]
    bodies = [google_envelope(rtdn_subscription(4, "tokG", G, now), event_id="evt_01G1" + "0" * 22,
                              received_ms=now, root_token="tokG"),
              google_envelope(rtdn_voided("tokG", "GPA.9", now + 1), event_id="evt_01G2" + "0" * 22,
                              received_ms=now, root_token=None)]
    items = [Delivered(Inbound(json.loads(b)["eventId"], json.loads(b)["event"], now, now // 1000,
                               "{}", b), normalize(json.loads(b), now), runtime.rules, now)
             for b in bodies]
    outcomes = await life.client.app[STORE_KEY].write(lambda: inbox.ingest_many(items))
    void = outcomes[1].events[0]
    assert void.subject_key == "tokG"
