"""The database: one dedicated thread owns the connection; the event loop never runs SQL.

`Store.read(fn)` runs `fn()` on that thread. `Store.write(fn)` runs it inside a
transaction with group commit: every write queued while the thread was busy joins
one transaction (each in its own savepoint, so one failing unit rolls back alone),
and the whole group commits as soon as the thread is free, with no fixed wait.
`Store.write_many(batch, item)` does the same, but hands every item queued with the same
`batch` function to one call, so hot paths can use multi-row statements.
A caller's future resolves only after its COMMIT returned.

A SQLite file shared by several processes (`[server] workers > 1`) is written one group
at a time across all of them: each group takes an exclusive `flock` on `<file>.lock`
(the kernel wakes the next waiter at once, unlike SQLite's sleeping busy handler), then
BEGIN IMMEDIATE, so a group's reads and writes see no other writer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from peewee import (
    SqliteDatabase,
)

from relay.config import StoreConfig
from relay.core.errors import StoreUnavailableError
from relay.store import migrations
from relay.store.connection import (
    UNAVAILABLE,
    WRITE_LOCK_KEY,
    exclusive_write,
    make_database,
    translate,
    unavailable,
)
from relay.store.jobs import Job, Rollback, group_units, settle_all, unbatched
from relay.store.models import database

log = logging.getLogger("relay.store")

T = TypeVar("T")
ItemT = TypeVar("ItemT")
MAX_GROUP = 256


class Store:
    """The async facade over the database thread. Open with `await open()`."""

    def __init__(self, cfg: StoreConfig, environ: Mapping[str, str] | None = None,
                 pragmas: Mapping[str, Any] | None = None, *, shared: bool = False) -> None:
        """`shared`: other processes write the same SQLite file (worker processes)."""
        self.config = cfg
        self.db = make_database(cfg, environ, pragmas)
        self.is_sqlite = isinstance(self.db, SqliteDatabase)
        self.shared = shared and self.is_sqlite
        self._lock_path = Path(f"{self.db.database}.lock") if self.shared else None
        self._lock_file: Any = None  # opened on the thread, with the connection
        self._write_lock_sql = (None if self.is_sqlite
                                else f"SELECT pg_advisory_xact_lock({WRITE_LOCK_KEY})")
        self._queue: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self.last_heartbeat = 0.0  # loop time of the last job the thread finished
        self.groups_committed = 0
        self._commit_listeners: list[Callable[[], None]] = []
        self._savepoints = 0  # names of per-job savepoints (job_1, job_2, ...)

    @property
    def description(self) -> str:
        if not self.config.url:
            return str(self.db.database)
        parts = urlsplit(self.config.url)  # host, port and database: no user, password, query
        return "postgresql " + parts.netloc.rpartition("@")[2] + parts.path

    # ---- lifecycle -------------------------------------------------------------

    async def open(self, *, migrate: bool = True) -> int:
        """Start the thread, connect, and migrate (or check) the schema; return its version."""
        self._thread = threading.Thread(target=self._run, name="relay-db", daemon=True)
        self._thread.start()
        try:
            return await self.read(lambda: self._connect_and_migrate(migrate))
        except BaseException:
            await self.close()
            raise

    @property
    def owns_database(self) -> bool:
        """No other process writes here: claims left in it died with an earlier run."""
        return self.is_sqlite and not self.shared

    def _connect_and_migrate(self, migrate: bool) -> int:
        database.initialize(self.db)
        if self._lock_path is not None and self._lock_file is None:
            self._lock_file = open(self._lock_path, "a+b")  # noqa: SIM115 (closed on close)
        self.db.connect(reuse_if_open=True)
        if migrate:
            migrations.migrate(self.db)
        return migrations.check(self.db)

    async def close(self) -> None:
        thread = self._thread
        if thread is None:
            return
        try:
            await self.read(self._disconnect)
        finally:
            self._thread = None
            self._queue.put(None)
        await asyncio.get_running_loop().run_in_executor(None, thread.join)

    def _disconnect(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None
        if not self.db.is_closed():
            self.db.close()
        close_all = getattr(self.db, "close_all", None)  # a pool: really close, not recycle
        if close_all is not None:
            close_all()

    # ---- running work ------------------------------------------------------------

    async def read(self, fn: Callable[[], T]) -> T:
        """Run `fn()` on the database thread, outside any explicit transaction."""
        return await self._submit(fn, write=False)

    async def write(self, fn: Callable[[], T], *, notify: bool = True) -> T:
        """Run `fn()` in a transaction (group commit); return after COMMIT.

        `notify=False`: this write alone does not call the commit listeners (a worker's
        own claim must not wake that worker again).
        """
        return await self._submit(fn, write=True, notify=notify)

    async def write_many(self, batch: Callable[[list[ItemT]], list[T]], item: ItemT) -> T:
        """Run `batch([..., item, ...])` in a transaction (group commit); return after COMMIT.

        Every item submitted with the same `batch` function while the thread was busy is
        passed in one call, so the function can use a few multi-row statements for all of
        them. It must return one result per item, in order. If it raises for several
        items, each is run again alone in its own savepoint: only a failing item fails.
        """
        return await self._submit(unbatched, write=True, batch=batch, item=item)

    async def _submit(self, fn: Callable[[], T], *, write: bool, notify: bool = True,
                      batch: Callable[[list[Any]], list[Any]] | None = None,
                      item: Any = None) -> T:
        if self._thread is None:
            raise StoreUnavailableError("the store is not open")
        loop = asyncio.get_running_loop()
        job = Job(fn, write, loop, loop.create_future(), notify, batch=batch, item=item)
        self._queue.put(job)
        result: T = await job.future
        return result

    def add_commit_listener(self, listener: Callable[[], None]) -> None:
        """Call `listener()` on the event loop after every committed write group."""
        self._commit_listeners.append(listener)

    def committed_elsewhere(self) -> None:
        """Another process committed rows for this one (the ingest writer): tell the
        commit listeners, as after a write group of our own. Call on the event loop."""
        settle_all([], self._commit_listeners)

    async def ping(self) -> bool:
        try:
            await self.read(lambda: self.db.execute_sql("SELECT 1").fetchone())  # type: ignore[no-untyped-call]
        except Exception:
            return False
        return True

    # ---- the thread ----------------------------------------------------------------

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            group = [first]
            stop = False
            while len(group) < MAX_GROUP:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                group.append(nxt)
            self._execute(group)
            if stop:
                return

    def _execute(self, group: list[Job]) -> None:
        if not self.is_sqlite:
            self._reconnect_if_broken()
        writes = [j for j in group if j.write]
        for job in group:
            if not job.write:
                try:
                    job.result = job.fn()
                except BaseException as exc:  # handed to the awaiting coroutine
                    job.error = translate(exc)
        committed = bool(writes) and self._commit_group(writes)
        listeners: tuple[Callable[[], None], ...] = ()
        if committed and any(j.notify for j in writes):
            listeners = tuple(self._commit_listeners)
        # One wake-up per loop, not per job: each is a syscall that gives up the GIL.
        by_loop: dict[asyncio.AbstractEventLoop, list[Job]] = {}
        for job in group:
            by_loop.setdefault(job.loop, []).append(job)
        for loop, jobs in by_loop.items():
            mine = listeners if writes and loop is writes[0].loop else ()
            loop.call_soon_threadsafe(settle_all, jobs, mine)
            self.last_heartbeat = loop.time()

    def _commit_group(self, writes: list[Job]) -> bool:
        units = group_units(writes)
        try:
            with self._writer_turn(), self.db.atomic(*self._begin):
                if self._write_lock_sql:
                    self.db.execute_sql(self._write_lock_sql)  # type: ignore[no-untyped-call]
                if len(writes) == 1:
                    self._run_one(writes[0], savepoint=False)
                else:
                    for unit in units:
                        if len(unit) == 1:
                            self._run_one(unit[0], savepoint=True)
                        else:
                            self._run_batch(unit)
                if len(writes) == 1 and writes[0].error is not None:
                    raise Rollback
            self.groups_committed += 1
            return True
        except Rollback:
            return False
        except BaseException as exc:
            err = unavailable(exc)
            log.error("commit of %d write(s) failed: %s", len(writes), exc)
            for job in writes:
                if job.error is None:
                    job.error = err
                    job.result = None
            self._recover_connection()
            return False

    @property
    def _begin(self) -> tuple[str, ...]:
        # SQLite: take the write lock at BEGIN, so a group never reads, then finds another
        # process (a worker, `relay reproject`) committed first and fails to write.
        return ("IMMEDIATE",) if self.is_sqlite else ()

    @contextlib.contextmanager
    def _writer_turn(self) -> Iterator[None]:
        """Shared SQLite: hold the cross-process write lock until after COMMIT/ROLLBACK."""
        if self._lock_file is None:
            yield
            return
        with exclusive_write(self._lock_file):
            yield

    def _run_one(self, job: Job, *, savepoint: bool) -> None:
        # A plain SAVEPOINT, not db.atomic(): Peewee names each one with uuid4(), an
        # os.urandom() call per write that gives up the GIL. SQL savepoints nest, so a
        # job's own atomic() blocks still work inside it.
        name = ""
        if savepoint:
            self._savepoints += 1
            name = f"job_{self._savepoints}"
            self.db.execute_sql(f"SAVEPOINT {name}")  # type: ignore[no-untyped-call]
        try:
            job.result = job.call()
        except UNAVAILABLE as exc:
            # Disk full, I/O error, lock timeout: the whole group is suspect.
            job.error = unavailable(exc)
            raise
        except BaseException as exc:
            job.error = translate(exc)
            if name:  # undo this job only; the others in the group stay
                self.db.execute_sql(f"ROLLBACK TO SAVEPOINT {name}")  # type: ignore[no-untyped-call]
        if name:
            self.db.execute_sql(f"RELEASE SAVEPOINT {name}")  # type: ignore[no-untyped-call]

    def _run_batch(self, unit: list[Job]) -> None:
        assert unit[0].batch is not None
        try:
            with self.db.atomic():
                results = unit[0].batch([job.item for job in unit])
                if len(results) != len(unit):
                    raise RuntimeError(f"batch returned {len(results)} results for "
                                       f"{len(unit)} items")
        except UNAVAILABLE as exc:
            for job in unit:
                job.error = unavailable(exc)
            raise
        except Exception:
            # One item spoiled the batch (rolled back): run each alone, so only it fails.
            log.debug("batch of %d failed; retrying item by item", len(unit), exc_info=True)
            for job in unit:
                self._run_one(job, savepoint=True)
            return
        for job, result in zip(unit, results, strict=True):
            job.result = result

    def _reconnect_if_broken(self) -> None:
        """PostgreSQL restarted or failed over: the next job gets a fresh connection."""
        if self.db.is_closed():
            return  # not opened yet, or closing
        try:
            conn = self.db.connection()  # type: ignore[no-untyped-call]
            broken = bool(getattr(conn, "closed", 0))
            if broken:
                log.warning("database connection lost; reconnecting to %s", self.description)
                self.db.close()  # the pool drops a closed connection instead of reusing it
                self.db.connect()
        except Exception as exc:  # the job itself reports the failure (503)
            log.warning("reconnect to %s failed: %s", self.description, exc)

    def _recover_connection(self) -> None:
        try:
            if self.db.in_transaction():
                self.db.rollback()
        except Exception:  # the next job reconnects if this failed
            log.debug("rollback after a failed commit failed", exc_info=True)


