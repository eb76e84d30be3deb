"""Prebuilt SQL for the hot write path: each text is built once per database and reused.

Peewee builds every query anew (~100 µs a statement, 10x the driver); these run through
`db.execute_sql` with bound parameters instead. Portable SQL only (SQLite and PostgreSQL):
quoted identifiers, `ON CONFLICT ... DO NOTHING`, RETURNING only where the driver needs it.
Call only on the store thread, inside its transaction.
"""

from __future__ import annotations

import operator
import sqlite3
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import fields
from itertools import chain
from typing import Any

from peewee import Database, SqliteDatabase

from relay.core.domain import PurchaseView
from relay.store.models import database

_texts: dict[tuple[str, str], str] = {}


def _db() -> Database:
    db: Database = database.obj
    return db


def _text(db: Database, name: str, template: str) -> str:
    """`template` with `{p}` as the driver's placeholder, cached per (statement, style)."""
    key = (name, db.param)
    text = _texts.get(key)
    if text is None:
        text = _texts[key] = template.replace("{p}", db.param)
    return text


def execute(name: str, template: str, params: tuple[Any, ...]) -> Any:
    db = _db()
    return db.execute_sql(_text(db, name, template), params)  # type: ignore[no-untyped-call]


_INSERT_INBOX = (
    'INSERT INTO "inbox" ("event_id", "event_type", "received_ms", "signature_t", '
    '"headers", "body") VALUES ({p}, {p}, {p}, {p}, {p}, {p}) '
    'ON CONFLICT ("event_id") DO NOTHING')


def insert_inbox(event_id: str, event_type: str, received_ms: int, signature_t: int,
                 headers: str, body: bytes) -> bool:
    """Insert one inbox row; False when `event_id` is already there (the unique key decides)."""
    cursor = execute("insert_inbox", _INSERT_INBOX,
                     (event_id, event_type, received_ms, signature_t, headers, body))
    return bool(cursor.rowcount == 1)


# ---- purchases ------------------------------------------------------------------------

# PurchaseView's fields are the purchase columns; the view is built positionally.
_PURCHASE_COLUMNS = tuple(f.name for f in fields(PurchaseView))
_AUTO_RENEW = _PURCHASE_COLUMNS.index("auto_renew")
_STATE = _PURCHASE_COLUMNS.index("state")
_PERIOD_PENDING = _PURCHASE_COLUMNS.index("period_pending")
_purchase_values = operator.attrgetter(*_PURCHASE_COLUMNS)
SELECT_PURCHASES = ("SELECT " + ", ".join(f'"{c}"' for c in _PURCHASE_COLUMNS)
                    + ' FROM "purchase" WHERE ')
_SELECT_PURCHASE = SELECT_PURCHASES + '"platform" = {p} AND "subject_key" = {p}'
_MUTABLE = _PURCHASE_COLUMNS[2:]  # everything but the key


def load_purchase(platform: str, subject_key: str) -> PurchaseView | None:
    """The stored purchase, or None."""
    row = execute("select_purchase", _SELECT_PURCHASE, (platform, subject_key)).fetchone()
    return None if row is None else purchase_of(row)


# ---- events and the outbox ------------------------------------------------------------

_INSERT_EVENT = (
    'INSERT INTO "event" ("id", "type", "source", "platform", "subject_key", "sequence", '
    '"user_id", "occurred_ms", "received_ms", "attesto_event_id", "stale", "body") '
    "VALUES ({p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}, {p})")
_INSERT_DELIVERY = (
    'INSERT INTO "delivery" ("event_cursor", "endpoint", "subject", "sequence", "status", '
    '"attempts", "next_attempt_ms", "created_ms") VALUES ({p}, {p}, {p}, {p}, {p}, 0, {p}, {p})')


def insert_event(event_id: str, event_type: str, source: str, platform: str | None,
                 subject_key: str | None, sequence: int | None, user_id: str | None,
                 occurred_ms: int, received_ms: int, attesto_event_id: str | None,
                 stale: bool, body: str) -> int:
    """Insert one event; return its cursor (commit order)."""
    db = _db()
    params = (event_id, event_type, source, platform, subject_key, sequence, user_id,
              occurred_ms, received_ms, attesto_event_id, stale, body)
    if db.returning_clause and not isinstance(db, SqliteDatabase):
        cursor = execute("insert_event_returning", _INSERT_EVENT + ' RETURNING "cursor"',
                         params)
        return int(cursor.fetchone()[0])
    cursor = execute("insert_event", _INSERT_EVENT, params)
    return int(cursor.lastrowid)


