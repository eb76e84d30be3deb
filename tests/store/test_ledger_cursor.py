"""The ledger's next cursor: a write group takes the one its connection's last group left
free when no other connection has committed since (SQLite), else reads the largest.
Cursors stay unique and in commit order with two stores on one file, after a rollback,
and after a backfill on the same connection."""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
from pathlib import Path

import pytest

from relay.core.domain import Snapshot, State, TxnFact
from relay.runtime import rules_from
from relay.store import ledger, pipeline
from relay.store.database import Store
from relay.store.models import database
from tests.conftest import make_config

T = 1_700_000_000_000
DAY_MS = 86_400_000
_n = itertools.count()


def _snap(key: str) -> Snapshot:
    i = next(_n)
    return Snapshot(platform="apple", subject_key=key, source="verify", observed_ms=T + i,
                    received_ms=T + i, kind="subscription", product_id="premium.monthly",
                    state=State.ACTIVE, expires_ms=T + 30 * DAY_MS + i,
                    environment="production", user_id="u1",
                    transactions=(TxnFact(f"{key}-t{i}", "premium.monthly", T + i,
                                          T + 30 * DAY_MS + i, observed_ms=T + i),))


def _cursors() -> list[int]:
    return [int(c) for (c,) in database.execute_sql(
        'SELECT "cursor" FROM "ledger" ORDER BY "cursor"').fetchall()]


def _other_process_records(path: str, tid: str) -> None:
    """Another writer on the file (a second instance, the CLI): its own row at MAX + 1."""
    with sqlite3.connect(path, isolation_level=None) as conn:
        conn.execute("BEGIN IMMEDIATE")
        (top,) = conn.execute('SELECT COALESCE(MAX("cursor"), 0) FROM "ledger"').fetchone()
        values = (top + 1, "apple", tid, "z", None, None, None, None, None, None, None, None,
                  None, None, T, T, T, 1, "recorded")
        conn.execute(f'INSERT INTO "ledger" ({", ".join(ledger.COLUMNS)}) VALUES '
                     f'({", ".join("?" * len(values))})', values)
        conn.execute("COMMIT")
    conn.close()


async def test_another_connection_on_the_file_is_seen(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    if config.store.url:
        pytest.skip("SQLite: the kept cursor is SQLite's")
    rules = rules_from(config)
    store = Store(config.store)
    await store.open()
    try:
        for n, step in enumerate("sso" + "sos" + "oos"):
            if step == "s":
                await store.write(lambda: pipeline.apply(_snap("a"), rules, T))
            else:
                await asyncio.to_thread(_other_process_records, config.store.path, f"z{n}")
        cursors = await store.read(_cursors)
        assert cursors == list(range(1, 10))
    finally:
        await store.close()


async def test_a_rolled_back_group_leaves_the_cursors_unique(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    rules = rules_from(config)
    store = Store(config.store)
    await store.open()
    try:
        await store.write(lambda: pipeline.apply(_snap("a"), rules, T))

        def fails() -> None:
            pipeline.apply(_snap("a"), rules, T)
            raise RuntimeError("rolled back")

        with pytest.raises(RuntimeError):
            await store.write(fails)
        for _ in range(3):
            await store.write(lambda: pipeline.apply(_snap("b"), rules, T))
        cursors = await store.read(_cursors)
        assert cursors == sorted(set(cursors)) and len(cursors) == 4
        assert cursors[0] == 1 and cursors[1] in (2, 3)  # a gap at most
    finally:
        await store.close()


async def test_a_backfill_on_the_same_connection_is_seen(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    rules = rules_from(config)
    store = Store(config.store)
    await store.open()
    try:
        def refill() -> int:  # as ledger_backfill does: rows at next_cursor() and on
            pipeline.apply(_snap("a"), rules, T)  # keeps a cursor for the next group
            cursor = ledger.next_cursor()
            ledger.upsert([(cursor + i, "apple", f"bf{i}", "z", None, None, None, None, None,
                            None, None, None, None, None, T, T, T, 1, "recorded")
                           for i in range(3)])
            return cursor

        await store.write(lambda: pipeline.apply(_snap("a"), rules, T))
        assert await store.write(refill) == 3
        await store.write(lambda: pipeline.apply(_snap("b"), rules, T))
        assert await store.read(_cursors) == list(range(1, 7))
    finally:
        await store.close()
