"""Two stores on one PostgreSQL database (PostgreSQL only: RELAY_TEST_POSTGRES_URL).

The advisory write lock (relay/store.py) makes event cursors commit-ordered: a reader paging
`event` by cursor with GET /v1/events' query never skips an event, even while two stores
(two instances) append concurrently. Without the lock, an event whose transaction drew its
cursor first but committed last is skipped; the orchestrated test shows both. And a store
whose connection is terminated (PostgreSQL restart, failover) reconnects without losing
anything it acknowledged.

Each Store has its own Database object (as two instances have their own processes), so the
queries here name their database explicitly rather than go through the global proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import random
import threading

import psycopg2
import pytest
from peewee import Database

from relay.core.errors import StoreUnavailableError
from relay.store.database import Store
from relay.store.models import Event
from tests.support.store import ON_POSTGRES, POSTGRES_URL, create_database

pytestmark = pytest.mark.skipif(not ON_POSTGRES, reason="needs RELAY_TEST_POSTGRES_URL")
_ids = itertools.count()


def insert_events(db: Database, prefix: str, n: int) -> list[str]:
    """Append `n` events (on the store thread, inside its write transaction)."""
    out = []
    for _ in range(n):
        eid = f"{prefix}-{next(_ids)}"
        Event.insert(id=eid, type="subscription.renewed", source="webhook", occurred_ms=1,
                     received_ms=1, body=json.dumps({"id": eid})).execute(db)
        out.append(eid)
    return out


def events_page(db: Database, after: int, limit: int) -> list[tuple[int, str]]:
    """GET /v1/events' query (relay/routes/events.py), with the event id for the check."""
    query = (Event.select(Event.cursor, Event.id).where(Event.cursor > after)
             .order_by(Event.cursor).limit(limit))
    return [(e.cursor, e.id) for e in query.execute(db)]


class Reader:
    """Pages forward by cursor, as a client of GET /v1/events does; never looks back."""

    def __init__(self, store: Store) -> None:
        self.store, self.after, self.seen = store, 0, list[tuple[int, str]]()

    async def page(self, limit: int = 50) -> list[tuple[int, str]]:
        rows = await self.store.read(lambda: events_page(self.store.db, self.after, limit))
        assert all(c > self.after for c, _ in rows)
        assert [c for c, _ in rows] == sorted(c for c, _ in rows)
        if rows:
            self.after = rows[-1][0]
        self.seen += rows
        return rows

    async def catch_up(self) -> None:
        while await self.page():
            pass


def all_events(url: str) -> dict[str, int]:
    conn = psycopg2.connect(url)
    try:
        cur = conn.cursor()
        cur.execute("SELECT id, cursor FROM event")
        return {str(eid): int(cursor) for eid, cursor in cur.fetchall()}
    finally:
        conn.close()


async def open_stores(url: str, n: int) -> list[Store]:
    from relay.config import StoreConfig

    stores = []
    for _ in range(n):
        stores.append(Store(StoreConfig(url=url)))
        await stores[-1].open()
    return stores


@pytest.mark.parametrize("locked", [True, False], ids=["with-lock", "without-lock"])
async def test_two_writers_a_reader_never_skips(locked: bool) -> None:
    """Many small write groups from two stores at once; the reader pages all along.

    Without the lock (the demonstration that this test can fail) hundreds of the ~1,400
    events were skipped in each of 6 runs here.
    """
    url = create_database(f"relay_lock_{os.getpid()}_{locked}")
    a, b, r = await open_stores(url, 3)
    if not locked:
        a._write_lock_sql = b._write_lock_sql = None
    reader = Reader(r)
    acknowledged: list[str] = []
    rand = random.Random(9)

    async def writer(store: Store, name: str) -> None:
        for _ in range(60):
            n = rand.randint(1, 3)
            acknowledged.extend(await store.write(
                lambda n=n: insert_events(store.db, name, n)))  # type: ignore[misc]

    try:
        writers = asyncio.gather(*(writer(s, f"{s_name}{i}") for s_name, s in (("a", a),
                                                                             ("b", b))
                                   for i in range(6)))
        while not writers.done():
            await reader.page()
            await asyncio.sleep(0)  # let the writers' groups in between pages
        await writers
        await reader.catch_up()
    finally:
        for s in (a, b, r):
            await s.close()
    committed = all_events(url)
    assert set(acknowledged) <= committed.keys()
    seen = [eid for _, eid in reader.seen]
    skipped = sorted(committed.keys() - set(seen))
    assert a.groups_committed > 1 and b.groups_committed > 1
    assert len(seen) == len(set(seen))
    if not locked:
        print(f"\nwithout the write lock: {len(skipped)} of {len(committed)} events skipped")
        assert skipped, "expected skips without the write lock"
        return
    assert skipped == [], f"{len(skipped)} events committed behind the reader's cursor"
    assert len(seen) == len(committed)


