"""Every §5.2 event through the receiver: the state it leaves, the event relayed, the access.

Each case starts from an active purchase (one earlier delivery), then delivers the event
under test with a later store time, as the fake Attesto would send it.
"""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any

import pytest

from relay.attesto.sim_records import AppleTransaction, GooglePurchase
from relay.attesto.simulator import AttestoSimulator
from relay.store.models import AppUser, Purchase
from relay.web.appkeys import STORE_KEY
from tests.conftest import Clock, RelayFactory
from tests.support.webhooks import (
    BILLING,
    ENTITLEMENTS,
    Client,
    counted,
    counts,
    events,
    post,
    purchase,
)

NOW_S = 1_800_000_000
NOW_MS = NOW_S * 1000
EXPIRES = NOW_MS + 20 * 86_400_000
UUID = "11111111-2222-4333-8444-555555555555"
ON = ["premium"]
OFF: list[str] = []


async def start(relay_factory: RelayFactory) -> Client:
    client: Client = await relay_factory(
        use_clock=True, downstream=(BILLING,),
        entitlements=types.MappingProxyType(ENTITLEMENTS))
    return client


def apple_txn(sim: AttestoSimulator, tid: str = "t1", **kw: Any) -> AppleTransaction:
    values: dict[str, Any] = {"transaction_id": tid, "original_transaction_id": "o1",
                              "product_id": "com.example.premium", "expires_ms": EXPIRES,
                              "purchase_ms": NOW_MS - 86_400_000,
                              "environment": "production", "app_account_token": UUID}
    values.update(kw)
    return sim.add_apple(**values)


# (notificationType, subtype) -> (event relayed, state after, entitlements after)
APPLE_CASES: dict[tuple[str, str | None], tuple[str, str, list[str]]] = {
    ("SUBSCRIBED", None): ("subscription.purchased", "active", ON),
    ("SUBSCRIBED", "RESUBSCRIBE"): ("subscription.purchased", "active", ON),
    ("SUBSCRIBED", "UPGRADE"): ("subscription.upgraded", "active", ON),
    ("SUBSCRIBED", "DOWNGRADE"): ("subscription.downgraded", "active", ON),
    ("DID_RENEW", None): ("subscription.renewed", "active", ON),
    ("DID_RENEW", "BILLING_RECOVERY"): ("subscription.recovered", "active", ON),
    ("DID_CHANGE_RENEWAL_STATUS", "AUTO_RENEW_DISABLED"): (
        "subscription.cancellation_scheduled", "active_not_renewing", ON),
    ("DID_CHANGE_RENEWAL_STATUS", "AUTO_RENEW_ENABLED"): (
        "subscription.cancellation_revoked", "active", ON),
    ("EXPIRED", None): ("subscription.expired", "expired", OFF),
    ("EXPIRED", "VOLUNTARY"): ("subscription.expired", "expired", OFF),
    ("EXPIRED", "BILLING_RETRY"): ("subscription.expired", "expired", OFF),
    ("EXPIRED", "PRODUCT_NOT_FOR_SALE"): ("subscription.expired", "expired", OFF),
    ("REVOKE", None): ("subscription.revoked", "revoked", OFF),
    ("REFUND", None): ("subscription.refunded", "refunded", OFF),
    ("DID_FAIL_TO_RENEW", None): ("subscription.in_billing_retry", "billing_retry", OFF),
    ("DID_FAIL_TO_RENEW", "GRACE_PERIOD"): ("subscription.in_grace_period", "grace", ON),
    ("GRACE_PERIOD_EXPIRED", None): ("subscription.grace_period_expired", "billing_retry",
                                     OFF),
    ("DID_CHANGE_RENEWAL_PREF", None): ("subscription.renewal_pref_changed", "active", ON),
    ("REFUND_DECLINED", None): ("subscription.refund_declined", "active", ON),
    ("REFUND_REVERSED", None): ("subscription.refund_reversed", "active", ON),
    ("PRICE_INCREASE", None): ("subscription.price_change_pending", "active", ON),
    ("PRICE_INCREASE", "PENDING"): ("subscription.price_change_pending", "active", ON),
    ("PRICE_INCREASE", "ACCEPTED"): ("subscription.price_change_accepted", "active", ON),
    ("OFFER_REDEEMED", None): ("subscription.offer_redeemed", "active", ON),
    ("RENEWAL_EXTENDED", None): ("subscription.renewal_extended", "active", ON),
    ("RENEWAL_EXTENSION", None): ("subscription.renewal_extension_complete", "active", ON),
    ("CONSUMPTION_REQUEST", None): ("subscription.consumption_request", "active", ON),
    ("EXTERNAL_PURCHASE_TOKEN", None): ("subscription.external_purchase_token", "active",
                                        ON),
    ("DID_CHANGE_RENEWAL_STATUS", None): ("unknown", "active", ON),
    ("SOMETHING_NEW", None): ("unknown", "active", ON),
}