def insert_delivery(event_cursor: int, endpoint: str, subject: str, sequence: int,
                    status: str, next_attempt_ms: int, created_ms: int) -> None:
    execute("insert_delivery", _INSERT_DELIVERY,
            (event_cursor, endpoint, subject, sequence, status, next_attempt_ms, created_ms))


# ---- several rows per statement (pipeline.apply_many, inbox.ingest_many) ----------------

# SQLite before 3.32 allows 999 bound parameters per statement; stay under it everywhere.
MAX_PARAMS = 999


def supports_returning() -> bool:
    """Whether INSERT ... RETURNING works here (PostgreSQL; SQLite 3.35 or later)."""
    db = _db()
    if isinstance(db, SqliteDatabase):
        return sqlite3.sqlite_version_info >= (3, 35)
    return bool(db.returning_clause)


def _chunks(rows: Sequence[Sequence[Any]], width: int) -> Sequence[Sequence[Sequence[Any]]]:
    size = max(1, MAX_PARAMS // width)
    if len(rows) <= size:
        return (rows,)
    return [rows[i:i + size] for i in range(0, len(rows), size)]


def many(name: str, head: str, row: str, tail: str, rows: Sequence[Sequence[Any]],
         width: int) -> list[Any]:
    """Run `head` + `row` x n + `tail` per chunk of `rows`; return the rows fetched, if any."""
    fetched: list[Any] = []
    for _, cursor in _each(name, head, row, tail, rows, width):
        if "RETURNING" in tail:
            fetched.extend(cursor.fetchall())
    return fetched


def _each(name: str, head: str, row: str, tail: str, rows: Sequence[Sequence[Any]],
          width: int) -> Iterator[tuple[Sequence[Sequence[Any]], Any]]:
    """`many`'s statements, one per chunk: each chunk and its driver cursor."""
    db = _db()
    for chunk in _chunks(rows, width):
        key = f"{name}/{len(chunk)}"
        text = _texts.get((key, db.param))
        if text is None:
            text = _text(db, key, head + ", ".join([row] * len(chunk)) + tail)
        yield chunk, db.execute_sql(text, tuple(chain.from_iterable(chunk)))  # type: ignore[no-untyped-call]


def row_marks(width: int, extra: str = "") -> str:
    return "(" + ", ".join(["{p}"] * width) + extra + ")"


def load_purchases(keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], PurchaseView]:
    """The stored purchases among `keys` ((platform, subject_key) pairs)."""
    by_platform: dict[str, list[str]] = {}
    for platform, key in keys:
        by_platform.setdefault(platform, []).append(key)
    found: dict[tuple[str, str], PurchaseView] = {}
    head = _SELECT_PURCHASE.replace('"subject_key" = {p}', '"subject_key" IN (')
    for platform, subject_keys in by_platform.items():
        for chunk in _chunks([(k,) for k in subject_keys], 1):
            template = head + ", ".join(["{p}"] * len(chunk)) + ")"
            cursor = execute(f"select_purchases/{len(chunk)}", template,
                             (platform, *(k for (k,) in chunk)))
            for row in cursor.fetchall():
                view = purchase_of(row)
                found[(view.platform, view.subject_key)] = view
    return found


def purchase_of(row: Sequence[Any]) -> PurchaseView:
    """The view of a purchase row (PurchaseView's columns, in order)."""
    values = list(row)
    if values[_AUTO_RENEW] is not None:  # SQLite hands booleans back as 0/1
        values[_AUTO_RENEW] = bool(values[_AUTO_RENEW])
    values[_PERIOD_PENDING] = bool(values[_PERIOD_PENDING])
    return PurchaseView(*values)


def users_of_app_users(app_user_ids: Collection[str]) -> dict[str, str]:
    """appUserId -> user id, for those minted by relay."""
    found: dict[str, str] = {}
    for chunk in _chunks([(a,) for a in app_user_ids], 1):
        template = ('SELECT "app_user_id", "user_id" FROM "app_user" WHERE "app_user_id" IN ('
                    + ", ".join(["{p}"] * len(chunk)) + ")")
        for app_user_id, user_id in execute(f"users_of_app_users/{len(chunk)}", template,
                                            tuple(a for (a,) in chunk)).fetchall():
            found[str(app_user_id)] = str(user_id)
    return found


