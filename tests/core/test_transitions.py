"""The event → state table, row by row, for every event of attesto-contract §5.2."""

from __future__ import annotations

import pytest

from relay.attesto.sim_webhooks import APPLE_EVENTS, GOOGLE_PRODUCT_EVENTS, GOOGLE_SUB_EVENTS
from relay.core.domain import ENTITLED_STATES, SUSPENDED_STATES, State
from relay.core.transitions import APPLE_STATUS, TRANSITIONS, resolve_state, transition_for

A, ANR, G, BR = State.ACTIVE, State.ACTIVE_NOT_RENEWING, State.GRACE, State.BILLING_RETRY
OH, PA, EX, RV, RF, OW = (State.ON_HOLD, State.PAUSED, State.EXPIRED, State.REVOKED,
                          State.REFUNDED, State.OWNED)

# event -> (state for a subscription, state for a one-time product); None keeps the stored.
EXPECTED: dict[str, tuple[State | None, State | None]] = {
    "subscription.purchased": (A, OW),
    "subscription.renewed": (A, OW),
    "subscription.recovered": (A, OW),
    "subscription.cancellation_scheduled": (ANR, None),
    "subscription.cancellation_revoked": (A, None),
    "subscription.expired": (EX, None),
    "subscription.revoked": (RV, RV),
    "subscription.refunded": (RF, RF),
    "subscription.in_grace_period": (G, None),
    "subscription.in_billing_retry": (BR, None),
    "subscription.grace_period_expired": (BR, None),
    "subscription.on_hold": (OH, None),
    "subscription.upgraded": (A, None),
    "subscription.downgraded": (None, None),
    "subscription.renewal_pref_changed": (None, None),
    "subscription.paused": (PA, None),
    "subscription.pause_schedule_changed": (None, None),
    "subscription.deferred": (None, None),
    "subscription.refund_declined": (None, None),
    "subscription.refund_reversed": (A, OW),
    "subscription.price_change_pending": (None, None),
    "subscription.price_change_accepted": (None, None),
    "subscription.price_change_updated": (None, None),
    "subscription.price_change_rejected": (None, None),
    "subscription.offer_redeemed": (None, None),
    "subscription.renewal_extended": (None, None),
    "subscription.renewal_extension_complete": (None, None),
    "subscription.consumption_request": (None, None),
    "subscription.external_purchase_token": (None, None),
    "subscription.pending_purchase_canceled": (None, None),
    "product.purchased": (None, OW),
    "product.canceled": (None, RV),
    "product.charged": (None, OW),
    "test": (None, None),
    "unknown": (None, None),
}


def test_the_table_covers_exactly_the_vocabulary() -> None:
    assert set(TRANSITIONS) == set(EXPECTED)
    emitted = ({e for e, _ in APPLE_EVENTS.values()} | {e for e, _ in GOOGLE_SUB_EVENTS.values()}
               | set(GOOGLE_PRODUCT_EVENTS.values()) | {"unknown"})
    assert emitted <= set(TRANSITIONS)


@pytest.mark.parametrize("event", sorted(EXPECTED))
def test_each_row(event: str) -> None:
    sub, product = EXPECTED[event]
    assert resolve_state(event, "subscription") == sub
    assert resolve_state(event, "product") == product


@pytest.mark.parametrize("event", ["test", "unknown"])
def test_passthrough_events_touch_nothing_even_with_apple_status(event: str) -> None:
    assert not transition_for(event).touches
    assert resolve_state(event, "subscription", apple_status=2, revoked=True) is None


def test_an_event_attesto_adds_later_keeps_the_state() -> None:
    assert resolve_state("subscription.something_new", "subscription") is None
    assert transition_for("subscription.something_new").touches


@pytest.mark.parametrize(("status", "state"), sorted(APPLE_STATUS.items()))
def test_apple_status_decides_when_the_event_keeps_the_state(status: int, state: State) -> None:
    assert resolve_state("subscription.price_change_pending", "subscription",
                         apple_status=status) == state
    # ... and over the event's own guess: status is the whole subscription's state
    # ("App Store Server Notifications" › status), issue 15 defect 3.
    assert resolve_state("subscription.expired", "subscription", apple_status=status) == state
    assert resolve_state("subscription.cancellation_revoked", "subscription",
                         apple_status=status) == state


def test_apple_status_refund_and_revoke_say_which_loss_of_access() -> None:
    assert resolve_state("subscription.refunded", "subscription", apple_status=5) == RF
    assert resolve_state("subscription.refunded", "subscription", apple_status=2) == RF
    assert resolve_state("subscription.revoked", "subscription", apple_status=5) == RV
    assert resolve_state("subscription.refunded", "subscription", apple_status=1) == A
    assert resolve_state("subscription.cancellation_scheduled", "subscription",
                         apple_status=4, auto_renew=False) == G
    assert resolve_state("subscription.cancellation_scheduled", "subscription",
                         apple_status=1, auto_renew=False) == ANR


def test_auto_renew_off_makes_active_not_renewing() -> None:
    assert resolve_state("subscription.renewed", "subscription", auto_renew=False) == ANR
    assert resolve_state("subscription.renewed", "subscription", auto_renew=True) == A
    assert resolve_state("subscription.in_grace_period", "subscription", auto_renew=False) == G


def test_a_revoked_transaction_wins_over_an_entitled_state() -> None:
    assert resolve_state("subscription.renewed", "subscription", revoked=True) == RV
    assert resolve_state("subscription.offer_redeemed", "subscription", revoked=True) == RV
    assert resolve_state("subscription.refunded", "subscription", revoked=True) == RF


def test_entitlement_effects() -> None:
    """Refund/revoke remove access, retry/hold/pause suspend it, grace keeps it."""
    for event in ("subscription.refunded", "subscription.revoked"):
        assert resolve_state(event, "subscription") not in ENTITLED_STATES
        assert resolve_state(event, "product") not in ENTITLED_STATES
    for event in ("subscription.in_billing_retry", "subscription.on_hold",
                  "subscription.paused", "subscription.grace_period_expired"):
        assert resolve_state(event, "subscription") in SUSPENDED_STATES
    assert resolve_state("subscription.in_grace_period", "subscription") in ENTITLED_STATES
    assert transition_for("subscription.cancellation_scheduled").auto_renew is False
    assert transition_for("subscription.cancellation_revoked").auto_renew is True
