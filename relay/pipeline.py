"""Derive → compare → store: apply one snapshot to its purchase row, with events and outbox.

Every input (verify, restore, webhook, poll) ends here. `apply()` runs on the store
thread inside the caller's transaction, so the row, its events and their deliveries
commit together or not at all.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from relay import ids
from relay.domain import (
    ENTITLED_STATES,
    EntitlementPolicy,
    EventView,
    PurchaseView,
    Snapshot,
    State,
    entitlement_keys,
    is_entitled,
    iso,
)
from relay.errors import ConflictError
from relay.models import AppUser, Delivery, Event, Purchase
from relay.poll_policy import PollPolicy, next_poll_ms


@dataclass(frozen=True, slots=True)
class Route:
    """A downstream endpoint as the fan-out sees it."""

    name: str
    events: tuple[str, ...] = ("*",)
    platforms: tuple[str, ...] = ()
    environments: tuple[str, ...] = ()
    active: bool = True  # False: rows are stored as held

    def matches(self, event_type: str, platform: str | None, environment: str | None) -> bool:
        if self.platforms and platform not in self.platforms:
            return False
        if self.environments and environment not in self.environments:
            return False
        return any(fnmatch.fnmatchcase(event_type, pattern) for pattern in self.events)


@dataclass(frozen=True, slots=True)
class Rules:
    """Everything from the configuration that applying a snapshot needs."""

    routes: tuple[Route, ...] = ()
    entitlements: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    owner_conflict: str = "transfer"
    entitlement_policy: EntitlementPolicy = field(default_factory=EntitlementPolicy)
    poll: PollPolicy = field(default_factory=PollPolicy)


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
        updated_ms=row.updated_ms, next_poll_ms=row.next_poll_ms)


def derive_event(before: PurchaseView | None, after: PurchaseView) -> str | None:
    """Name the change between two views of a purchase, or None when nothing changed."""
    product = after.kind == "product"
    if before is None:
        if product:
            return "product.purchased" if after.state == State.OWNED else (
                _INTO_STATE_EVENT.get(State(after.state), "product.state_changed")
                if after.state in State.__members__.values() else "product.state_changed")
        return "subscription.purchased"
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


def _resolve_user(snap: Snapshot) -> str | None:
    if snap.user_id is not None or snap.app_user_id is None:
        return snap.user_id
    bound = AppUser.get_or_none(AppUser.app_user_id == snap.app_user_id)
    return bound.user_id if bound else None


def apply(snap: Snapshot, rules: Rules, now_ms: int) -> Applied:
    """Apply `snap` inside the current transaction; see the module docstring."""
    row = Purchase.get_or_none((Purchase.platform == snap.platform)
                               & (Purchase.subject_key == snap.subject_key))
    before = view_of(row) if row is not None else None
    user_id = _resolve_user(snap)
    events: list[tuple[str, str | None, dict[str, Any]]] = []  # (type, reason, extra)

    if before is not None and snap.user_id and before.user_id and snap.user_id != before.user_id:
        if rules.owner_conflict == "keep":
            raise ConflictError("this purchase belongs to another user",
                                code="purchase_owned_by_other_user")
        events.append(("subscription.transferred", None,
                       {"previous_user_id": before.user_id}))

    stale = before is not None and snap.observed_ms < before.store_time_ms
    if before is None:
        after = PurchaseView(
            platform=snap.platform, subject_key=snap.subject_key,
            kind=snap.kind or "subscription", user_id=user_id, app_user_id=snap.app_user_id,
            product_id=snap.product_id, base_plan_id=snap.base_plan_id,
            state=snap.state or State.PENDING, state_reason=snap.state_reason,
            environment=snap.environment, expires_ms=snap.expires_ms,
            auto_renew=snap.auto_renew, latest_ref=snap.latest_ref,
            package_name=snap.package_name, store_time_ms=snap.observed_ms, sequence=0,
            created_ms=now_ms, updated_ms=now_ms)
    else:
        # Identity fields fill in whatever the order; state fields only move forward.
        after = replace(
            before,
            user_id=_coalesce(snap.user_id, before.user_id or user_id),
            app_user_id=_coalesce(snap.app_user_id, before.app_user_id),
            product_id=before.product_id or snap.product_id,
            base_plan_id=before.base_plan_id or snap.base_plan_id,
            environment=before.environment or snap.environment,
            package_name=before.package_name or snap.package_name,
            kind=before.kind if snap.kind is None else snap.kind,
        )
        if not stale:
            after = replace(
                after,
                product_id=_coalesce(snap.product_id, after.product_id),
                base_plan_id=_coalesce(snap.base_plan_id, after.base_plan_id),
                environment=_coalesce(snap.environment, after.environment),
                state=_coalesce(snap.state, before.state),
                state_reason=(snap.state_reason if snap.state is not None
                              else before.state_reason),
                expires_ms=_coalesce(snap.expires_ms, before.expires_ms),
                auto_renew=_coalesce(snap.auto_renew, before.auto_renew),
                latest_ref=_coalesce(snap.latest_ref, before.latest_ref),
                store_time_ms=max(snap.observed_ms, before.store_time_ms),
            )

    if snap.event_type is not None:
        events.append((snap.event_type, snap.event_reason, {}))
    elif not stale:
        derived = derive_event(before, after)
        if derived is not None:
            events.append((derived, after.state_reason, {}))

    if before is not None and after == before and not events:
        if snap.poll_now:
            Purchase.update(next_poll_ms=now_ms).where(
                (Purchase.platform == snap.platform)
                & (Purchase.subject_key == snap.subject_key)).execute()
        return Applied(before, (), stale)

    seq = before.sequence if before is not None else 0
    stored: list[EventView] = []
    for event_type, reason, extra in events:
        seq += 1
        stored.append(_record_event(snap, event_type, reason, extra, before, after, seq,
                                    stale, rules, now_ms))
    after = replace(after, sequence=seq, updated_ms=now_ms)
    after = replace(after, next_poll_ms=next_poll_ms(after, now_ms, rules.poll, snap.poll_now))
    _save(row, after)
    return Applied(after, tuple(stored), stale)


def _save(row: Purchase | None, v: PurchaseView) -> None:
    values = {
        "kind": v.kind, "user_id": v.user_id, "app_user_id": v.app_user_id,
        "product_id": v.product_id, "base_plan_id": v.base_plan_id, "state": str(v.state),
        "state_reason": v.state_reason, "environment": v.environment,
        "expires_ms": v.expires_ms, "auto_renew": v.auto_renew, "latest_ref": v.latest_ref,
        "package_name": v.package_name, "store_time_ms": v.store_time_ms,
        "sequence": v.sequence, "updated_ms": v.updated_ms, "next_poll_ms": v.next_poll_ms,
    }
    if row is None:
        Purchase.insert(platform=v.platform, subject_key=v.subject_key,
                        created_ms=v.created_ms, **values).execute()
    else:
        Purchase.update(**values).where((Purchase.platform == v.platform)
                                        & (Purchase.subject_key == v.subject_key)).execute()


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
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


def _record_event(snap: Snapshot, event_type: str, reason: str | None,
                  extra: Mapping[str, Any], before: PurchaseView | None, after: PurchaseView,
                  seq: int, stale: bool, rules: Rules, now_ms: int) -> EventView:
    eid = ids.event_id(now_ms)
    granted = (list(entitlement_keys(rules.entitlements, after.product_id, after.base_plan_id))
               if is_entitled(after, now_ms, rules.entitlement_policy) else [])
    body = event_body(eid, event_type, reason, snap.source, snap.observed_ms,
                      snap.received_ms, snap.platform, snap.subject_key, after, before, seq,
                      stale, snap.attesto_event_id, granted, extra)
    return record_event(eid, event_type, body, snap.source, snap.platform, snap.subject_key,
                        seq, after.user_id, snap.observed_ms, snap.received_ms,
                        snap.attesto_event_id, stale, after.environment, rules, now_ms)


def record_event(eid: str, event_type: str, body: str, source: str, platform: str | None,
                 subject_key: str | None, seq: int | None, user_id: str | None,
                 occurred_ms: int, received_ms: int, attesto_event_id: str | None,
                 stale: bool, environment: str | None, rules: Rules, now_ms: int) -> EventView:
    """Insert one event and its outbox rows (one per matching endpoint)."""
    cursor = Event.insert(
        id=eid, type=event_type, source=source, platform=platform, subject_key=subject_key,
        sequence=seq, user_id=user_id, occurred_ms=occurred_ms, received_ms=received_ms,
        attesto_event_id=attesto_event_id, stale=stale, body=body).execute()
    subject = f"{platform}:{subject_key}" if subject_key else eid
    rows = [
        {"event": cursor, "endpoint": r.name, "subject": subject, "sequence": seq or 0,
         "status": "pending" if r.active else "held", "next_attempt_ms": now_ms,
         "created_ms": now_ms}
        for r in rules.routes if r.matches(event_type, platform, environment)
    ]
    if rows:
        Delivery.insert_many(rows).execute()
    return EventView(cursor=cursor, id=eid, type=event_type, body=body, platform=platform,
                     subject_key=subject_key, sequence=seq, stale=stale, deliveries=len(rows))