# Columns of the purchase's own indexes (besides its key). SQLite rewrites an index's entry
# whenever an UPDATE sets one of its columns, even to the value it had (a leaf page more
# in the WAL per index): an upsert sets these only for rows where they changed.
_INDEXED = ("user_id", "app_user_id", "latest_ref", "next_poll_ms")
_PLAIN = tuple(c for c in _MUTABLE if c != "created_ms" and c not in _INDEXED)
_UPSERT_HEAD = ('INSERT INTO "purchase" (' + ", ".join(f'"{c}"' for c in _PURCHASE_COLUMNS)
                + ', "poll_failures") VALUES ')
_UPSERT_ROW = row_marks(len(_PURCHASE_COLUMNS), ", 0")
_ALL_INDEXED = (True,) * len(_INDEXED)


def _upsert_tail(changed: tuple[bool, ...]) -> str:
    columns = _PLAIN + tuple(c for c, moved in zip(_INDEXED, changed, strict=True) if moved)
    return (' ON CONFLICT ("platform", "subject_key") DO UPDATE SET '
            + ", ".join(f'"{c}" = excluded."{c}"' for c in columns))


_UPSERT_TAILS = {_ALL_INDEXED: _upsert_tail(_ALL_INDEXED)}


def upsert_purchases(views: Sequence[PurchaseView],
                     stored: Mapping[tuple[str, str], PurchaseView] | None = None) -> None:
    """Insert or update whole purchase rows (the key decides; `created_ms` is kept).

    `stored`: rows as they are in the database now (read in this transaction); an
    indexed column equal there is left out of that row's UPDATE (same result, fewer
    index pages written). Rows with the same changed columns share one statement."""
    by_change: dict[tuple[bool, ...], list[list[Any]]] = {}
    for v in views:
        row = list(_purchase_values(v))
        row[_STATE] = str(row[_STATE])
        old = stored.get((v.platform, v.subject_key)) if stored else None
        changed = _ALL_INDEXED if old is None else (  # _INDEXED, spelt out: 20x faster
            old.user_id != v.user_id, old.app_user_id != v.app_user_id,
            old.latest_ref != v.latest_ref, old.next_poll_ms != v.next_poll_ms)
        by_change.setdefault(changed, []).append(row)
    for changed, rows in by_change.items():
        tail = _UPSERT_TAILS.get(changed)
        if tail is None:
            tail = _UPSERT_TAILS[changed] = _upsert_tail(changed)
        name = "upsert_purchases/" + "".join("1" if c else "0" for c in changed)
        many(name, _UPSERT_HEAD, _UPSERT_ROW, tail, rows, len(_PURCHASE_COLUMNS))


EventRow = tuple[str, str, str, str | None, str | None, int | None, str | None, int, int,
                 str | None, bool, str]


def insert_events(rows: Sequence[EventRow]) -> dict[str, int]:
    """Insert events (the 12 columns of `insert_event`, in order); return id -> cursor."""
    if not supports_returning():
        return {r[0]: insert_event(*r) for r in rows}
    head = _INSERT_EVENT.split("VALUES")[0] + "VALUES "
    if not isinstance(_db(), SqliteDatabase):
        fetched = many("insert_events", head, row_marks(12), ' RETURNING "cursor", "id"',
                       rows, 12)
        return {str(eid): int(cursor) for cursor, eid in fetched}
    # SQLite gives each new row the largest cursor + 1 (`cursor` is the rowid): a chunk's
    # rows take consecutive cursors ending at `lastrowid`. Checked at the first row; RETURNING
    # would cost ~1.5 µs a row more.
    found: dict[str, int] = {}
    for chunk, cursor in _each("insert_events_sqlite", head, row_marks(12), "", rows, 12):
        first = int(cursor.lastrowid) - len(chunk) + 1
        if len(chunk) == 1:  # one row: its rowid is lastrowid
            found[chunk[0][0]] = first
            continue
        at = execute("event_cursor_of", 'SELECT "cursor" FROM "event" WHERE "id" = {p}',
                     (chunk[0][0],)).fetchone()
        if at is not None and at[0] == first:
            found.update((r[0], first + i) for i, r in enumerate(chunk))
            continue
        marks = ", ".join(["{p}"] * len(chunk))  # not consecutive: read them back
        found.update((str(eid), int(c)) for c, eid in execute(
            f"event_cursors/{len(chunk)}", f'SELECT "cursor", "id" FROM "event" WHERE "id" '
            f"IN ({marks})", tuple(r[0] for r in chunk)).fetchall())
    return found


