"""No documented notification type, subtype or subscription state is left unmapped or
untested: they are enumerated from the stores' own libraries (Apple's
app-store-server-library enums; the androidpublisher v3 discovery document shipped with
google-api-python-client), so a new value there fails here until relay handles it.
"""

from __future__ import annotations

from typing import Any

from appstoreserverlibrary.models.NotificationTypeV2 import NotificationTypeV2
from appstoreserverlibrary.models.Status import Status
from appstoreserverlibrary.models.Subtype import Subtype
from appstoreserverlibrary.models.Type import Type

from relay.core.domain import State
from relay.core.transitions import APPLE_STATUS, TRANSITIONS
from relay.core.verify_snapshot import GOOGLE_STATES, google_snapshot
from relay.store.models import InputLog
from relay.web.appkeys import STORE_KEY
from tests.lifecycle.attesto import APPLE_EVENTS, GOOGLE_EVENTS, apple_event, google_verify_answer
from tests.lifecycle.corpus import SCENARIOS
from tests.lifecycle.harness import Relay
from tests.lifecycle.stores import (
    DAY_MS,
    apple_notification,
    apple_renewal,
    apple_transaction,
    play_subscription,
    subscription_states,
)

# "App Store Server Notifications V2" › notificationType: the subtypes each type documents
# (None: the type also comes without one).
APPLE_DOCUMENTED: dict[str, tuple[str | None, ...]] = {
    "SUBSCRIBED": ("INITIAL_BUY", "RESUBSCRIBE"),
    "DID_CHANGE_RENEWAL_PREF": (None, "UPGRADE", "DOWNGRADE"),
    "DID_CHANGE_RENEWAL_STATUS": ("AUTO_RENEW_ENABLED", "AUTO_RENEW_DISABLED"),
    "OFFER_REDEEMED": ("INITIAL_BUY", "RESUBSCRIBE", "UPGRADE", "DOWNGRADE"),
    "DID_RENEW": (None, "BILLING_RECOVERY"),
    "EXPIRED": ("VOLUNTARY", "BILLING_RETRY", "PRICE_INCREASE", "PRODUCT_NOT_FOR_SALE"),
    "DID_FAIL_TO_RENEW": (None, "GRACE_PERIOD"),
    "GRACE_PERIOD_EXPIRED": (None,),
    "PRICE_INCREASE": ("PENDING", "ACCEPTED"),
    "REFUND": (None,), "REFUND_DECLINED": (None,), "REFUND_REVERSED": (None,),
    "CONSUMPTION_REQUEST": (None,), "RENEWAL_EXTENDED": (None,),
    "RENEWAL_EXTENSION": ("SUMMARY", "FAILURE"), "REVOKE": (None,), "TEST": (None,),
    "EXTERNAL_PURCHASE_TOKEN": ("UNREPORTED",), "ONE_TIME_CHARGE": (None,),
    "RESCIND_CONSENT": (None,), "METADATA_UPDATE": (None,), "MIGRATION": (None,),
    "PRICE_CHANGE": (None,),
}
# Types that carry no transaction (a summary, a token, a test).
NO_TRANSACTION = {"TEST", "RENEWAL_EXTENSION", "EXTERNAL_PURCHASE_TOKEN"}


def test_every_apple_type_subtype_and_status_is_listed() -> None:
    assert set(APPLE_DOCUMENTED) == {t.value for t in NotificationTypeV2}
    used = {s for subs in APPLE_DOCUMENTED.values() for s in subs if s}
    assert used == {s.value for s in Subtype}
    assert set(APPLE_STATUS) == {s.value for s in Status}
    # Every event Attesto emits for them has a row in relay's transition table.
    for key in APPLE_EVENTS.values():
        assert key[0] in TRANSITIONS
    for event, _reason in GOOGLE_EVENTS.values():
        assert event in TRANSITIONS


def _expected_apple_state(ntype: str, subtype: str | None) -> str | None:
    """What status 1 (active) with auto-renew on makes of each notification, per its doc."""
    event, _ = apple_event(ntype, subtype)
    if ntype in NO_TRANSACTION or event == "unknown":
        return None  # recorded and relayed; no purchase state from it
    if ntype == "ONE_TIME_CHARGE":
        return "owned"
    return "active"  # status 1 decides ([ASN] status), whatever the event would guess


