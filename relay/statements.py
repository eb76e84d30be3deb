"""Prebuilt SQL for the hot write path: each text is built once per database and reused.

Peewee builds every query anew (~100 µs a statement, 10x the driver); these run through
`db.execute_sql` with bound parameters instead. Portable SQL only (SQLite and PostgreSQL):
quoted identifiers, `ON CONFLICT ... DO NOTHING`, RETURNING only where the driver needs it.
Call only on the store thread, inside its transaction.
"""

from __future__ import annotations

from typing import Any

from peewee import Database, SqliteDatabase

from relay.models import database

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


def is_sqlite() -> bool:
    return isinstance(_db(), SqliteDatabase)
