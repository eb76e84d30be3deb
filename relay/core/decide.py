"""The state machine: what one snapshot does to a purchase row, and the events it names.

`decide` takes the row as stored (or None) and one input's snapshot, and returns the row
after it, the events it makes (type, reason, extra fields) and whether it is stale. Every
input goes through it: webhooks, verifies, re-polls, re-projection. Pure: the store
applies its answer (`relay.store.pipeline`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields, replace
from typing import Any

from relay.core.domain import ENTITLED_STATES, PurchaseView, Snapshot, State
from relay.core.errors import ConflictError
from relay.core.frozen import evolve
from relay.core.rules import Rules

# Derived event names for inputs that carry no event (verify, restore, poll).
_INTO_STATE_EVENT: dict[State, str] = {
    State.EXPIRED: "subscription.expired",
    State.REVOKED: "subscription.revoked",
    State.REFUNDED: "subscription.refunded",
    State.GRACE: "subscription.in_grace_period",
    State.BILLING_RETRY: "subscription.in_billing_retry",
    State.ON_HOLD: "subscription.on_hold",
    State.PAUSED: "subscription.paused",
    State.ACTIVE_NOT_RENEWING: "subscription.cancellation_scheduled",
}


def derive_event(before: PurchaseView | None, after: PurchaseView) -> str | None:
    """Name the change between two views of a purchase, or None when nothing changed."""
    product = after.kind == "product"
    if before is None:
        if product:
            return "product.purchased" if after.state == State.OWNED else (
                _INTO_STATE_EVENT.get(State(after.state), "product.state_changed")
                if after.state in State.__members__.values() else "product.state_changed")
        if after.state in (State.ACTIVE, State.ACTIVE_NOT_RENEWING, State.PENDING):
            return "subscription.purchased"
        # First sight of a purchase that is already over or suspended: say so.
        return _INTO_STATE_EVENT.get(State(after.state), "subscription.purchased")
    if after.state != before.state:
        if product:
            return {State.REFUNDED: "subscription.refunded",
                    State.CONSUMED: "product.consumed"}.get(State(after.state),
                                                          "product.state_changed")
        if after.state == State.ACTIVE:
            if before.state in (State.BILLING_RETRY, State.ON_HOLD, State.GRACE):
                return "subscription.recovered"
            if before.state == State.ACTIVE_NOT_RENEWING:
                return ("subscription.renewed" if _later(after, before)
                        else "subscription.cancellation_revoked")
            if before.state == State.EXPIRED:
                return "subscription.renewed" if _later(after, before) else (
                    "subscription.state_changed")
            return "subscription.state_changed"
        return _INTO_STATE_EVENT.get(State(after.state), "subscription.state_changed")
    if _later(after, before) and after.state in ENTITLED_STATES:
        return "subscription.renewed"
    if after.auto_renew != before.auto_renew and before.auto_renew is not None:
        return ("subscription.cancellation_revoked" if after.auto_renew
                else "subscription.cancellation_scheduled")
    return None


# `decide` builds the common case's row field by field (the hot path), so a new
# PurchaseView field must be set there too; this fails at import until it is.
_FIELDS = 23
if len(fields(PurchaseView)) != _FIELDS:
    raise TypeError("PurchaseView changed: set its new field in decide() and update _FIELDS")


def _later(after: PurchaseView, before: PurchaseView) -> bool:
    # No stored expiry (e.g. a Google webhook came first): learning one is not a renewal.
    return before.expires_ms is not None and (after.expires_ms or 0) > before.expires_ms


def _coalesce(new: Any, old: Any) -> Any:
    return old if new is None else new


def moves_to_caller(snap: Snapshot, before: PurchaseView | None, rules: Rules,
                     bound: Mapping[str, str]) -> bool:
    """Whether a verify by `snap.user_id` moves the purchase from its owner (a transfer);
    ConflictError (409) when it may not. Pure.

    The store's binding (appAccountToken / obfuscatedExternalAccountId: the appUserId) is
    proof of ownership: naming another user, it refuses whatever the policy. The
    `owner_conflict` policy decides only for a purchase with no binding (or one that names
    the caller); a binding relay did not mint names nobody it knows, so it moves nothing.
    """
    binding = snap.app_user_id or (before.app_user_id if before is not None else None)
    owner = bound.get(binding) if binding else None
    taken = before is not None and before.user_id and before.user_id != snap.user_id
    if (owner is not None and owner != snap.user_id) or (taken and (
            rules.owner_conflict == "keep" or (binding and owner is None))):
        raise ConflictError("this purchase belongs to another user",
                            code="purchase_owned_by_other_user")
    return bool(taken)


Decided = tuple[PurchaseView, list[tuple[str, str | None, dict[str, Any]]], bool]


def decide(snap: Snapshot, before: PurchaseView | None, user_id: str | None, rules: Rules,
           now_ms: int, bound: Mapping[str, str] | None = None) -> Decided:
    """The row after `snap`, the events it makes (type, reason, extra) and staleness. Pure.
    `bound`: appUserId -> user, for the ownership rule (`moves_to_caller`)."""
    events: list[tuple[str, str | None, dict[str, Any]]] = []
    if snap.user_id and moves_to_caller(snap, before, rules, bound or {}):
        assert before is not None
        events.append(("subscription.transferred", None,
                       {"previous_user_id": before.user_id}))

    stale = before is not None and snap.observed_ms < before.store_time_ms
    record_only = before is not None and (snap.record_only or not_current(snap, before))
    void_decided = False
    if before is None:
        after = PurchaseView(
            platform=snap.platform, subject_key=snap.subject_key,
            kind=snap.kind or "subscription", user_id=user_id, app_user_id=snap.app_user_id,
            product_id=snap.product_id, base_plan_id=snap.base_plan_id,
            state=snap.state or State.PENDING, state_reason=snap.state_reason,
            environment=snap.environment, expires_ms=snap.expires_ms,
            auto_renew=snap.auto_renew, latest_ref=snap.latest_ref,
            package_name=snap.package_name, store_time_ms=snap.observed_ms, sequence=0,
            created_ms=now_ms, updated_ms=now_ms,
            period_pending=snap.announces_period and snap.expires_ms is None,
            grace_expires_ms=snap.grace_expires_ms, period_start_ms=snap.period_start_ms)
    elif stale or record_only:
        # Identity fields fill in whatever the order; state fields only move forward, and
        # only with an input about the purchase's current transaction or token. A newer
        # transaction or token a late input names is still news (`newer_reference`).
        after = evolve(
            newer_reference(snap, before) if stale and not record_only else before,
            user_id=_coalesce(snap.user_id, before.user_id or user_id),
            app_user_id=_coalesce(snap.app_user_id, before.app_user_id),
            product_id=before.product_id or snap.product_id,
            base_plan_id=before.base_plan_id or snap.base_plan_id,
            environment=before.environment or snap.environment,
            package_name=before.package_name or snap.package_name,
            kind=before.kind if snap.kind is None else snap.kind,
            voided_ms=snap.observed_ms if snap.voided and not stale else before.voided_ms,
        )
    else:
        state, reason, voided_ms = snap.state, snap.state_reason, before.voided_ms
        if _refetch(snap):
            # Play's live answer after a void decides it: no access left means refunded.
            if voided_ms is not None and state == State.EXPIRED:
                state, reason, void_decided = State.REFUNDED, "voided", True
            elif state == State.EXPIRED and before.state in (State.REFUNDED, State.REVOKED):
                # Play shows a revoked or refunded subscription as EXPIRED: say which.
                state, reason = State(before.state), before.state_reason
            voided_ms = None
        # Every field spelt out (the hot path: ~1.5 µs less than `evolve`); `_FIELDS`
        # below fails at import if PurchaseView gains one this does not set.
        b, s = before, snap
        after = PurchaseView(
            platform=b.platform, subject_key=b.subject_key,
            kind=b.kind if s.kind is None else s.kind,
            user_id=(b.user_id or user_id) if s.user_id is None else s.user_id,
            app_user_id=b.app_user_id if s.app_user_id is None else s.app_user_id,
            product_id=b.product_id if s.product_id is None else s.product_id,
            base_plan_id=b.base_plan_id if s.base_plan_id is None else s.base_plan_id,
            state=b.state if state is None else state,
            state_reason=reason if state is not None else b.state_reason,
            environment=b.environment if s.environment is None else s.environment,
            expires_ms=b.expires_ms if s.expires_ms is None else s.expires_ms,
            auto_renew=b.auto_renew if s.auto_renew is None else s.auto_renew,
            latest_ref=b.latest_ref if s.latest_ref is None else s.latest_ref,
            package_name=b.package_name or s.package_name,
            store_time_ms=max(s.observed_ms, b.store_time_ms),
            sequence=b.sequence, created_ms=b.created_ms, updated_ms=b.updated_ms,
            next_poll_ms=b.next_poll_ms,
            # Announced by a webhook, until an input brings the period's expiry.
            period_pending=s.expires_ms is None and (s.announces_period
                                                     or b.period_pending),
            grace_expires_ms=(b.grace_expires_ms if s.grace_expires_ms is None
                              else s.grace_expires_ms),
            period_start_ms=(b.period_start_ms if s.period_start_ms is None
                             else s.period_start_ms),
            voided_ms=voided_ms,
        )

    if before is not None and before.user_id is None and after.user_id is not None:
        # The purchase's user is known only now (a webhook came first): say who it is.
        events.append((f"{'product' if after.kind == 'product' else 'subscription'}"
                       ".user_bound", None, {}))
    if snap.event_type is not None:
        events.append((snap.event_type, snap.event_reason, dict(snap.extra or {})))
    elif void_decided:
        events.append(("subscription.state_changed", "voided", {}))
    elif not stale and not record_only:
        derived = derive_event(before, after)
        if derived == "subscription.renewed" and before is not None and before.period_pending:
            # The webhook relayed this renewal already; this input only brings its expiry.
            events.append(("subscription.state_changed", "renewal_confirmed", {}))
        elif derived is not None:
            events.append((derived, after.state_reason, {}))
    return after, events, stale


def newer_reference(snap: Snapshot, before: PurchaseView) -> PurchaseView:
    """What a stale input still says: an Apple transaction that began after the row's
    latest (its period: expiry, product) or a Google purchase of a new token. The state
    stays that of the newer input already applied."""
    if (snap.platform == "apple" and snap.period_start_ms is not None
            and snap.expires_ms is not None and snap.latest_ref
            and before.period_start_ms is not None
            and snap.period_start_ms > before.period_start_ms):
        return replace(before, expires_ms=snap.expires_ms, latest_ref=snap.latest_ref,
                       period_start_ms=snap.period_start_ms,
                       product_id=snap.product_id or before.product_id)
    if (snap.platform == "google" and snap.source == "webhook" and snap.latest_ref
            and snap.event_type == "subscription.purchased"
            and snap.latest_ref not in (before.latest_ref, before.subject_key)):
        return replace(before, latest_ref=snap.latest_ref,
                       product_id=snap.product_id or before.product_id)
    return before


def _refetch(snap: Snapshot) -> bool:
    """A Google answer read from Play (verify, restore, poll), not a notification."""
    return snap.platform == "google" and snap.source != "webhook" and snap.state is not None


def not_current(snap: Snapshot, before: PurchaseView) -> bool:
    """Whether a notification is about something older than the purchase's current state:
    an Apple transaction that began before the row's latest (a refund or consumption
    request of last month's renewal), or a Google token other than the row's current one
    (the root after an upgrade, or a token whose purchase relay has not seen yet)."""
    if snap.source != "webhook" or not snap.latest_ref or not before.latest_ref \
            or snap.latest_ref == before.latest_ref:
        return False
    if snap.platform == "google":
        return (snap.kind == "subscription"
                and (snap.latest_ref == before.subject_key
                     or snap.event_type != "subscription.purchased"))
    if snap.period_start_ms is not None and before.period_start_ms is not None:
        return snap.period_start_ms < before.period_start_ms
    return (snap.expires_ms is not None and before.expires_ms is not None
            and snap.expires_ms < before.expires_ms)