async def test_every_apple_notification_is_recorded_relayed_and_mapped(life: Relay) -> None:
    now = life.now_ms
    n = 0
    for ntype, subtypes in APPLE_DOCUMENTED.items():
        for subtype in subtypes:
            n += 1
            key = f"cov{n}"
            kind = Type.CONSUMABLE if ntype == "ONE_TIME_CHARGE" else \
                Type.AUTO_RENEWABLE_SUBSCRIPTION
            txn = None if ntype in NO_TRANSACTION else apple_transaction(
                f"{key}-t1", key, "com.example.premium", now - DAY_MS,
                None if ntype == "ONE_TIME_CHARGE" else now + 30 * DAY_MS, kind=kind)
            renewal = None if txn is None or ntype == "ONE_TIME_CHARGE" else apple_renewal(
                key, "com.example.premium", auto_renew=True, signed_ms=now)
            await life.apple_webhook(apple_notification(
                ntype, subtype, uuid=f"{key}-n", signed_ms=now, txn=txn, renewal=renewal,
                status=None if txn is None or ntype == "ONE_TIME_CHARGE" else 1))
            [event] = await life.new_events()
            where = f"{ntype}/{subtype}"
            assert event["type"] == apple_event(ntype, subtype)[0], where
            row = await life.row("apple", key)
            expected = _expected_apple_state(ntype, subtype)
            if expected is not None:
                assert row is not None and row["state"] == expected, (where, row)
            elif row is not None:  # an unknown notification grants nothing
                assert row["state"] not in ("active", "active_not_renewing", "grace"), where
            if txn is not None:
                logged = await life.client.app[STORE_KEY].read(lambda key=key: [
                    (r.store_type, r.store_subtype) for r in
                    InputLog.select().where(InputLog.subject_key == key)])
                assert logged == [(ntype, subtype)], where


# purchases.subscriptionsv2 › subscriptionState: what each means for access, from the doc.
GOOGLE_EXPECTED: dict[str, dict[str, Any]] = {
    "SUBSCRIPTION_STATE_UNSPECIFIED": {"state": None},
    "SUBSCRIPTION_STATE_PENDING": {"state": State.PENDING},
    "SUBSCRIPTION_STATE_ACTIVE": {"state": State.ACTIVE},
    "SUBSCRIPTION_STATE_PAUSED": {"state": State.PAUSED},
    "SUBSCRIPTION_STATE_IN_GRACE_PERIOD": {"state": State.GRACE},
    "SUBSCRIPTION_STATE_ON_HOLD": {"state": State.ON_HOLD},
    # Canceled: access until expiryTime (here in the future), then expired.
    "SUBSCRIPTION_STATE_CANCELED": {"state": State.ACTIVE_NOT_RENEWING},
    "SUBSCRIPTION_STATE_EXPIRED": {"state": State.EXPIRED},
    "SUBSCRIPTION_STATE_PENDING_PURCHASE_CANCELED": {"state": State.EXPIRED},
}


def test_every_google_subscription_state_is_mapped() -> None:
    states = subscription_states()
    assert set(GOOGLE_EXPECTED) == set(states)
    assert set(GOOGLE_STATES) | {"SUBSCRIPTION_STATE_CANCELED",
                                 "SUBSCRIPTION_STATE_UNSPECIFIED"} == set(states)
    now = 1_800_000_000_000
    for name in states:
        sub = play_subscription(name, product="premium_monthly", expiry_ms=now + DAY_MS,
                                start_ms=now - DAY_MS, auto_renew=name != (
                                    "SUBSCRIPTION_STATE_CANCELED"))
        snap, _ = google_snapshot(google_verify_answer(sub, "tok", "premium_monthly"),
                                  "tok", "u1", now)
        assert snap.state == GOOGLE_EXPECTED[name]["state"], name
        if name == "SUBSCRIPTION_STATE_IN_GRACE_PERIOD":
            assert snap.grace_expires_ms == now + DAY_MS  # the line item's expiry
        if name == "SUBSCRIPTION_STATE_CANCELED":
            past, _ = google_snapshot(google_verify_answer(sub, "tok", "premium_monthly"),
                                      "tok", "u1", now + 2 * DAY_MS)
            assert past.state == State.EXPIRED


def test_the_corpus_covers_the_issue_list() -> None:
    """The sequences issue 15 names each have a scenario (by name)."""
    names = " | ".join(s.name for s in SCENARIOS)
    for wanted in ("initial buy", "renewal", "voluntary cancel and expiry",
                   "grace period entered and recovered", "grace period expired into billing",
                   "billing retry without grace, recovered", "billing retry without grace, "
                   "expired", "auto-renew toggled while active", "auto-renew toggled in grace",
                   "auto-renew toggled in billing retry", "refund of the current period",
                   "refund of an older period", "refund declined", "refund reversed",
                   "revoke (Family Sharing)", "upgrade", "downgrade", "crossgrade",
                   "offer redeemed", "renewal date extended", "price increase consent",
                   "google pause and resume", "account hold and recovery", "deferred",
                   "google revoke", "full refund of the current order",
                   "full refund of an old order", "partial refund",
                   "token replacement in order", "old token's notification arrives last"):
        assert wanted in names, wanted