async def advisory_waiters(store: Store) -> int:
    sql = ("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
           "AND wait_event = 'advisory' AND datname = current_database()")
    return int(await store.read(lambda: store.db.execute_sql(sql).fetchone()[0]))


@pytest.mark.parametrize("locked", [True, False], ids=["with-lock", "without-lock"])
async def test_a_late_commit_is_never_behind_the_reader(locked: bool) -> None:
    """A draws its cursor and holds its transaction open; B writes; the reader pages.

    With the lock, B waits for A's commit, so the reader sees A then B. Without it, B
    commits a larger cursor first, the reader moves past it, and A's event is skipped.
    """
    url = create_database(f"relay_lock_{os.getpid()}_{locked}")
    a, b, r = await open_stores(url, 3)
    if not locked:
        a._write_lock_sql = b._write_lock_sql = None  # what the lock prevents
    reader = Reader(r)
    inserted, release = threading.Event(), threading.Event()

    def slow_a() -> list[str]:
        ids = insert_events(a.db, "a", 1)
        inserted.set()
        assert release.wait(30), "the test never released A"
        return ids

    try:
        a_write = asyncio.ensure_future(a.write(slow_a))
        assert await asyncio.to_thread(inserted.wait, 30)
        b_write = asyncio.ensure_future(b.write(lambda: insert_events(b.db, "b", 1)))
        if locked:
            async with asyncio.timeout(30):  # B's transaction queues on the lock
                while await advisory_waiters(r) < 1:
                    await asyncio.sleep(0.01)
        else:
            await b_write  # committed while A's transaction is open
        await reader.page()
        release.set()
        (a_id,), (b_id,) = await a_write, await b_write
        await reader.catch_up()
    finally:
        release.set()
        for s in (a, b, r):
            await s.close()
    cursors = all_events(url)
    seen = [eid for _, eid in reader.seen]
    if locked:
        assert seen == [a_id, b_id] and cursors[a_id] < cursors[b_id]
    else:
        # A drew the smaller cursor but committed after the reader had passed B's.
        assert cursors[a_id] < cursors[b_id]
        assert seen == [b_id], "expected the skip the write lock exists to prevent"


async def terminate_backends(url: str) -> int:
    def run() -> int:
        conn = psycopg2.connect(POSTGRES_URL)
        conn.autocommit = True
        try:
            cur = conn.cursor()
            cur.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE datname = %s AND pid <> pg_backend_pid()",
                        (url.rsplit("/", 1)[1],))
            return int(cur.fetchone()[0])
        finally:
            conn.close()

    return await asyncio.to_thread(run)


async def test_terminated_connections_reconnect_and_nothing_committed_is_lost() -> None:
    """pg_terminate_backend mid-run: a write or read in hand may fail (503), the next
    one succeeds on a new connection, and every acknowledged write is in the database."""
    url = create_database(f"relay_reconnect_{os.getpid()}")
    (store,) = await open_stores(url, 1)
    acknowledged: list[str] = []
    failures = 0
    terminated = asyncio.Event()
    after: dict[int, int] = {}  # writer -> writes acknowledged after the termination

    async def writer(i: int) -> None:
        nonlocal failures
        streak = 0
        while after.get(i, 0) < 20:
            try:
                acknowledged.extend(await store.write(
                    lambda: insert_events(store.db, f"w{i}", 1)))
            except StoreUnavailableError:
                failures += 1
                streak += 1
                assert streak < 3, "the store did not reconnect"
                continue
            streak = 0
            if terminated.is_set():
                after[i] = after.get(i, 0) + 1
            elif len(acknowledged) >= 100 and not terminated.is_set():
                terminated.set()
                assert await terminate_backends(url) >= 1

    try:
        await asyncio.gather(*(writer(i) for i in range(4)))
        # Again while idle, then a read first: it may fail once, the next one succeeds.
        assert await terminate_backends(url) >= 1
        with contextlib.suppress(StoreUnavailableError):  # the one on the dead connection
            await store.read(lambda: Event.select().count(store.db))
        count = await store.read(lambda: Event.select().count(store.db))
        assert await store.ping()
    finally:
        await store.close()
    committed = all_events(url)
    assert set(acknowledged) <= committed.keys()
    assert count == len(committed)
    print(f"\nreconnect: {len(acknowledged)} writes acknowledged, {failures} failed with 503, "
          f"{len(committed) - len(acknowledged)} committed but not acknowledged")

