"""Derive → compare → store: apply one snapshot to its purchase row, with events and outbox.

Every input (verify, restore, webhook, poll) ends here. `apply()` runs on the store
thread inside the caller's transaction, so the row, its events and their deliveries
commit together or not at all. `apply_many()` is the same path for a batch (one pure
decision per snapshot, then a few multi-row statements via `statements`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from relay.core import ids
from relay.core.domain import (
    ENTITLED_STATES,
    EventView,
    InputNote,
    PurchaseView,
    Snapshot,
    State,
    entitlement_keys,
    is_entitled,
    iso,
)
from relay.core.errors import ConflictError
from relay.core.poll_policy import next_poll_ms
from relay.core.rules import Route, Rules
from relay.store import statements
from relay.store.models import Purchase


@dataclass(frozen=True, slots=True)
class Applied:
    purchase: PurchaseView | None
    events: tuple[EventView, ...]
    stale: bool = False

    @property
    def deliveries(self) -> int:
        return sum(e.deliveries for e in self.events)


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


def view_of(row: Purchase) -> PurchaseView:
    return PurchaseView(
        platform=row.platform, subject_key=row.subject_key, kind=row.kind,
        user_id=row.user_id, app_user_id=row.app_user_id, product_id=row.product_id,
        base_plan_id=row.base_plan_id, state=row.state, state_reason=row.state_reason,
        environment=row.environment, expires_ms=row.expires_ms, auto_renew=row.auto_renew,
        latest_ref=row.latest_ref, package_name=row.package_name,
        store_time_ms=row.store_time_ms, sequence=row.sequence, created_ms=row.created_ms,
        updated_ms=row.updated_ms, next_poll_ms=row.next_poll_ms,
        period_pending=bool(row.period_pending), grace_expires_ms=row.grace_expires_ms,
        period_start_ms=row.period_start_ms, voided_ms=row.voided_ms)


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


def _later(after: PurchaseView, before: PurchaseView) -> bool:
    # No stored expiry (e.g. a Google webhook came first): learning one is not a renewal.
    return before.expires_ms is not None and (after.expires_ms or 0) > before.expires_ms


def _coalesce(new: Any, old: Any) -> Any:
    return old if new is None else new


_Pending = tuple[str, str, str | None, dict[str, Any]]  # (event id, type, reason, extra)


def apply(snap: Snapshot, rules: Rules, now_ms: int) -> Applied:
    """Apply `snap` inside the current transaction; see the module docstring."""
    return apply_many([snap], rules, now_ms)[0]


def apply_many(snaps: Sequence[Snapshot], rules: Rules, now_ms: int, *,
               known: Mapping[tuple[str, str], PurchaseView | None] | None = None
               ) -> list[Applied]:
    """Apply `snaps` in order, as `apply` would one by one, with a few statements for all.

    Several snapshots of one purchase chain (each sees the one before). Raises what
    `apply` raises (ConflictError) for the first snapshot that fails; the caller's
    transaction must then be rolled back as a whole. `known`: rows (or their absence)
    already read in this transaction. Every snapshot is also an input-log row (one
    multi-row INSERT for all).
    """
    known = known or {}
    keys = {(s.platform, s.subject_key) for s in snaps}
    current = statements.load_purchases(keys - known.keys()) if keys - known.keys() else {}
    current.update({k: v for k, v in known.items() if v is not None and k in keys})
    # appUserId -> user: whom a webhook belongs to, and whom a verified purchase is bound to.
    wanted = {s.app_user_id for s in snaps if s.app_user_id is not None}
    wanted.update(v.app_user_id for s in snaps if s.user_id is not None
                  and (v := current.get((s.platform, s.subject_key))) and v.app_user_id)
    bound = statements.users_of_app_users(wanted) if wanted else {}
    dirty: dict[tuple[str, str], PurchaseView] = {}
    event_rows: list[statements.EventRow] = []
    input_rows: list[statements.InputRow] = []
    decided: list[tuple[PurchaseView, list[tuple[str, str, str, int]], bool]] = []
    located: list[tuple[str, str]] = []  # (subject, environment) learned by this group
    for snap in snaps:
        key = (snap.platform, snap.subject_key)
        before = current.get(key)
        user_id = snap.user_id if snap.user_id is not None or snap.app_user_id is None \
            else bound.get(snap.app_user_id)
        after, events, stale = decide(snap, before, user_id, rules, now_ms, bound)
        if before is not None and after == before and not events:
            if snap.poll_now:
                after = replace(before, next_poll_ms=now_ms)
                current[key] = dirty[key] = after
            decided.append((after, [], stale))
            input_rows.append(input_row(snap, before, after, ()))
            continue
        seq = before.sequence if before is not None else 0
        granted = (list(entitlement_keys(rules.entitlements, after.product_id,
                                         after.base_plan_id))
                   if is_entitled(after, now_ms, rules.entitlement_policy) else [])
        made: list[tuple[str, str, str, int]] = []
        for event_type, reason, extra in events:
            seq += 1
            eid = ids.event_id(now_ms)
            body = event_body(eid, event_type, reason, snap.source, snap.observed_ms,
                              snap.received_ms, snap.platform, snap.subject_key, after, before,
                              seq, stale, snap.attesto_event_id, granted, extra)
            event_rows.append((eid, event_type, snap.source, snap.platform, snap.subject_key,
                               seq, after.user_id, snap.observed_ms, snap.received_ms,
                               snap.attesto_event_id, stale, body))
            made.append((eid, event_type, body, seq))
        after = replace(after, sequence=seq, updated_ms=now_ms,
                        next_poll_ms=next_poll_ms(after, now_ms, rules.poll, snap.poll_now,
                                                  updated_ms=now_ms))
        current[key] = dirty[key] = after
        decided.append((after, made, stale))
        input_rows.append(input_row(snap, before, after, [m[0] for m in made]))
        if (before is not None and before.environment is None and after.environment
                and any(r.environments for r in rules.routes)):
            located.append((f"{after.platform}:{after.subject_key}", after.environment))

    cursors = statements.insert_events(event_rows) if event_rows else {}
    deliveries: list[statements.DeliveryRow] = []
    results: list[Applied] = []
    for after, made, stale in decided:
        views = []
        for eid, event_type, body, seq in made:
            subject = f"{after.platform}:{after.subject_key}"
            routed = _route(rules, event_type, after.platform, after.environment)
            deliveries.extend((cursors[eid], name, subject, seq, status, now_ms, now_ms)
                              for name, status in routed)
            views.append(EventView(cursor=cursors[eid], id=eid, type=event_type, body=body,
                                   platform=after.platform, subject_key=after.subject_key,
                                   sequence=seq, stale=stale, deliveries=len(routed)))
        results.append(Applied(after, tuple(views), stale))
    if deliveries:
        statements.insert_deliveries(deliveries)
    for subject, environment in located:
        _route_located(rules, subject, environment, now_ms)
    if dirty:
        statements.upsert_purchases(list(dirty.values()))
    if input_rows:
        statements.insert_inputs(input_rows)
    return results


def _moves_to_caller(snap: Snapshot, before: PurchaseView | None, rules: Rules,
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


def _route(rules: Rules, event_type: str, platform: str | None,
           environment: str | None) -> list[tuple[str, str]]:
    """(endpoint, status) of the outbox rows an event gets. An endpoint that filters on
    the environment, for a purchase whose environment is not known yet (a Google
    notification before any re-verify), gets an `unrouted` row: kept, not sent, until
    the environment is known (`_route_located`)."""
    out = []
    for r in rules.routes:
        if not r.matches_event(event_type, platform):
            continue
        if r.environments and environment is None:
            out.append((r.name, "unrouted"))
        elif not r.environments or environment in r.environments:
            out.append((r.name, "pending" if r.active else "held"))
    return out


def _route_located(rules: Rules, subject: str, environment: str, now_ms: int) -> None:
    """The purchase's environment is known now: release its unrouted rows to the
    endpoints that take it (held if paused), drop the others'."""
    takes = [r for r in rules.routes if r.environments and environment in r.environments]
    statements.route_unrouted(subject, [r.name for r in takes if r.active],
                              [r.name for r in takes if not r.active], now_ms)


