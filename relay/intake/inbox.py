"""The webhook write unit: the inbox row (exact bytes, unique on eventId) and its effect.

`ingest_many()` runs on the store thread through `store.write_many`: for each delivery
the inbox row, the purchase upsert, the normalized event(s) and their outbox rows commit
together or not at all. A repeated eventId finds its inbox row and
changes nothing (exactly-once effect).
"""

from __future__ import annotations

from dataclasses import dataclass

from relay.core import ids, relayed
from relay.core.domain import EventView, PurchaseView, Snapshot
from relay.core.frozen import slot_init
from relay.core.normalizer import Normalized, void_snapshot
from relay.core.rules import Rules
from relay.store import lookups, pipeline, statements


@slot_init
@dataclass(frozen=True, slots=True)
class Inbound:
    """One authenticated delivery as the inbox stores it."""

    event_id: str
    event_type: str
    received_ms: int
    signature_t: int
    headers: str  # JSON of the headers of interest, never the signature
    body: bytes  # the exact bytes Attesto signed


@slot_init
@dataclass(frozen=True, slots=True)
class Outcome:
    duplicate: bool
    events: tuple[EventView, ...] = ()
    purchase: PurchaseView | None = None
    stale: bool = False


@slot_init
@dataclass(frozen=True, slots=True)
class Delivered:
    """One item of `ingest_many`: a delivery, what it says, and the rules at arrival."""

    inbound: Inbound
    norm: Normalized
    rules: Rules
    now_ms: int


def ingest_many(items: list[Delivered]) -> list[Outcome]:
    """Store each delivery once and apply what it says, with a few multi-row statements.

    An eventId already stored, or repeated within `items`, is a duplicate: only its first
    occurrence is applied.
    """
    unique: dict[str, Delivered] = {}
    for item in items:
        unique.setdefault(item.inbound.event_id, item)
    new_ids = statements.insert_inbox_many([
        (i.inbound.event_id, i.inbound.event_type, i.inbound.received_ms,
         i.inbound.signature_t, i.inbound.headers, i.inbound.body) for i in unique.values()])
    outcomes: dict[int, Outcome] = {}
    runs: list[tuple[Rules, list[tuple[Delivered, Snapshot]]]] = []

    def flush() -> None:
        for rules, run in runs:
            now_ms = max(item.now_ms for item, _ in run)
            applied = pipeline.apply_many([snap for _, snap in run], rules, now_ms)
            for (item, _), a in zip(run, applied, strict=True):
                outcomes[id(item)] = Outcome(False, a.events, a.purchase, a.stale)
        runs.clear()

    for item in unique.values():
        if item.inbound.event_id not in new_ids:
            continue
        snap = item.norm.snapshot
        if snap is None and item.norm.refund_token is not None:
            flush()  # the lookup must see the items before this one (a purchase and its void)
            row = lookups.google_row(item.norm.refund_token)
            if row is not None:
                snap = void_snapshot(item.norm, row.subject_key, row.kind, item.now_ms)
        if snap is None:
            event = record_subjectless(item.norm, item.rules, item.now_ms)
            outcomes[id(item)] = Outcome(False, (event,))
            continue
        if not runs or runs[-1][0] is not item.rules:
            runs.append((item.rules, []))
        runs[-1][1].append((item, snap))
    flush()
    return [outcomes.get(id(item), Outcome(duplicate=True)) for item in items]


def record_subjectless(norm: Normalized, rules: Rules, now_ms: int) -> EventView:
    """Store and fan out an event that names no purchase (`test`, Google voided, ...)."""
    eid = ids.event_id(now_ms)
    body = relayed.event_body(
        eid, norm.event, norm.reason, "webhook", norm.occurred_ms, now_ms, norm.source, None,
        None, None, None, False, norm.event_id, [], {})
    return pipeline.record_event(
        eid, norm.event, body, "webhook", norm.source, None, None, None, norm.occurred_ms,
        now_ms, norm.event_id, False, norm.environment, rules, now_ms)
