"""Migration 11 (fewer indexes written per webhook) on an existing store, and the purchase
upsert that leaves unchanged indexed columns out of its UPDATE."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest
from peewee import Database, SqliteDatabase

from relay.core.domain import PurchaseView, State
from relay.store import lookups, migrations, statements
from relay.store.connection import make_database
from relay.store.models import Purchase, database
from tests.support.store import store_config


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    d = make_database(store_config(tmp_path, "ix"))
    database.initialize(d)
    d.connect()
    yield d
    d.close()


def indexes(db: Database, table: str) -> set[str]:
    return {i.name for i in db.get_indexes(table)}


def _purchase(db: Database, platform: str, key: str, latest_ref: str) -> None:
    p = db.param
    db.execute_sql(  # type: ignore[no-untyped-call]
        "INSERT INTO purchase (platform, subject_key, kind, state, store_time_ms, sequence, "
        f"created_ms, updated_ms, poll_failures, period_pending, latest_ref) VALUES ({p}, "
        f"{p}, 'subscription', 'active', 0, 0, 0, 0, 0, FALSE, {p})", (platform, key, latest_ref))


def at_version_10(db: Database) -> None:
    """A store as relay up to schema 10 made it: the models created these two indexes
    then (migration 1 creates the tables from today's models, which no longer do)."""
    migrations.migrate(db, target=10)
    db.execute_sql('CREATE INDEX IF NOT EXISTS "event_attesto_event_id" '  # type: ignore[no-untyped-call]
                   'ON "event" ("attesto_event_id")')
    db.execute_sql('CREATE INDEX IF NOT EXISTS "delivery_event_cursor" '  # type: ignore[no-untyped-call]
                   'ON "delivery" ("event_cursor")')


def test_migration_11_on_an_existing_store_keeps_the_lookups(db: Database) -> None:
    at_version_10(db)
    assert {"event_attesto_event_id"} <= indexes(db, "event")
    assert {"delivery_event_cursor", "delivery_event_cursor_endpoint"} <= indexes(db, "delivery")
    assert "purchase_platform_latest_ref" in indexes(db, "purchase")
    _purchase(db, "google", "root-1", "token-2")
    _purchase(db, "apple", "o1", "token-2")  # an Apple row with the same ref: never a match
    assert migrations.migrate(db) == [11]
    assert "event_attesto_event_id" not in indexes(db, "event")
    assert "delivery_event_cursor" not in indexes(db, "delivery")
    assert "delivery_event_cursor_endpoint" in indexes(db, "delivery")
    purchase = indexes(db, "purchase")
    assert "purchase_platform_latest_ref" not in purchase
    assert "purchase_google_latest_ref" in purchase
    with db.atomic():
        row = lookups.google_row("token-2")
        assert row is not None and (row.platform, row.subject_key) == ("google", "root-1")
        assert lookups.google_row("root-1") is not None
        assert lookups.google_row("o1") is None
    if isinstance(db, SqliteDatabase):  # the newest-token lookup reads the partial index
        sql, params = Purchase.select().where(
            lookups.GOOGLE & (Purchase.latest_ref == "t")).sql()
        plan = str(db.execute_sql("EXPLAIN QUERY PLAN " + sql, params).fetchall())
        assert "purchase_google_latest_ref" in plan


def test_a_new_store_has_the_same_indexes_as_a_migrated_one(tmp_path: Path,
                                                             db: Database) -> None:
    migrations.migrate(db)
    fresh = {t: indexes(db, t) for t in ("purchase", "event", "delivery")}
    other = make_database(store_config(tmp_path, "ix10"))
    database.initialize(other)
    other.connect()
    try:
        at_version_10(other)
        assert migrations.migrate(other) == [11]
        assert {t: indexes(other, t) for t in fresh} == fresh
    finally:
        other.close()
        database.initialize(db)


def _view(**kw: object) -> PurchaseView:
    base = PurchaseView(
        platform="apple", subject_key="o1", kind="subscription", user_id=None,
        app_user_id=None, product_id="p", base_plan_id=None, state=State.ACTIVE,
        state_reason=None, environment=None, expires_ms=10, auto_renew=True,
        latest_ref="t1", package_name=None, store_time_ms=1, sequence=1, created_ms=1,
        updated_ms=1, next_poll_ms=100)
    return dataclasses.replace(base, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("change", [
    {}, {"user_id": "u1"}, {"next_poll_ms": 200, "latest_ref": "t2"},
    {"user_id": "u1", "app_user_id": "a1", "latest_ref": "t2", "next_poll_ms": None},
    {"state": State.EXPIRED, "expires_ms": 20}])
def test_upsert_with_the_stored_rows_writes_the_whole_row(db: Database,
                                                          change: dict[str, object]) -> None:
    """Columns left out of the UPDATE (equal in `stored`) keep their value; the others
    take the new one; several change sets in one call each get their statement."""
    migrations.migrate(db)
    old = [_view(), _view(subject_key="o2", user_id="u9", next_poll_ms=5)]
    new = [dataclasses.replace(v, **change, sequence=2, updated_ms=2)  # type: ignore[arg-type]
           for v in old] + [_view(subject_key="o3")]
    with db.atomic():
        statements.upsert_purchases(old)
        statements.upsert_purchases(new, {(v.platform, v.subject_key): v for v in old})
        got = statements.load_purchases([(v.platform, v.subject_key) for v in new])
    assert [got[(v.platform, v.subject_key)] for v in new] == new


def _event(eid: str) -> statements.EventRow:
    return (eid, "test", "webhook", None, None, None, None, 1, 1, None, False, "{}")


@pytest.mark.parametrize("top", [None, 2**63 - 1])
def test_insert_events_returns_the_stored_cursors(db: Database, top: int | None) -> None:
    """Without RETURNING on SQLite: the cursors are read from `lastrowid`, or read back
    when the rowids are not consecutive (after the largest rowid, SQLite picks at random)."""
    if top is not None and not isinstance(db, SqliteDatabase):
        pytest.skip("SQLite's rowid (PostgreSQL's cursor is a serial)")
    migrations.migrate(db)
    with db.atomic():
        if top is not None:
            p = db.param
            db.execute_sql(  # type: ignore[no-untyped-call]
                'INSERT INTO "event" ("cursor", "id", "type", "source", "occurred_ms", '
                f'"received_ms", "stale", "body") VALUES ({p}, {p}, {p}, {p}, 1, 1, FALSE, '
                "'{}')", (top, "rly_top", "test", "webhook"))
        got = statements.insert_events([_event(f"rly_{i}") for i in range(100)])
        stored = dict(db.execute_sql(  # type: ignore[no-untyped-call]
            'SELECT "id", "cursor" FROM "event" WHERE "id" <> \'rly_top\'').fetchall())
    assert got == stored and len(got) == 100


def test_insert_inbox_many_tells_the_new_ids(db: Database) -> None:
    migrations.migrate(db)

    def row(eid: str) -> statements.InboxRow:
        return (eid, "test", 1, 1, "{}", b"raw")

    with db.atomic():
        assert statements.insert_inbox_many([row("evt_1"), row("evt_2")]) == {"evt_1", "evt_2"}
        assert statements.insert_inbox_many(
            [row("evt_2"), row("evt_3"), row("evt_1"), row("evt_4")]) == {"evt_3", "evt_4"}
        assert statements.insert_inbox_many([row("evt_4")]) == set()
        count = db.execute_sql('SELECT COUNT(*) FROM "inbox"').fetchone()[0]  # type: ignore[no-untyped-call]
    assert count == 4
