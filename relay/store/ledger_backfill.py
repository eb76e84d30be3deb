"""Migration 9's backfill: the transaction ledger of the purchases stored before it, read
from the input log (webhooks from their inbox bytes, verify and re-poll answers from their
JSON) with today's readers, in log order, through the same upsert as the live path. No
event is relayed for them: they are history, not news.

Rows pruned by `[input_log] retention_s` give nothing; a `baseline` input (a purchase
stored before the log, migration 8) gives its Apple `latest_ref` as a transaction with
the row's expiry. A Google renewal order's period start (the previous expiry) is not
re-derived here: the backfill reads the log in one pass, not per purchase.
"""

from __future__ import annotations

import json
from typing import Any

from relay.core.domain import TxnFact
from relay.core.errors import BadRequestError
from relay.core.normalizer import normalize, void_snapshot
from relay.core.verify_snapshot import AttestoResponseError, apple_snapshot, google_snapshot
from relay.store import ledger, statements

BATCH = 500
_READ = (
    "SELECT l.id, l.platform, l.subject_key, l.source, l.received_ms, l.ref, l.body, i.body, "
    "p.user_id, p.product_id, p.environment, p.kind FROM input_log l "
    "LEFT OUTER JOIN inbox i ON i.event_id = l.inbox_event_id "
    "LEFT OUTER JOIN purchase p ON p.platform = l.platform AND p.subject_key = l.subject_key "
    "WHERE l.id > {p} ORDER BY l.id LIMIT {p}")


def facts_of(platform: str, subject_key: str, source: str, received_ms: int,
             ref: str | None, body: str | None, raw: bytes | None,
             kind: str | None) -> tuple[TxnFact, ...]:
    """The transactions one logged input names, as the live path read them."""
    try:
        if source == "webhook" and raw:
            norm = normalize(json.loads(raw), received_ms)
            if norm.snapshot is not None:
                return norm.snapshot.transactions
            if norm.refund_token is not None:
                return void_snapshot(norm, subject_key, kind or "subscription",
                                     received_ms).transactions
            return ()
        if source in ("verify", "restore", "poll") and body:
            answer: dict[str, Any] = json.loads(body)
            if platform == "apple":
                return apple_snapshot(answer, None, received_ms, source).transactions
            return google_snapshot(answer, ref or subject_key, None, received_ms,
                                   source)[0].transactions
        if source == "baseline" and body and platform == "apple":
            row = json.loads(body)
            if row.get("latest_ref") and row.get("kind") == "subscription":
                return (TxnFact(str(row["latest_ref"]), product_id=row.get("product_id"),
                                period_end_ms=row.get("expires_ms")),)
    except (BadRequestError, AttestoResponseError, ValueError, TypeError, AttributeError):
        pass  # an input relay could not read then gives nothing now either
    return ()


def backfill() -> int:
    """Fill the ledger from the whole input log; return the rows it wrote or merged."""
    last, cursor, written = 0, ledger.next_cursor(), 0
    while True:
        found = statements.execute("ledger_backfill", _READ, (last, BATCH)).fetchall()
        if not found:
            return written
        last = int(found[-1][0])
        rows: list[ledger.LedgerRow] = []
        for (_id, platform, key, source, received, ref, body, raw, user, product, env,
             kind) in found:
            for fact in facts_of(platform, key, source, int(received), ref, body,
                                 bytes(raw) if raw is not None else None, kind):
                refund = fact.refunded_ms is not None or fact.revoked_ms is not None
                rows.append((cursor + len(rows), platform, fact.transaction_id, key, user,
                             fact.product_id or product, env, fact.ownership,
                             fact.period_start_ms, fact.period_end_ms, fact.price_micros,
                             fact.currency, fact.refunded_ms, fact.revoked_ms,
                             fact.observed_ms, int(received), int(received),
                             2 if refund else 1, "recorded"))
        if rows:
            ledger.upsert(rows)
            cursor += len(rows)
            written += len(rows)