def input_row(snap: Snapshot, before: PurchaseView | None, after: PurchaseView,
              event_ids: Sequence[str]) -> statements.InputRow:
    """What the input log keeps of `snap` (see `models.InputLog`)."""
    note = snap.note or _NO_NOTE
    return (snap.platform, after.subject_key, snap.source, snap.received_ms,
            snap.observed_ms, note.store_type, note.store_subtype, snap.event_type,
            note.ref or snap.latest_ref, snap.expires_ms,
            str(before.state) if before is not None else None, str(after.state),
            ",".join(event_ids) or None,
            snap.attesto_event_id if snap.source == "webhook" else None, snap.user_id,
            note.raw)


_NO_NOTE = InputNote()

_Decided = tuple[PurchaseView, list[tuple[str, str | None, dict[str, Any]]], bool]


def decide(snap: Snapshot, before: PurchaseView | None, user_id: str | None, rules: Rules,
           now_ms: int, bound: Mapping[str, str] | None = None) -> _Decided:
    """The row after `snap`, the events it makes (type, reason, extra) and staleness. Pure.
    `bound`: appUserId -> user, for the ownership rule (`_moves_to_caller`)."""
    events: list[tuple[str, str | None, dict[str, Any]]] = []
    if snap.user_id and _moves_to_caller(snap, before, rules, bound or {}):
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
        # transaction or token a late input names is still news (`_newer_reference`).
        after = replace(
            _newer_reference(snap, before) if stale and not record_only else before,
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
        after = replace(
            before,
            user_id=_coalesce(snap.user_id, before.user_id or user_id),
            app_user_id=_coalesce(snap.app_user_id, before.app_user_id),
            product_id=_coalesce(snap.product_id, before.product_id),
            base_plan_id=_coalesce(snap.base_plan_id, before.base_plan_id),
            environment=_coalesce(snap.environment, before.environment),
            package_name=before.package_name or snap.package_name,
            kind=before.kind if snap.kind is None else snap.kind,
            state=_coalesce(state, before.state),
            state_reason=reason if state is not None else before.state_reason,
            expires_ms=_coalesce(snap.expires_ms, before.expires_ms),
            auto_renew=_coalesce(snap.auto_renew, before.auto_renew),
            latest_ref=_coalesce(snap.latest_ref, before.latest_ref),
            store_time_ms=max(snap.observed_ms, before.store_time_ms),
            # Announced by a webhook, until an input brings the period's expiry.
            period_pending=snap.expires_ms is None and (snap.announces_period
                                                        or before.period_pending),
            grace_expires_ms=_coalesce(snap.grace_expires_ms, before.grace_expires_ms),
            period_start_ms=_coalesce(snap.period_start_ms, before.period_start_ms),
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


def apply_reprojected(before: PurchaseView, target: PurchaseView, rules: Rules,
                      now_ms: int) -> Applied:
    """Store the row `relay reproject` derived (in the caller's transaction), relay
    `subscription.state_changed` with reason `reprojected`, and log the change."""
    seq = before.sequence + 1
    after = replace(target, sequence=seq, updated_ms=now_ms)
    # Re-read the store soon where the log left something to confirm: a void to decide,
    # a new current token (its expiry), an expiry no input gave.
    recheck = (after.voided_ms is not None or after.latest_ref != before.latest_ref
               or (after.expires_ms is None and after.kind == "subscription"))
    after = replace(after, next_poll_ms=next_poll_ms(after, now_ms, rules.poll, recheck,
                                                     updated_ms=now_ms))
    granted = (list(entitlement_keys(rules.entitlements, after.product_id, after.base_plan_id))
               if is_entitled(after, now_ms, rules.entitlement_policy) else [])
    eid = ids.event_id(now_ms)
    event_type, subject = "subscription.state_changed", f"{after.platform}:{after.subject_key}"
    body = event_body(eid, event_type, "reprojected", "reprojection", now_ms, now_ms,
                      after.platform, after.subject_key, after, before, seq, False, None,
                      granted, {})
    cursor = statements.insert_event(eid, event_type, "reprojection", after.platform,
                                     after.subject_key, seq, after.user_id, now_ms, now_ms,
                                     None, False, body)
    routed = _route(rules, event_type, after.platform, after.environment)
    if routed:
        statements.insert_deliveries([(cursor, name, subject, seq, status, now_ms, now_ms)
                                      for name, status in routed])
    statements.upsert_purchases([after])
    snap = Snapshot(platform=after.platform, subject_key=after.subject_key,
                    source="reprojection", observed_ms=now_ms, received_ms=now_ms,
                    expires_ms=after.expires_ms, note=InputNote("reprojected"))
    statements.insert_inputs([input_row(snap, before, after, [eid])])
    view = EventView(cursor=cursor, id=eid, type=event_type, body=body,
                     platform=after.platform, subject_key=after.subject_key, sequence=seq,
                     deliveries=len(routed))
    return Applied(after, (view,))


def _newer_reference(snap: Snapshot, before: PurchaseView) -> PurchaseView:
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


def _routes_for(rules: Rules, event_type: str, platform: str | None,
                environment: str | None) -> list[Route]:
    return [r for r in rules.routes if r.matches(event_type, platform, environment)]


# One encoder for every event body: json.dumps() with arguments builds a new one per call.
_compact_json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def event_body(event_id: str, event_type: str, reason: str | None, source: str,
               occurred_ms: int, received_ms: int, platform: str | None,
               subject_key: str | None, after: PurchaseView | None,
               before: PurchaseView | None, sequence: int | None, stale: bool,
               attesto_event_id: str | None, entitlements: list[str],
               extra: Mapping[str, Any]) -> str:
    body: dict[str, Any] = {
        "id": event_id, "type": event_type, "reason": reason,
        "occurred_at": iso(occurred_ms), "received_at": iso(received_ms), "source": source,
        "platform": platform, "subject_key": subject_key,
        "user_id": after.user_id if after else None,
        "app_user_id": after.app_user_id if after else None,
        "product_id": after.product_id if after else None,
        "environment": after.environment if after else None,
        "state": str(after.state) if after else None,
        "previous_state": str(before.state) if before else None,
        "expires_at": iso(after.expires_ms) if after else None,
        "entitlements": entitlements, "sequence": sequence, "stale": stale,
        "attesto_event_id": attesto_event_id,
    }
    body.update(extra)
    return _compact_json(body)


def record_event(eid: str, event_type: str, body: str, source: str, platform: str | None,
                 subject_key: str | None, seq: int | None, user_id: str | None,
                 occurred_ms: int, received_ms: int, attesto_event_id: str | None,
                 stale: bool, environment: str | None, rules: Rules, now_ms: int) -> EventView:
    """Insert one event and its outbox rows (one per matching endpoint)."""
    cursor = statements.insert_event(eid, event_type, source, platform, subject_key, seq,
                                     user_id, occurred_ms, received_ms, attesto_event_id,
                                     stale, body)
    subject = f"{platform}:{subject_key}" if subject_key else eid
    routes = _routes_for(rules, event_type, platform, environment)
    for r in routes:
        statements.insert_delivery(cursor, r.name, subject, seq or 0,
                                   "pending" if r.active else "held", now_ms, now_ms)
    deliveries = len(routes)
    return EventView(cursor=cursor, id=eid, type=event_type, body=body, platform=platform,
                     subject_key=subject_key, sequence=seq, stale=stale, deliveries=deliveries)
