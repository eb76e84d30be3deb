"""The transaction ledger on the store thread: the multi-row upsert a write group runs for
the transactions its inputs name, the user a purchase learns, and the reads (by cursor, by
user, by purchase). Call inside the store's transaction (`store.read/write`).

One row per (platform, transaction_id), whichever input names it first (webhook, verify,
re-poll, in any order). Merging an input into a row: the newer word (store time,
`observed_ms`) on the transaction's refund wins, and so do its descriptive fields; an
input that says nothing of a refund (a Google re-verify) only fills in what the row lacks;
the user is the first one known. A change a consumer must see again (refund, revoke,
reversal, the user learned) moves the row's `cursor` to the end: write groups commit one
at a time (the store's write lock), so one `MAX(cursor)` per group numbers them in
commit order.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

from peewee import SqliteDatabase

from relay.core import ids, relayed
from relay.core.domain import PurchaseView, Snapshot, TxnFact
from relay.core.frozen import slot_init
from relay.core.ledger import (
    FAMILY,
    LedgerEntry,
    change_events,
    event_body,
    lane,
    with_period_start,
)
from relay.core.rules import Rules
from relay.store import statements
from relay.store.models import database

COLUMNS = tuple(f.name for f in fields(LedgerEntry))
_SELECT = "SELECT " + ", ".join(f'"{c}"' for c in COLUMNS) + ' FROM "ledger" '
LedgerRow = tuple[Any, ...]  # COLUMNS' values, in order

# ON CONFLICT: "ledger" is the stored row, excluded the input's.
_AUTH = '(excluded."observed_ms" > 0 AND excluded."observed_ms" >= "ledger"."observed_ms")'


def _pick(column: str) -> str:
    """The newer word on the transaction wins; an older or silent input fills gaps."""
    return (f'CASE WHEN {_AUTH} THEN COALESCE(excluded."{column}", "ledger"."{column}") '
            f'ELSE COALESCE("ledger"."{column}", excluded."{column}") END')


def _said(column: str) -> str:
    return f'(CASE WHEN {_AUTH} THEN excluded."{column}" ELSE "ledger"."{column}" END)'


_REFUND_MOVED = (f'(({_said("refunded_ms")} IS NULL) <> ("ledger"."refunded_ms" IS NULL) '
                 f'OR ({_said("revoked_ms")} IS NULL) <> ("ledger"."revoked_ms" IS NULL))')
_USER_LEARNED = '("ledger"."user_id" IS NULL AND excluded."user_id" IS NOT NULL)'
_DESCRIPTIVE = ("product_id", "environment", "ownership", "period_start_ms", "period_end_ms",
                "price_micros", "currency")
_UPSERT_TAIL = (
    ' ON CONFLICT ("platform", "transaction_id") DO UPDATE SET '
    + ", ".join(f'"{c}" = {_pick(c)}' for c in _DESCRIPTIVE)
    + ', "user_id" = COALESCE("ledger"."user_id", excluded."user_id")'
    + f', "refunded_ms" = {_said("refunded_ms")}, "revoked_ms" = {_said("revoked_ms")}'
    + f', "observed_ms" = {_said("observed_ms")}, "updated_ms" = excluded."updated_ms"'
    + f', "cursor" = CASE WHEN {_REFUND_MOVED} OR {_USER_LEARNED} THEN excluded."cursor" '
      'ELSE "ledger"."cursor" END'
    + f', "version" = "ledger"."version" + CASE WHEN {_REFUND_MOVED} THEN 1 ELSE 0 END'
    + f', "change" = CASE WHEN {_REFUND_MOVED} THEN CASE '
      f'WHEN {_said("refunded_ms")} IS NOT NULL THEN \'refunded\' '
      f'WHEN {_said("revoked_ms")} IS NOT NULL THEN \'revoked\' '
      "ELSE 'refund_reversed' END "
      f'WHEN {_USER_LEARNED} THEN \'user_bound\' ELSE "ledger"."change" END')
_HEAD = 'INSERT INTO "ledger" (' + ", ".join(f'"{c}"' for c in COLUMNS) + ") VALUES "
_RETURNING = " RETURNING " + ", ".join(f'"{c}"' for c in COLUMNS)


# SQLite: per thread, the connection of its last write group, the cursor that group left
# free and the database's `data_version` then (it changes when any other connection
# commits; this one's own commits leave it). A group of the same connection that finds it
# unchanged takes the kept cursor; a group rolled back after keeping one leaves a gap
# (cursors stay unique and in commit order).
_kept = threading.local()


def _sqlite() -> Any:
    db = database.obj
    return db.connection() if isinstance(db, SqliteDatabase) else None  # type: ignore[no-untyped-call]


def _version(conn: Any) -> int:
    return int(conn.execute("PRAGMA data_version").fetchone()[0])


def next_cursor() -> int:
    """The first cursor free for this write group (the group holds the write lock)."""
    conn = _sqlite()
    if conn is not None:
        kept = getattr(_kept, "last", None)
        _kept.last = None
        if kept is not None and kept[0] is conn and kept[1] == _version(conn):
            return int(kept[2])
    row = statements.execute("ledger_max_cursor",
                             'SELECT COALESCE(MAX("cursor"), 0) FROM "ledger"', ()).fetchone()
    return int(row[0]) + 1


def _keep(free: int) -> None:
    """This group used the cursors before `free` (SQLite: the next group may start there)."""
    conn = _sqlite()
    if conn is not None:
        _kept.last = (conn, _version(conn), free)


def _entry(row: Sequence[Any]) -> LedgerEntry:
    return LedgerEntry(*row)


def upsert(rows: Sequence[LedgerRow], changes: bool = True) -> list[LedgerEntry | None]:
    """Insert or merge each row (COLUMNS' values, `cursor` a fresh one per row); for each,
    the row after it when it changed (took its fresh cursor: recorded, or a change to see
    again), else None. Rows naming the same transaction go in separate statements, in
    order (one statement may not update a row twice). `changes=False`: nobody needs to
    know what changed (no endpoint takes `transaction.*`): all None, and no row is read
    back (RETURNING costs about as much as the insert)."""
    layers: list[dict[tuple[str, str], int]] = []  # key -> index in rows
    for i, row in enumerate(rows):
        key = (row[1], row[2])
        layer = next((x for x in layers if key not in x), None)
        if layer is None:
            layers.append({key: i})
        else:
            layer[key] = i
    out: list[LedgerEntry | None] = [None] * len(rows)
    for layer in layers:
        if not changes:
            statements.many("ledger_upsert", _HEAD, statements.row_marks(len(COLUMNS)),
                            _UPSERT_TAIL, [rows[i] for i in layer.values()], len(COLUMNS))
            continue
        for found in _run([rows[i] for i in layer.values()]):
            entry = _entry(found)
            i = layer[(entry.platform, entry.transaction_id)]
            if rows[i][0] == entry.cursor:  # it took the fresh cursor: it changed
                out[i] = entry
    return out


def _run(rows: Sequence[LedgerRow]) -> list[Sequence[Any]]:
    if statements.supports_returning():
        return statements.many("ledger_upsert_returning", _HEAD,
                               statements.row_marks(len(COLUMNS)), _UPSERT_TAIL + _RETURNING,
                               rows, len(COLUMNS))
    found = []  # SQLite before 3.35: one row at a time, read back
    for row in rows:
        statements.many("ledger_upsert", _HEAD, statements.row_marks(len(COLUMNS)),
                        _UPSERT_TAIL, [row], len(COLUMNS))
        found.append(statements.execute(
            "ledger_one", _SELECT + 'WHERE "platform" = {p} AND "transaction_id" = {p}',
            (row[1], row[2])).fetchone())
    return found


def bind_user(platform: str, subject_key: str, user_id: str, now_ms: int,
              cursor: int) -> list[LedgerEntry]:
    """The purchase's user is known now: its rows recorded without one get it, each at a
    new cursor from `cursor` on (change `user_bound`)."""
    ids = [str(r[0]) for r in statements.execute(
        "ledger_unbound", 'SELECT "transaction_id" FROM "ledger" WHERE "platform" = {p} AND '
        '"subject_key" = {p} AND "user_id" IS NULL ORDER BY "cursor"',
        (platform, subject_key)).fetchall()]
    for n, tid in enumerate(ids):
        statements.execute(
            "ledger_bind", 'UPDATE "ledger" SET "user_id" = {p}, "cursor" = {p}, '
            '"change" = \'user_bound\', "updated_ms" = {p} WHERE "platform" = {p} '
            'AND "transaction_id" = {p}', (user_id, cursor + n, now_ms, platform, tid))
    if not ids:
        return []
    return [_entry(r) for r in statements.execute(
        "ledger_bound", _SELECT + 'WHERE "cursor" >= {p} AND "cursor" < {p} ORDER BY "cursor"',
        (cursor, cursor + len(ids))).fetchall()]


def locate(platform: str, subject_key: str, environment: str) -> list[str]:
    """The purchase's environment is known now: its rows recorded without one take it (no
    change to deliver again). Returns the purchase's transaction ids (their events may
    wait for the environment, whatever the row says now)."""
    rows = statements.execute(
        "ledger_of_purchase", 'SELECT "transaction_id", "environment" FROM "ledger" '
        'WHERE "platform" = {p} AND "subject_key" = {p}', (platform, subject_key)).fetchall()
    ids = [str(tid) for tid, _env in rows]
    if any(env is None for _tid, env in rows):
        statements.execute(
            "ledger_locate", 'UPDATE "ledger" SET "environment" = {p} WHERE "platform" = {p} '
            'AND "subject_key" = {p} AND "environment" IS NULL',
            (environment, platform, subject_key))
    return ids


# ---- reads ---------------------------------------------------------------------------------

def page(after: int, limit: int, user_id: str | None = None) -> list[LedgerEntry]:
    """Rows whose cursor is after `after`, in cursor order (a user's only, when given)."""
    if user_id is None:
        rows = statements.execute(
            "ledger_page", _SELECT + 'WHERE "cursor" > {p} ORDER BY "cursor" LIMIT {p}',
            (after, limit)).fetchall()
    else:
        rows = statements.execute(
            "ledger_user_page", _SELECT + 'WHERE "user_id" = {p} AND "cursor" > {p} '
            'ORDER BY "cursor" LIMIT {p}', (user_id, after, limit)).fetchall()
    return [_entry(r) for r in rows]


def of_purchase(platform: str, subject_key: str,
                newest: int | None = None) -> list[LedgerEntry]:
    """A purchase's transactions, in the order relay recorded them; only the `newest` ones
    when given (a page that must stay bounded: a weekly subscription renews 52 times a
    year)."""
    if newest is None:
        rows = statements.execute(
            "ledger_purchase", _SELECT + 'WHERE "platform" = {p} AND "subject_key" = {p} '
            'ORDER BY "created_ms", "cursor"', (platform, subject_key)).fetchall()
    else:
        rows = statements.execute(
            "ledger_purchase_newest", _SELECT + 'WHERE "platform" = {p} AND "subject_key" = '
            '{p} ORDER BY "created_ms" DESC, "cursor" DESC LIMIT {p}',
            (platform, subject_key, newest)).fetchall()[::-1]
    return [_entry(r) for r in rows]


# ---- what a write group records (store.pipeline.apply_many) -------------------------------

@slot_init
@dataclass(frozen=True, slots=True)
class Named:
    """A transaction an input of the group names: the input (its index in the group), the
    purchase before and after it, and what it says."""

    slot: int
    snap: Snapshot
    before: PurchaseView | None
    after: PurchaseView
    fact: TxnFact


@slot_init
@dataclass(frozen=True, slots=True)
class Made:
    """A `transaction.*` event to store and relay: its event-table row, and for the input
    at `slot` (index in the group) what the pipeline records of it."""

    slot: int
    row: statements.EventRow
    made: tuple[str, str, str, int, str, list[tuple[str, str]]]


def _row(cursor: int, n: Named, now_ms: int) -> LedgerRow:
    fact = n.fact
    if n.snap.platform == "google":
        fact = with_period_start(fact, n.before)
    refund = fact.refunded_ms is not None or fact.revoked_ms is not None
    return (cursor, n.snap.platform, fact.transaction_id, n.after.subject_key,
            n.after.user_id, fact.product_id or n.after.product_id, n.after.environment,
            fact.ownership, fact.period_start_ms, fact.period_end_ms, fact.price_micros,
            fact.currency, fact.refunded_ms, fact.revoked_ms, fact.observed_ms, now_ms,
            now_ms, 2 if refund else 1, "recorded")


def record(named: Sequence[Named], learned: Sequence[tuple[str, str, str]], rules: Rules,
           now_ms: int) -> list[Made]:
    """Upsert the named transactions (one statement), give the purchases whose user is
    known now their rows' user, and make the `transaction.*` events of the rows that
    changed for the endpoints that take them (none: no event is stored)."""
    cursor = next_cursor()
    relayed_somewhere = any(p.startswith(FAMILY) for r in rules.routes for p in r.events)
    entries = upsert([_row(cursor + i, n, now_ms) for i, n in enumerate(named)],
                     changes=relayed_somewhere)
    cursor += len(named)
    for platform, subject_key, user_id in learned:
        cursor += len(bind_user(platform, subject_key, user_id, now_ms, cursor))
    _keep(cursor)
    out: list[Made] = []
    for n, entry in zip(named, entries, strict=True):
        if entry is None:
            continue
        for event_type, seq in change_events(entry):
            routed = relayed.route(rules, event_type, entry.platform, entry.environment)
            if not routed:
                continue
            eid = ids.event_id(now_ms)
            snap = n.snap
            body = event_body(eid, event_type, snap.source, snap.observed_ms,
                              snap.received_ms, entry, seq, snap.attesto_event_id)
            out.append(Made(n.slot, (eid, event_type, snap.source, entry.platform,
                                     entry.subject_key, seq, entry.user_id, snap.observed_ms,
                                     snap.received_ms, snap.attesto_event_id, False, body),
                            (eid, event_type, body, seq,
                             lane(entry.platform, entry.transaction_id), routed)))
    return out
