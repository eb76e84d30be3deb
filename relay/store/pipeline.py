"""Derive → compare → store: apply one snapshot to its purchase row, with events and outbox.

Every input (verify, restore, webhook, poll) ends here. `apply()` runs on the store
thread inside the caller's transaction, so the row, its events and their deliveries
commit together or not at all. `apply_many()` is the same path for a batch (one pure
decision per snapshot, `relay.core.decide`, then a few multi-row statements via
`statements`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from relay.core import ids, relayed
from relay.core.decide import decide
from relay.core.domain import (
    EventView,
    InputNote,
    PurchaseView,
    Snapshot,
    entitlement_keys,
    is_entitled,
)
from relay.core.frozen import evolve, slot_init
from relay.core.ledger import lane
from relay.core.poll_policy import next_poll_ms
from relay.core.rules import Rules
from relay.store import ledger, statements
from relay.store.models import Purchase


@slot_init
@dataclass(frozen=True, slots=True)
class Applied:
    purchase: PurchaseView | None
    events: tuple[EventView, ...]
    stale: bool = False

    @property
    def deliveries(self) -> int:
        return sum(e.deliveries for e in self.events)


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


# An event made for an input: (id, type, body, sequence, outbox lane, endpoints and row
# statuses; None: route it as the purchase's).
_Made = tuple[str, str, str, int, str, list[tuple[str, str]] | None]


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
    stored = dict(current)  # the rows as the database holds them now
    current.update({k: v for k, v in known.items() if v is not None and k in keys})
    # appUserId -> user: whom a webhook belongs to, and whom a verified purchase is bound to.
    wanted = {s.app_user_id for s in snaps if s.app_user_id is not None}
    wanted.update(v.app_user_id for s in snaps if s.user_id is not None
                  and (v := current.get((s.platform, s.subject_key))) and v.app_user_id)
    bound = statements.users_of_app_users(wanted) if wanted else {}
    dirty: dict[tuple[str, str], PurchaseView] = {}
    event_rows: list[statements.EventRow] = []
    inputs: list[tuple[Snapshot, PurchaseView | None, PurchaseView, list[str]]] = []
    decided: list[tuple[PurchaseView, list[_Made], bool]] = []
    located: list[PurchaseView] = []  # purchases whose environment this group learned
    named: list[ledger.Named] = []  # the store transactions the inputs name
    learned: list[tuple[str, str, str]] = []  # purchases whose user is known now
    for slot, snap in enumerate(snaps):
        key = (snap.platform, snap.subject_key)
        before = current.get(key)
        user_id = snap.user_id if snap.user_id is not None or snap.app_user_id is None \
            else bound.get(snap.app_user_id)
        after, events, stale = decide(snap, before, user_id, rules, now_ms, bound)
        if snap.transactions:
            named.extend([ledger.Named(slot, snap, before, after, fact)
                          for fact in snap.transactions])
        if before is not None and not events and after == before:
            if snap.poll_now:
                after = evolve(before, next_poll_ms=now_ms)
                current[key] = dirty[key] = after
            decided.append((after, [], stale))
            inputs.append((snap, before, after, []))
            continue
        if before is not None and before.user_id is None and after.user_id is not None:
            learned.append((after.platform, after.subject_key, after.user_id))
        seq = before.sequence if before is not None else 0
        granted = (list(entitlement_keys(rules.entitlements, after.product_id,
                                         after.base_plan_id))
                   if is_entitled(after, now_ms, rules.entitlement_policy) else [])
        made: list[_Made] = []
        subject = f"{after.platform}:{after.subject_key}"
        for event_type, reason, extra in events:
            seq += 1
            eid = ids.event_id(now_ms)
            body = relayed.event_body(eid, event_type, reason, snap.source, snap.observed_ms,
                              snap.received_ms, snap.platform, snap.subject_key, after, before,
                              seq, stale, snap.attesto_event_id, granted, extra)
            event_rows.append((eid, event_type, snap.source, snap.platform, snap.subject_key,
                               seq, after.user_id, snap.observed_ms, snap.received_ms,
                               snap.attesto_event_id, stale, body))
            made.append((eid, event_type, body, seq, subject, None))
        after = _stamped(after, before, seq, now_ms,
                         next_poll_ms(after, now_ms, rules.poll, snap.poll_now,
                                      updated_ms=now_ms))
        current[key] = dirty[key] = after
        decided.append((after, made, stale))
        inputs.append((snap, before, after, [m[0] for m in made]))
        if before is not None and before.environment is None and after.environment:
            located.append(after)

    # The ledger: one upsert for every transaction named; `transaction.*` events for the
    # rows that changed, relayed to the endpoints that opted in (core.rules).
    for made_txn in ledger.record(named, learned, rules, now_ms) if named or learned else ():
        event_rows.append(made_txn.row)
        decided[made_txn.slot][1].append(made_txn.made)
        inputs[made_txn.slot][3].append(made_txn.row[0])
    cursors = statements.insert_events(event_rows) if event_rows else {}
    deliveries: list[statements.DeliveryRow] = []
    results: list[Applied] = []
    # An event's endpoints follow its type, platform and environment: once per group.
    routing: dict[tuple[str, str, str | None], list[tuple[str, str]]] = {}
    for after, made, stale in decided:
        views = []
        for eid, event_type, body, seq, subject, routes in made:
            routed = routes
            if routed is None:
                how = (event_type, after.platform, after.environment)
                routed = routing.get(how)
                if routed is None:
                    routed = routing[how] = relayed.route(rules, *how)
            deliveries.extend((cursors[eid], name, subject, seq, status, now_ms, now_ms)
                              for name, status in routed)
            views.append(EventView(cursor=cursors[eid], id=eid, type=event_type, body=body,
                                   platform=after.platform, subject_key=after.subject_key,
                                   sequence=seq, stale=stale and routes is None,
                                   deliveries=len(routed)))
        results.append(Applied(after, tuple(views), stale))
    if deliveries:
        statements.insert_deliveries(deliveries)
    for view in located:
        _route_located(rules, view, now_ms)
    if dirty:
        statements.upsert_purchases(list(dirty.values()), stored)
    if inputs:
        statements.insert_inputs([input_row(*i) for i in inputs])
    return results


_set = object.__setattr__


def _stamped(after: PurchaseView, before: PurchaseView | None, sequence: int,
             updated_ms: int, next_poll: int | None) -> PurchaseView:
    """`after` with its new sequence, update time and next poll. `decide` made `after`
    for this call alone (nothing else holds it yet), so it takes them in place: a copy
    of its 23 fields costs ~3 µs per delivery. A row `decide` passed through unchanged
    (`before` itself) is copied."""
    if after is before:
        return evolve(after, sequence=sequence, updated_ms=updated_ms, next_poll_ms=next_poll)
    _set(after, "sequence", sequence)
    _set(after, "updated_ms", updated_ms)
    _set(after, "next_poll_ms", next_poll)
    return after


def _route_located(rules: Rules, view: PurchaseView, now_ms: int) -> None:
    """The purchase's environment is known now: its ledger rows take it, and its unrouted
    outbox rows (its own lane's, its transactions') go to the endpoints that take that
    environment (held if paused); the others' are dropped."""
    assert view.environment is not None
    lanes = [lane(view.platform, tid) for tid in ledger.locate(
        view.platform, view.subject_key, view.environment)]
    takes = [r for r in rules.routes if r.environments and view.environment in r.environments]
    if not any(r.environments for r in rules.routes):
        return  # nothing waited for it
    for subject in [f"{view.platform}:{view.subject_key}", *lanes]:
        statements.route_unrouted(subject, [r.name for r in takes if r.active],
                                  [r.name for r in takes if not r.active], now_ms)