@pytest.mark.parametrize(("ntype", "subtype"), list(APPLE_CASES))
async def test_apple_event(relay_factory: RelayFactory, sim: AttestoSimulator,
                           ntype: str, subtype: str | None) -> None:
    event, state, access = APPLE_CASES[(ntype, subtype)]
    client = await start(relay_factory)
    first = sim.apple_webhook("SUBSCRIBED", apple_txn(sim), subtype="INITIAL_BUY",
                              signed_ms=NOW_MS - 60_000, auto_renew=True)
    assert await post(client, sim, first, t=NOW_S) == (200, {"status": "accepted"})
    txn = apple_txn(sim, "t2")
    if ntype in ("REFUND", "REVOKE"):
        txn.revocation_ms, txn.revocation_reason = NOW_MS - 2000, 0
    body = sim.apple_webhook(ntype, txn, subtype=subtype, signed_ms=NOW_MS - 1000)
    assert await post(client, sim, body, t=NOW_S) == (200, {"status": "accepted"})
    p = await purchase(client, "apple", "o1")
    assert p is not None and p.state == state
    relayed = (await events(client))[-1]
    assert relayed["type"] == event
    assert relayed["state"] == state and relayed["previous_state"] == "active"
    assert relayed["entitlements"] == access
    assert relayed["sequence"] == 2 and relayed["stale"] is False
    assert (await counts(client))["delivery"] == 2
    assert p.latest_ref == "t2"


# Google subscriptionNotification.notificationType -> (event, state after, access)
GOOGLE_CASES: dict[int, tuple[str, str, list[str]]] = {
    1: ("subscription.recovered", "active", ON),
    2: ("subscription.renewed", "active", ON),
    3: ("subscription.cancellation_scheduled", "active_not_renewing", ON),
    4: ("subscription.purchased", "active", ON),
    5: ("subscription.on_hold", "on_hold", OFF),
    6: ("subscription.in_grace_period", "grace", ON),
    7: ("subscription.cancellation_revoked", "active", ON),
    8: ("subscription.price_change_accepted", "active", ON),
    9: ("subscription.deferred", "active", ON),
    10: ("subscription.paused", "paused", OFF),
    11: ("subscription.pause_schedule_changed", "active", ON),
    12: ("subscription.revoked", "revoked", OFF),
    13: ("subscription.expired", "expired", OFF),
    17: ("subscription.pending_purchase_canceled", "active", ON),
    19: ("subscription.price_change_updated", "active", ON),
    20: ("subscription.price_change_rejected", "active", ON),
    99: ("unknown", "active", ON),
}


def google_sub(sim: AttestoSimulator, token: str = "tok-1") -> GooglePurchase:
    return sim.add_google(token=token, product_id="premium_monthly", account_id=UUID)


@pytest.mark.parametrize("ntype", list(GOOGLE_CASES))
async def test_google_event(relay_factory: RelayFactory, sim: AttestoSimulator,
                            clock: Clock, ntype: int) -> None:
    event, state, access = GOOGLE_CASES[ntype]
    client = await start(relay_factory)
    first = sim.google_webhook(4, google_sub(sim), event_time_ms=NOW_MS - 60_000,
                               root_token="root")
    assert await post(client, sim, first, t=NOW_S) == (200, {"status": "accepted"})
    clock.advance(5)
    body = sim.google_webhook(ntype, google_sub(sim), event_time_ms=NOW_MS,
                              root_token="root")
    assert await post(client, sim, body, t=NOW_S + 5) == (200, {"status": "accepted"})
    p = await purchase(client, "google", "root")
    assert p is not None and p.state == state
    assert p.latest_ref == "tok-1"  # the current token, for the re-verify
    assert p.next_poll_ms == (NOW_S + 5) * 1000  # due now: the scheduler re-verifies it
    relayed = (await events(client))[-1]
    assert (relayed["type"], relayed["state"], relayed["entitlements"]) == (event, state,
                                                                            access)


async def test_google_products(relay_factory: RelayFactory, sim: AttestoSimulator) -> None:
    client = await start(relay_factory)
    otp = sim.add_google(token="otp-1", product_id="lifetime", kind="product")
    await post(client, sim, sim.google_webhook(1, otp, event_time_ms=NOW_MS - 10,
                                               kind="product"), t=NOW_S)
    p = await purchase(client, "google", "otp-1")
    assert p is not None and (p.kind, p.state, p.next_poll_ms) == ("product", "owned", NOW_MS)
    assert (await events(client))[-1]["entitlements"] == ["lifetime"]
    await post(client, sim, sim.google_webhook(2, otp, event_time_ms=NOW_MS,
                                               kind="product"), t=NOW_S)
    p = await purchase(client, "google", "otp-1")
    assert p is not None and p.state == "revoked"
    assert (await events(client))[-1]["type"] == "product.canceled"


