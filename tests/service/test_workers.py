"""`[server] workers = 2`: one supervisor, two worker processes, one port, one SQLite file.

Real processes end to end: signed deliveries spread over both workers (some raced), each
processed once, every event delivered downstream, each due purchase re-polled once,
`/metrics` summed across workers; sd_notify aggregated (READY once, RELOADING/READY on
SIGHUP, WATCHDOG only while every worker pings, STOPPING); a worker that dies stops the
service with exit code 1. And the store's cross-process write lock, on its own.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from relay.attesto.simulator import AttestoSimulator
from relay.config import StoreConfig
from relay.core.errors import StoreUnavailableError
from relay.outbox.receiver import DownstreamReceiver
from relay.store.database import Store
from tests.conftest import ADMIN_TOKEN
from tests.support.service import (
    Calls,
    Service,
    _is_zombie,
    deliver,
    sqlite_rows,
    subscriptions,
    write_config,
)

APPLE, GOOGLE, RACED = 40, 8, 8


@pytest.fixture
async def service(tmp_path: Path, attesto_url: str,
                  receiver_url: str) -> AsyncIterator[Service]:
    svc = Service(tmp_path, write_config(tmp_path, attesto_url, receiver_url))
    try:
        yield svc
    finally:
        await svc.kill()
        svc.notify.close()


async def metric_total(port: int, family: str) -> float:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}/metrics",
                               headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as resp:
            assert resp.status == 200
            text = await resp.text()
    return sum(s.value for f in text_string_to_metric_families(text) if f.name == family
               for s in f.samples if s.name == family + "_total")


async def test_two_workers_one_port_one_database(tmp_path: Path, sim: AttestoSimulator,
                                                 service: Service,
                                                 receiver: DownstreamReceiver) -> None:
    calls = Calls()
    sim.calls = calls
    await service.start()
    # READY=1 once, after both workers are ready; both serve.
    assert (await service.until("READY=1"))[-1] == "READY=1\nSTATUS=serving (2 workers)"
    await service.log_shows("listening on http://127.0.0.1:")
    await service.log_shows("as worker 0/2")
    await service.log_shows("as worker 1/2")
    assert len(service.worker_pids()) == 2

    bodies, google = subscriptions(sim, APPLE, GOOGLE)
    answers = await asyncio.gather(*(deliver(sim, b, service.port)
                                     for b in bodies + google + bodies[:RACED]))
    # A delivery raced to both workers is processed once; the other copy is a duplicate.
    assert answers.count("duplicate") == RACED
    want = {json.loads(b)["eventId"] for b in bodies + google}

    db = tmp_path / "relay.sqlite3"
    async with asyncio.timeout(60):
        inbox, events = await asyncio.to_thread(sqlite_rows, db)
        while len({r.headers["webhook-id"] for r in receiver.successful()}) < len(events):
            await receiver.wait_for(len(receiver.received) + 1, timeout_s=30)
            inbox, events = await asyncio.to_thread(sqlite_rows, db)
    assert inbox == want
    assert set(events) <= {r.headers["webhook-id"] for r in receiver.successful()}
    # Every due Google purchase re-polled once: the tick's lease holds across workers.
    async with asyncio.timeout(60):
        while len([c for c in calls if "google" in c[0]]) < GOOGLE:
            calls.arrived.clear()
            await calls.arrived.wait()
    await asyncio.sleep(1.0)  # a second tick would poll them again now
    polled = sorted(c[1].get("purchase_token") or c[1].get("purchaseToken")
                    for c in calls if "google" in c[0])
    assert polled == sorted(f"g{i}" for i in range(GOOGLE))
    # /metrics answers for the whole service, whichever worker takes the scrape.
    for _ in range(4):
        assert await metric_total(service.port, "relay_webhooks") == len(answers)

    # SIGHUP: every worker reloads; READY=1 again once both did.
    assert service.proc is not None
    service.proc.send_signal(signal.SIGHUP)
    seen = await service.until("READY=1")
    assert seen[0] == "RELOADING=1"
    await service.log_shows("configuration reloaded", times=2)  # both workers did

    pids = service.worker_pids()
    service.proc.send_signal(signal.SIGTERM)
    await service.until("STOPPING=1")
    assert await service.stop() == 0
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or _is_zombie(pid)
    assert list((tmp_path / "run").iterdir()) == []  # the supervisor's directory is gone


async def _drain(service: Service) -> AsyncIterator[str]:
    while True:
        try:
            yield await service.message(0.2)
        except (TimeoutError, OSError):
            return


async def test_a_worker_that_dies_stops_the_service(service: Service) -> None:
    await service.start()
    await service.until("READY=1")
    first, second = service.worker_pids()
    os.kill(first, signal.SIGKILL)
    assert service.proc is not None
    assert await asyncio.wait_for(service.proc.wait(), 30) == 1
    await service.log_shows("exited with code -9; stopping the other workers")
    assert not Path(f"/proc/{second}").exists() or _is_zombie(second)


async def test_watchdog_pings_only_while_every_worker_pings(tmp_path: Path,
                                                            attesto_url: str,
                                                            receiver_url: str) -> None:
    svc = Service(tmp_path, write_config(tmp_path, attesto_url, receiver_url),
                  watchdog_usec=600_000)  # workers and supervisor ping every 0.3 s
    await svc.start()
    try:
        await svc.until("READY=1")
        await svc.until("WATCHDOG=1", timeout_s=5)
        stuck = svc.worker_pids()[0]  # worker 0: started first
        # A busy host can delay a healthy worker's ping past WatchdogSec: such a notice
        # before the stop is not the one this test waits for.
        noticed = svc.log().count("worker 0 stopped pinging")
        os.kill(stuck, signal.SIGSTOP)
        try:
            # The supervisor notices: its last ping aged past WatchdogSec. Twice: the first
            # notice can come from a late tick, before the supervisor read a ping the
            # worker sent before it stopped (it counts from when it reads one).
            await svc.log_shows("worker 0 stopped pinging", times=noticed + 2)
            late = [m async for m in _drain(svc)]  # pings sent before it noticed
            await asyncio.sleep(1.0)  # a window in which no ping may come (absence)
            assert "WATCHDOG=1" not in [m async for m in _drain(svc)], late
        finally:
            os.kill(stuck, signal.SIGCONT)
        await svc.until("WATCHDOG=1", timeout_s=5)
        assert await svc.stop() == 0
    finally:
        await svc.kill()
        svc.notify.close()


async def test_shared_store_serializes_writers_across_stores(tmp_path: Path) -> None:
    """Two stores (as two workers) on one SQLite file, each running read-then-write jobs
    concurrently: with the shared write lock every job commits and no update is lost."""
    cfg = StoreConfig(path=str(tmp_path / "shared.sqlite3"), busy_timeout_s=0.2)
    stores = [Store(cfg, shared=True), Store(cfg, shared=True)]
    await stores[0].open()
    await stores[1].open(migrate=False)
    await stores[0].write(lambda: stores[0].db.execute_sql(
        "CREATE TABLE counter (n INTEGER NOT NULL)"))
    await stores[0].write(lambda: stores[0].db.execute_sql("INSERT INTO counter VALUES (0)"))

    def bump(store: Store) -> Any:
        def run() -> None:
            (n,) = store.db.execute_sql("SELECT n FROM counter").fetchone()
            time.sleep(0.0005)  # widen the window between the read and the write
            store.db.execute_sql("UPDATE counter SET n = ?", (n + 1,))
        return run

    failures = 0

    async def one(store: Store) -> None:
        nonlocal failures
        try:
            await store.write(bump(store))
        except StoreUnavailableError:
            failures += 1

    try:
        await asyncio.gather(*(one(stores[i % 2]) for i in range(300)))
        (n,) = await stores[0].read(
            lambda: stores[0].db.execute_sql("SELECT n FROM counter").fetchone())
    finally:
        for store in stores:
            await store.close()
    assert (failures, n) == (0, 300)
