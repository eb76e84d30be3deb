"""Attesto event → normalized state: the transition table, as data (attesto-contract §5.2).

Pure: stdlib and `relay.domain` only. The normalizer reads it; nothing else decides states
for webhooks. One row per event of the vocabulary, `test` and `unknown` included.
"""

from __future__ import annotations

from dataclasses import dataclass

from relay.core.domain import State


@dataclass(frozen=True, slots=True)
class Transition:
    """What one Attesto event does to a purchase.

    `subscription` / `product`: the state it moves to for that kind of purchase, None to
    keep the stored one (the Apple `status` field may still say). `auto_renew`: what the
    event says about renewal when the renewal info does not. `touches`: False for events
    that carry no lifecycle news (`test`, `unknown`): they are recorded, nothing moves.
    """

    subscription: State | None
    product: State | None
    auto_renew: bool | None = None
    touches: bool = True


def _both(state: State | None, auto_renew: bool | None = None) -> Transition:
    return Transition(state, state, auto_renew)


KEEP = Transition(None, None)
PASSTHROUGH = Transition(None, None, touches=False)

TRANSITIONS: dict[str, Transition] = {
    # tier 1
    "subscription.purchased": Transition(State.ACTIVE, State.OWNED),
    "subscription.renewed": Transition(State.ACTIVE, State.OWNED),
    "subscription.recovered": Transition(State.ACTIVE, State.OWNED),
    "subscription.cancellation_scheduled": Transition(State.ACTIVE_NOT_RENEWING, None, False),
    "subscription.cancellation_revoked": Transition(State.ACTIVE, None, True),
    "subscription.expired": Transition(State.EXPIRED, None),
    "subscription.revoked": _both(State.REVOKED),  # access removed at once
    "subscription.refunded": _both(State.REFUNDED),  # access removed at once
    "subscription.in_grace_period": Transition(State.GRACE, None),  # access kept
    "subscription.in_billing_retry": Transition(State.BILLING_RETRY, None),  # suspended
    # Apple: grace is over but the store keeps retrying the charge, without access.
    "subscription.grace_period_expired": Transition(State.BILLING_RETRY, None),
    "subscription.on_hold": Transition(State.ON_HOLD, None),  # suspended
    # tier 2
    "subscription.upgraded": Transition(State.ACTIVE, None),  # the new product, at once
    "subscription.downgraded": KEEP,  # takes effect at the next renewal
    "subscription.renewal_pref_changed": KEEP,
    "subscription.paused": Transition(State.PAUSED, None),  # suspended
    "subscription.pause_schedule_changed": KEEP,
    "subscription.deferred": KEEP,  # expiry moves; Google's re-verify brings it
    "subscription.refund_declined": KEEP,
    "subscription.refund_reversed": Transition(State.ACTIVE, State.OWNED),  # access back
    # tier 3
    "subscription.price_change_pending": KEEP,
    "subscription.price_change_accepted": KEEP,
    "subscription.price_change_updated": KEEP,
    "subscription.price_change_rejected": KEEP,
    "subscription.offer_redeemed": KEEP,
    "subscription.renewal_extended": KEEP,  # the new expiry is in the transaction
    "subscription.renewal_extension_complete": KEEP,
    "subscription.consumption_request": KEEP,
    "subscription.external_purchase_token": KEEP,
    "subscription.pending_purchase_canceled": KEEP,  # Google: the re-verify decides
    "product.purchased": Transition(None, State.OWNED),
    # Google: a pending one-time purchase was cancelled before it was paid.
    "product.canceled": Transition(None, State.REVOKED),
    "product.charged": Transition(None, State.OWNED),
    # tier 4
    "test": PASSTHROUGH,
    "unknown": PASSTHROUGH,
}

# Apple `data.data.status` (attesto-contract §5.1), consulted when the event keeps the state.
APPLE_STATUS: dict[int, State] = {
    1: State.ACTIVE,
    2: State.EXPIRED,
    3: State.BILLING_RETRY,
    4: State.GRACE,
    5: State.REVOKED,
}


def transition_for(event: str) -> Transition:
    """The row for `event`; an event name Attesto adds later keeps the state."""
    return TRANSITIONS.get(event, KEEP)


def resolve_state(event: str, kind: str, *, auto_renew: bool | None = None,
                  apple_status: int | None = None, revoked: bool = False) -> State | None:
    """The state `event` moves a purchase of `kind` to, or None to keep the stored one.

    `apple_status` (Apple `data.status`: the whole subscription's status at signedDate)
    wins over the event's own guess (`apple_status_state`). Without it: `auto_renew` (what
    this input says) turns `active` into `active_not_renewing`; `revoked` (the transaction
    carries a revocation date) wins over any entitled state.
    """
    row = transition_for(event)
    if not row.touches:
        return None
    state = row.product if kind == "product" else row.subscription
    if kind != "product" and apple_status in APPLE_STATUS:
        return apple_status_state(state, apple_status, auto_renew)
    if revoked and state not in (State.REFUNDED, State.REVOKED):
        return State.REVOKED
    if state == State.ACTIVE and auto_renew is False:
        return State.ACTIVE_NOT_RENEWING
    return state


def apple_status_state(event_state: State | None, status: int,
                       auto_renew: bool | None) -> State:
    """Apple's status decides; the event only says which no-access state it is.

    1 active (`active_not_renewing` when auto-renew is off), 3 billing retry, 4 billing
    grace period: the status as it is, whatever the event (AUTO_RENEW_ENABLED during
    billing retry grants nothing; AUTO_RENEW_DISABLED in grace keeps access; a REFUND with
    status 1 was of something else). 2 expired and 5 revoked: `refunded`/`revoked` when the
    event is a refund or revoke (status 5 covers both), else `expired`/`revoked`.
    """
    base = APPLE_STATUS[status]
    if base == State.ACTIVE:
        return State.ACTIVE_NOT_RENEWING if auto_renew is False else State.ACTIVE
    if base in (State.EXPIRED, State.REVOKED) and event_state in (State.REFUNDED,
                                                                  State.REVOKED):
        return event_state
    return base