async def test_apple_one_time_charge_is_owned(relay_factory: RelayFactory,
                                              sim: AttestoSimulator) -> None:
    client = await start(relay_factory)
    txn = apple_txn(sim, type="Non-Consumable", expires_ms=None, product_id="lifetime",
                    original_transaction_id="o9")
    await post(client, sim, sim.apple_webhook("ONE_TIME_CHARGE", txn, signed_ms=NOW_MS),
               t=NOW_S)
    p = await purchase(client, "apple", "o9")
    assert p is not None and (p.kind, p.state, p.expires_ms) == ("product", "owned", None)
    assert (await events(client))[-1]["entitlements"] == ["lifetime"]


@pytest.mark.parametrize("platform", ["apple", "google"])
async def test_test_events_are_relayed_and_touch_no_purchase(
        relay_factory: RelayFactory, sim: AttestoSimulator, platform: str) -> None:
    client = await start(relay_factory)
    body = (sim.apple_webhook("TEST", None, signed_ms=NOW_MS) if platform == "apple"
            else sim.google_webhook(None, None, event_time_ms=NOW_MS))
    assert await post(client, sim, body, t=NOW_S) == (200, {"status": "accepted"})
    assert await counts(client) == {"inbox": 1, "event": 1, "delivery": 1, "purchase": 0}
    [relayed] = await events(client)
    assert (relayed["type"], relayed["platform"], relayed["subject_key"]) == ("test", platform,
                                                                              None)
    assert relayed["sequence"] is None and relayed["state"] is None


async def test_google_voided_is_relayed_and_re_verified(relay_factory: RelayFactory,
                                                        sim: AttestoSimulator) -> None:
    """Attesto sends voided notifications without a subject; relay finds the token, relays
    the void and re-verifies at once: Play's answer, not the void, decides the state
    (issue 15 defect 4; tests/lifecycle covers what the re-verify then does)."""
    client = await start(relay_factory)
    await post(client, sim, sim.google_webhook(4, google_sub(sim), event_time_ms=NOW_MS - 9,
                                               root_token="root"), t=NOW_S)
    await post(client, sim, sim.google_webhook(2, google_sub(sim),
                                               event_time_ms=NOW_MS - 5, root_token="root"),
               t=NOW_S)
    voided = sim.google_webhook(1, google_sub(sim), event_time_ms=NOW_MS, kind="voided")
    assert await post(client, sim, voided, t=NOW_S) == (200, {"status": "accepted"})
    p = await purchase(client, "google", "root")
    assert p is not None and p.state == "active" and p.voided_ms == NOW_MS
    assert p.next_poll_ms == NOW_MS  # due now: the re-verify decides
    relayed = (await events(client))[-1]
    assert (relayed["type"], relayed["subject_key"], relayed["state"]) == (
        "subscription.refunded", "root", "active")
    assert (relayed["order_id"], relayed["refund_type"]) == ("GPA.tok-1", 1)
    # A token relay never saw: stored and relayed with no subject.
    other = sim.google_webhook(1, google_sub(sim, "tok-x"), event_time_ms=NOW_MS,
                               kind="voided")
    assert await post(client, sim, other, t=NOW_S) == (200, {"status": "accepted"})
    assert (await events(client))[-1]["subject_key"] is None
    assert (await counts(client))["purchase"] == 1


# (first delivered, second delivered) with store times; the later store time wins.
ORDER_CASES = {
    "renewed delivered after a later expiry": (("EXPIRED", 2), ("DID_RENEW", 1), "expired"),
    "expired delivered after a later renewal": (("DID_RENEW", 2), ("EXPIRED", 1), "active"),
    "in order: expired then renewed": (("EXPIRED", 1), ("DID_RENEW", 2), "active"),
    "in order: renewed then expired": (("DID_RENEW", 1), ("EXPIRED", 2), "expired"),
}


