"""The webhook write unit: the inbox row (exact bytes, unique on eventId) and its effect.

`ingest()` runs on the store thread inside one `store.write`: the inbox row, the purchase
upsert, the normalized event(s) and their outbox rows commit together or not at all.
A repeated eventId finds its inbox row and changes nothing (exactly-once effect).
"""

from __future__ import annotations

from dataclasses import dataclass

from relay import ids, pipeline, statements
from relay.domain import EventView, PurchaseView
from relay.models import Purchase
from relay.normalizer import Normalized, refund_snapshot
from relay.pipeline import Rules


@dataclass(frozen=True, slots=True)
class Inbound:
    """One authenticated delivery as the inbox stores it."""

    event_id: str
    event_type: str
    received_ms: int
    signature_t: int
    headers: str  # JSON of the headers of interest, never the signature
    body: bytes  # the exact bytes Attesto signed


@dataclass(frozen=True, slots=True)
class Outcome:
    duplicate: bool
    events: tuple[EventView, ...] = ()
    purchase: PurchaseView | None = None
    stale: bool = False


def ingest(inbound: Inbound, norm: Normalized, rules: Rules, now_ms: int) -> Outcome:
    """Store `inbound` once and apply what it says; call inside `store.write`."""
    if not statements.insert_inbox(inbound.event_id, inbound.event_type, inbound.received_ms,
                                   inbound.signature_t, inbound.headers, inbound.body):
        return Outcome(duplicate=True)
    snap = norm.snapshot
    if snap is None and norm.refund_token is not None:
        row = _find_google_purchase(norm.refund_token)
        if row is not None:
            snap = refund_snapshot(norm, row.subject_key, row.kind, now_ms)
    if snap is None:
        return Outcome(False, (record_subjectless(norm, rules, now_ms),))
    applied = pipeline.apply(snap, rules, now_ms)
    return Outcome(False, applied.events, applied.purchase, applied.stale)


def _find_google_purchase(token: str) -> Purchase | None:
    """The Google purchase a voided token names: its root token, else its newest token."""
    row: Purchase | None = Purchase.get_or_none(
        (Purchase.platform == "google") & (Purchase.subject_key == token))
    if row is None:
        row = Purchase.get_or_none((Purchase.platform == "google")
                                   & (Purchase.latest_ref == token))
    return row


def record_subjectless(norm: Normalized, rules: Rules, now_ms: int) -> EventView:
    """Store and fan out an event that names no purchase (`test`, Google voided, ...)."""
    eid = ids.event_id(now_ms)
    body = pipeline.event_body(
        eid, norm.event, norm.reason, "webhook", norm.occurred_ms, now_ms, norm.source, None,
        None, None, None, False, norm.event_id, [], {})
    return pipeline.record_event(
        eid, norm.event, body, "webhook", norm.source, None, None, None, norm.occurred_ms,
        now_ms, norm.event_id, False, norm.environment, rules, now_ms)
