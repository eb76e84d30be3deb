"""Store: migrations on empty and older databases, round trips, group commit isolation."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from peewee import IntegrityError, SqliteDatabase

from relay.config import StoreConfig
from relay.core.errors import StoreUnavailableError
from relay.store import migrations
from relay.store.models import SCHEMA_VERSION, Delivery, Event, Inbox, Meta, Purchase, database
from tests.support.store import POSTGRES_URL, sqlite_only, store_config


def cfg(tmp_path: Path) -> StoreConfig:
    return store_config(tmp_path, "s")


async def open_store(tmp_path: Path, **kw: object):  # type: ignore[no-untyped-def]
    from relay.store.database import Store

    store = Store(cfg(tmp_path), **kw)  # type: ignore[arg-type]
    await store.open()
    return store


def tables(path: Path) -> set[str]:
    db = SqliteDatabase(str(path))
    names = set(db.get_tables())
    db.close()
    return names


@pytest.mark.parametrize("start", range(SCHEMA_VERSION))
def test_each_migration_from_every_earlier_version(tmp_path: Path, start: int) -> None:
    db = SqliteDatabase(str(tmp_path / "m.sqlite3"))
    database.initialize(db)
    db.connect()
    applied = migrations.migrate(db, target=start) if start else []
    assert applied == list(range(1, start + 1))
    assert migrations.current_version(db) == start
    if start:
        with pytest.raises(migrations.SchemaError, match="run `relay migrate`"):
            migrations.check(db)
    assert migrations.migrate(db) == list(range(start + 1, SCHEMA_VERSION + 1))
    assert migrations.check(db) == SCHEMA_VERSION
    assert migrations.migrate(db) == []
    db.close()
    assert {"purchase", "inbox", "event", "delivery", "attempt", "app_user",
            "lease", "meta"} <= tables(tmp_path / "m.sqlite3")


async def test_refuses_a_newer_schema(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    await store.write(lambda: Meta.update(value=str(SCHEMA_VERSION + 1)).where(
        Meta.key == "schema_version").execute())
    await store.close()
    from relay.store.database import Store

    again = Store(cfg(tmp_path))
    with pytest.raises(migrations.SchemaError, match="newer than this relay"):
        await again.open()


async def test_no_auto_migrate_refuses_an_empty_database(tmp_path: Path) -> None:
    from relay.store.database import Store

    store = Store(cfg(tmp_path))
    with pytest.raises(migrations.SchemaError, match="version 0"):
        await store.open(migrate=False)


async def test_round_trip_and_sql_runs_off_the_loop_thread(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    seen: list[str] = []

    def put() -> None:
        seen.append(threading.current_thread().name)
        Inbox.insert(event_id="evt_1", event_type="test", received_ms=1,
                     signature_t=1, headers="{}", body=b"\x00raw").execute()

    await store.write(put)
    row = await store.read(lambda: Inbox.get_by_id("evt_1"))
    assert bytes(row.body) == b"\x00raw"
    assert seen == ["relay-db"]
    assert threading.current_thread().name != "relay-db"
    await store.close()
    store = await open_store(tmp_path)  # durable across reopen
    assert await store.read(lambda: Inbox.select().count()) == 1
    await store.close()


async def test_one_failing_write_in_a_group_rolls_back_alone(tmp_path: Path) -> None:
    store = await open_store(tmp_path)

    def insert(eid: str) -> None:
        Inbox.insert(event_id=eid, event_type="t", received_ms=1, signature_t=1, headers="{}",
                     body=b"").execute()

    def half_then_fail() -> None:
        insert("evt_half")
        raise ValueError("boom")

    results = await asyncio.gather(
        store.write(lambda: insert("evt_a")), store.write(half_then_fail),
        store.write(lambda: insert("evt_a")), store.write(lambda: insert("evt_b")),
        return_exceptions=True)
    assert results[0] is None and results[3] is None
    assert isinstance(results[1], ValueError)
    assert isinstance(results[2], IntegrityError)
    ids = await store.read(lambda: sorted(r.event_id for r in Inbox.select()))
    assert ids == ["evt_a", "evt_b"]
    await store.close()


@sqlite_only
async def test_sqlite_keeps_temporary_files_in_memory(tmp_path: Path) -> None:
    # A savepoint's statement journal would otherwise be a file made per group commit.
    store = await open_store(tmp_path)
    mode = await store.read(lambda: store.db.execute_sql("PRAGMA temp_store").fetchone()[0])
    assert mode == 2  # MEMORY
    await store.close()


@sqlite_only
async def test_disk_full_fails_the_write_and_recovers(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    pages = await store.read(lambda: store.db.execute_sql("PRAGMA page_count").fetchone()[0])
    await store.read(lambda: store.db.execute_sql(f"PRAGMA max_page_count = {pages}"))

    def big() -> None:
        Inbox.insert(event_id="evt_big", event_type="t", received_ms=1, signature_t=1,
                     headers="{}", body=b"x" * 200_000).execute()

    with pytest.raises(StoreUnavailableError):
        await store.write(big)
    assert await store.read(lambda: Inbox.select().count()) == 0
    await store.read(lambda: store.db.execute_sql("PRAGMA max_page_count = 1073741823"))
    await store.write(big)
    assert await store.read(lambda: Inbox.select().count()) == 1
    await store.close()


async def test_closed_store_answers_unavailable(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    await store.close()
    with pytest.raises(StoreUnavailableError):
        await store.read(lambda: Purchase.select().count())
    assert not await store.ping()


async def test_models_are_portable_no_sqlite_only_types(tmp_path: Path) -> None:
    # The same models must create on PostgreSQL: no field type peewee maps only for SQLite.
    for model in (Purchase, Inbox, Event, Delivery):
        for f in model._meta.sorted_fields:
            assert f.field_type in {"VARCHAR", "TEXT", "BIGINT", "INT", "BOOL", "BLOB",
                                    "AUTO"}, (model, f.name)


async def test_nul_in_text_is_a_clear_400_on_every_backend(tmp_path: Path) -> None:
    from relay.core.errors import BadRequestError
    from relay.store.database import Store
    from tests.support.store import store_config

    store = Store(store_config(tmp_path, "nul"))
    await store.open()

    def put() -> None:
        Inbox.insert(event_id="evt_nul\x00", event_type="t", received_ms=1, signature_t=1,
                     headers="{}", body=b"").execute()

    try:
        await store.write(put)  # SQLite stores it; PostgreSQL refuses NUL in text
    except BadRequestError as exc:
        assert "NUL" in exc.message
    assert await store.ping()  # the connection survives either way
    await store.close()


# ---- the PostgreSQL URL reaches libpq whole (issue 16 item 10) ---------------------------


def test_every_url_option_and_the_decoded_password_reach_the_driver() -> None:
    """libpq's connection URI (PostgreSQL docs, "Connection URIs"): percent-encoded parts,
    any connection parameter as a query option. make_database passes them all."""
    from relay.store.connection import make_database

    db = make_database(StoreConfig(url=(
        "postgresql://app%20user:p%40ss%3Aw%2Frd@db.internal:6543/my%2Fdb?sslmode=verify-full"
        "&sslrootcert=/etc/relay/ca.pem&connect_timeout=7&application_name=relay"
        "&target_session_attrs=read-write")))
    assert db.database == "my/db"
    params = db.connect_params
    assert (params["user"], params["password"]) == ("app user", "p@ss:w/rd")
    assert (params["host"], str(params["port"])) == ("db.internal", "6543")
    assert {k: params[k] for k in ("sslmode", "sslrootcert", "connect_timeout",
                                   "application_name", "target_session_attrs")} == {
        "sslmode": "verify-full", "sslrootcert": "/etc/relay/ca.pem", "connect_timeout": "7",
        "application_name": "relay", "target_session_attrs": "read-write"}


@pytest.mark.parametrize("url", ["postgresql://u:pw@h/d?sslmod=require",
                                 "postgresql://u:p%zzw@h/d"])
def test_a_url_libpq_refuses_is_a_config_error_without_the_password(url: str) -> None:
    from relay.config import ConfigError
    from relay.store.connection import make_database

    with pytest.raises(ConfigError) as err:
        make_database(StoreConfig(url=url))
    assert "[store] url" in str(err.value)
    assert "pw" not in str(err.value).replace("p***", "") and "p%zzw" not in str(err.value)


@pytest.mark.skipif(not POSTGRES_URL, reason="needs RELAY_TEST_POSTGRES_URL")
def test_sslmode_require_reaches_the_connection() -> None:
    """The test server has no SSL: libpq itself refuses sslmode=require, which proves the
    option reached it; with sslmode=disable the server sees our application_name."""
    from peewee import OperationalError

    from relay.store.connection import make_database

    u = urlsplit(POSTGRES_URL)
    base = f"postgresql://{u.username or 'postgres'}:pa%40ss@{u.hostname}:{u.port or 5432}{u.path}"
    strict = make_database(StoreConfig(url=base + "?sslmode=require"))
    with pytest.raises(OperationalError, match="SSL"):
        strict.connect()
    plain = make_database(StoreConfig(url=base + "?sslmode=disable&application_name=relay-t"))
    plain.connect()
    try:
        assert plain.execute_sql("SELECT current_setting('application_name')").fetchone()[0] \
            == "relay-t"
        assert plain.connection().info.password == "pa@ss"
    finally:
        plain.close()


def test_migration_7_counts_the_attempts_already_kept(tmp_path: Path) -> None:
    """delivery_minute starts with the attempts made before the upgrade (the console's
    plots are not empty after it)."""
    db = SqliteDatabase(str(tmp_path / "m.sqlite3"))
    database.initialize(db)
    db.connect()
    migrations.migrate(db, target=6)
    db.execute_sql("INSERT INTO event (cursor, id, type, source, occurred_ms, received_ms, "
                   "stale, body) VALUES (1, 'e1', 't', 'webhook', 0, 0, 0, '{}')")
    for i, endpoint in enumerate(("a", "b"), 1):
        db.execute_sql("INSERT INTO delivery (id, event_cursor, endpoint, subject, sequence, "
                       "status, attempts, next_attempt_ms, created_ms) VALUES "
                       f"({i}, 1, '{endpoint}', 's', 1, 'pending', 0, 0, 0)")
    for delivery, started, status in [(1, 60_000, 500), (1, 61_000, None), (1, 62_000, 200),
                                      (1, 185_000, 204), (2, 60_500, 503)]:
        db.execute_sql("INSERT INTO attempt (delivery_id, started_ms, duration_ms, "
                       "status_code) VALUES (?, ?, 1, ?)", (delivery, started, status))
    migrations.migrate(db)
    rows = db.execute_sql("SELECT minute_ms, endpoint, delivered, failed FROM delivery_minute "
                          "ORDER BY minute_ms, endpoint").fetchall()
    db.close()
    assert rows == [(60_000, "a", 1, 2), (60_000, "b", 0, 1), (180_000, "a", 1, 0)]