DeliveryRow = tuple[int, str, str, int, str, int, int]


def insert_deliveries(rows: Sequence[DeliveryRow]) -> None:
    """Insert outbox rows (the 7 columns of `insert_delivery`, in order)."""
    head, row = _INSERT_DELIVERY.split("VALUES ")
    many("insert_deliveries", head + "VALUES ", row, "", rows, 7)


InboxRow = tuple[str, str, int, int, str, bytes]


def insert_inbox_many(rows: Sequence[InboxRow]) -> set[str]:
    """Insert inbox rows with distinct event ids; return the ids that were new."""
    if not supports_returning():
        return {r[0] for r in rows if insert_inbox(*r)}
    head = _INSERT_INBOX.split("VALUES")[0] + "VALUES "
    if not isinstance(_db(), SqliteDatabase):
        fetched = many("insert_inbox_many", head, row_marks(6),
                       ' ON CONFLICT ("event_id") DO NOTHING RETURNING "event_id"', rows, 6)
        return {str(eid) for (eid,) in fetched}
    # SQLite: the ids not stored yet are the ones this INSERT adds, as the write group
    # holds the database's write lock (or, in a deferred transaction, fails to upgrade
    # its read if another writer came first); RETURNING would cost ~1.5 µs a row more.
    stored: set[str] = set()
    for chunk in _chunks(rows, 1):
        marks = ", ".join(["{p}"] * len(chunk))
        stored.update(eid for (eid,) in execute(
            f"inbox_stored/{len(chunk)}", f'SELECT "event_id" FROM "inbox" WHERE "event_id" '
            f"IN ({marks})", tuple(r[0] for r in chunk)).fetchall())
    new = [r for r in rows if r[0] not in stored]
    if new:  # no ON CONFLICT: a clash here would be a bug, not a duplicate
        many("insert_inbox_new", head, row_marks(6), "", new, 6)
    return {r[0] for r in new}


# ---- the input log and routing held for an unknown environment ---------------------------

InputRow = tuple[str, str, str, int, int, str | None, str | None, str | None, str | None,
                 str | None, int | None, str | None, str | None, str | None, str | None,
                 str | None, str | None]
_INPUT_COLUMNS = ("platform", "subject_key", "source", "received_ms", "observed_ms",
                  "store_type", "store_subtype", "event_type", "ref", "transaction_id",
                  "expires_ms", "state_before", "state_after", "event_ids", "inbox_event_id",
                  "user_id", "body")


def insert_inputs(rows: Sequence[InputRow]) -> None:
    """Append input-log rows (the 17 columns of `InputRow`, in order): one statement for
    a whole write group (per 58 rows: SQLite's parameter limit)."""
    head = ('INSERT INTO "input_log" (' + ", ".join(f'"{c}"' for c in _INPUT_COLUMNS)
            + ', "repeats") VALUES ')
    many("insert_inputs", head, row_marks(len(_INPUT_COLUMNS), ", 1"), "", rows,
         len(_INPUT_COLUMNS))


def route_unrouted(subject: str, send: Collection[str], hold: Collection[str],
                   now_ms: int) -> None:
    """Deliveries of `subject` that waited for its environment: those for endpoints in
    `send` become pending, in `hold` held; the others (their endpoint takes another
    environment) are removed: the environment says they were never theirs."""
    for status, names in (("pending", send), ("held", hold)):
        if names:
            marks = ", ".join(["{p}"] * len(names))
            execute(f"route_unrouted/{status}/{len(names)}",
                    'UPDATE "delivery" SET "status" = {p}, "next_attempt_ms" = {p} '
                    'WHERE "subject" = {p} AND "status" = \'unrouted\' '
                    f'AND "endpoint" IN ({marks})', (status, now_ms, subject, *names))
    execute("route_unrouted/drop", 'DELETE FROM "delivery" WHERE "subject" = {p} '
            'AND "status" = \'unrouted\'', (subject,))