@pytest.mark.parametrize("case", list(ORDER_CASES))
async def test_out_of_order_apple(relay_factory: RelayFactory, sim: AttestoSimulator,
                                  case: str) -> None:
    (first, t1), (second, t2), final = ORDER_CASES[case]
    client = await start(relay_factory)
    for ntype, minute in ((first, t1), (second, t2)):
        txn = apple_txn(sim, f"t{minute}", expires_ms=EXPIRES + minute)
        body = sim.apple_webhook(ntype, txn, signed_ms=NOW_MS + minute * 60_000)
        assert await post(client, sim, body, t=NOW_S) == (200, {"status": "accepted"})
    p = await purchase(client, "apple", "o1")
    assert p is not None and p.state == final
    late = t2 < t1
    assert p.store_time_ms == NOW_MS + max(t1, t2) * 60_000
    assert p.latest_ref == f"t{max(t1, t2)}"
    relayed = await events(client)
    assert [e["stale"] for e in relayed] == [False, late]
    assert [e["sequence"] for e in relayed] == [1, 2]
    assert relayed[-1]["state"] == final  # a stale event reports the state it left alone
    assert (await counts(client))["delivery"] == 2  # stale events are relayed too
    assert counted(client).get(("accepted", "stale"), 0) == (1 if late else 0)


async def test_out_of_order_google(relay_factory: RelayFactory, sim: AttestoSimulator) -> None:
    client = await start(relay_factory)
    await post(client, sim, sim.google_webhook(2, google_sub(sim), event_time_ms=NOW_MS,
                                               root_token="root"), t=NOW_S)
    await post(client, sim, sim.google_webhook(13, google_sub(sim), event_time_ms=NOW_MS - 1,
                                               root_token="root"), t=NOW_S)
    p = await purchase(client, "google", "root")
    assert p is not None and p.state == "active"
    assert [e["stale"] for e in await events(client)] == [False, True]


async def test_app_user_id_binds_the_user_and_never_erases_one(
        relay_factory: RelayFactory, sim: AttestoSimulator) -> None:
    client = await start(relay_factory)
    store = client.app[STORE_KEY]
    await store.write(lambda: AppUser.insert(user_id="alice", app_user_id=UUID,
                                             created_ms=1).execute())
    await post(client, sim, sim.apple_webhook("SUBSCRIBED", apple_txn(sim),
                                              signed_ms=NOW_MS - 9), t=NOW_S)
    p = await purchase(client, "apple", "o1")
    assert p is not None and (p.user_id, p.app_user_id) == ("alice", UUID)
    assert (await events(client))[-1]["user_id"] == "alice"
    # A purchase verified by bob, then a webhook with no appUserId: bob stays.
    await store.write(lambda: Purchase.update(user_id="bob", app_user_id=None).execute())
    txn = apple_txn(sim, "t2", app_account_token=None)
    await post(client, sim, sim.apple_webhook("DID_RENEW", txn, signed_ms=NOW_MS), t=NOW_S)
    p = await purchase(client, "apple", "o1")
    assert p is not None and p.user_id == "bob"


async def test_google_webhook_then_the_scheduled_re_verify_fills_the_expiry(
        relay_factory: RelayFactory, sim: AttestoSimulator, attesto_url: str,
        tmp_path: Path, clock: Clock) -> None:
    """The whole Google loop: webhook (no expiry) -> due now -> re-verify the newest token."""
    from relay.scheduler.repoll import claim_due
    from relay.web.appkeys import SCHEDULER_KEY
    from tests.conftest import make_config

    client: Client = await relay_factory(
        make_config(tmp_path, attesto_url=attesto_url, downstream=(BILLING,),
                    entitlements=types.MappingProxyType(ENTITLEMENTS)), use_clock=True)
    sim.add_google(token="root", product_id="premium_monthly", expiry_ms=NOW_MS - 86_400_000,
                   start_ms=NOW_MS - 40 * 86_400_000)
    newest = sim.add_google(token="tok-2", product_id="premium_monthly", linked_token="root",
                            expiry_ms=NOW_MS + 30 * 86_400_000, start_ms=NOW_MS)
    body = sim.google_webhook(2, newest, event_time_ms=NOW_MS - 5, root_token="root")
    assert await post(client, sim, body, t=NOW_S) == (200, {"status": "accepted"})
    p = await purchase(client, "google", "root")
    assert p is not None and p.expires_ms is None and p.next_poll_ms == NOW_MS
    assert sim.calls == []  # the handler made no outbound call

    scheduler = client.app[SCHEDULER_KEY]
    assert scheduler.poller is not None
    store = client.app[STORE_KEY]
    due = await store.write(lambda: claim_due(NOW_MS, 100))
    assert [(v.platform, v.subject_key) for v in due] == [("google", "root")]
    for view in due:
        await scheduler.poller.poll_one(view)
    assert [c[1]["purchaseToken"] for c in sim.calls] == ["tok-2"]  # the newest token
    p = await purchase(client, "google", "root")
    assert p is not None and p.expires_ms == NOW_MS + 30 * 86_400_000
    assert p.state == "active" and p.next_poll_ms is not None and p.next_poll_ms > NOW_MS