def input_row(snap: Snapshot, before: PurchaseView | None, after: PurchaseView,
              event_ids: Sequence[str]) -> statements.InputRow:
    """What the input log keeps of `snap` (see `models.InputLog`)."""
    note = snap.note or _NO_NOTE
    return (snap.platform, after.subject_key, snap.source, snap.received_ms,
            snap.observed_ms, note.store_type, note.store_subtype, snap.event_type,
            note.ref or snap.latest_ref,
            snap.transactions[0].transaction_id if snap.transactions else None,
            snap.expires_ms, str(before.state) if before is not None else None, str(after.state),
            ",".join(event_ids) or None,
            snap.attesto_event_id if snap.source == "webhook" else None, snap.user_id,
            note.raw)


_NO_NOTE = InputNote()


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
    body = relayed.event_body(eid, event_type, "reprojected", "reprojection", now_ms, now_ms,
                      after.platform, after.subject_key, after, before, seq, False, None,
                      granted, {})
    cursor = statements.insert_event(eid, event_type, "reprojection", after.platform,
                                     after.subject_key, seq, after.user_id, now_ms, now_ms,
                                     None, False, body)
    routed = relayed.route(rules, event_type, after.platform, after.environment)
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


def record_event(eid: str, event_type: str, body: str, source: str, platform: str | None,
                 subject_key: str | None, seq: int | None, user_id: str | None,
                 occurred_ms: int, received_ms: int, attesto_event_id: str | None,
                 stale: bool, environment: str | None, rules: Rules, now_ms: int) -> EventView:
    """Insert one event and its outbox rows (one per matching endpoint)."""
    cursor = statements.insert_event(eid, event_type, source, platform, subject_key, seq,
                                     user_id, occurred_ms, received_ms, attesto_event_id,
                                     stale, body)
    subject = f"{platform}:{subject_key}" if subject_key else eid
    routes = relayed.routes_for(rules, event_type, platform, environment)
    for r in routes:
        statements.insert_delivery(cursor, r.name, subject, seq or 0,
                                   "pending" if r.active else "held", now_ms, now_ms)
    deliveries = len(routes)
    return EventView(cursor=cursor, id=eid, type=event_type, body=body, platform=platform,
                     subject_key=subject_key, sequence=seq, stale=stale, deliveries=deliveries)
