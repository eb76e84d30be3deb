"""`[server] ingest_writer = true`: webhooks stored by a writer process, end to end.

Real processes: the supervisor, one web worker and the writer. Signed deliveries (some
raced) are stored once with their events, which reach the downstream at once (the
outbox is woken by the writer's answers, not by its sweep); SIGHUP reaches the writer
too; a writer that dies stops the service with exit code 1.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from relay.attesto.simulator import AttestoSimulator
from relay.outbox.receiver import DownstreamReceiver
from tests.conftest import ADMIN_TOKEN
from tests.support.service import (
    Service,
    _is_zombie,
    deliver,
    sqlite_rows,
    subscriptions,
    write_config,
)

APPLE, GOOGLE, RACED = 30, 6, 6


@pytest.fixture
async def service(tmp_path: Path, attesto_url: str,
                  receiver_url: str) -> AsyncIterator[Service]:
    config = write_config(tmp_path, attesto_url, receiver_url)
    text = config.read_text().replace("workers = 2", "workers = 1\ningest_writer = true")
    # A sweep far away and no scheduler ticks (their commits wake the outbox too): only
    # the writer's answers can wake it in time.
    text = text.replace("[outbox]\n", "[outbox]\nsweep_s = 3600\n")
    config.write_text(text.replace("tick_s = 0.2", "enabled = false"))
    svc = Service(tmp_path, config)
    try:
        yield svc
    finally:
        await svc.kill()
        svc.notify.close()


def writer_pid(service: Service) -> int:
    for pid in service.worker_pids():
        if b"ingest-writer" in Path(f"/proc/{pid}/cmdline").read_bytes():
            return pid
    raise AssertionError("no ingest writer among the supervisor's children")


async def test_webhooks_are_stored_by_the_writer_process(tmp_path: Path, sim: AttestoSimulator,
                                                         service: Service,
                                                         receiver: DownstreamReceiver) -> None:
    await service.start()
    ready = (await service.until("READY=1"))[-1]
    assert ready == "READY=1\nSTATUS=serving (1 worker, an ingest writer)"
    await service.log_shows("webhooks stored by an ingest writer")
    await service.log_shows("ingest writer listening on")
    assert len(service.worker_pids()) == 2  # the web worker and the writer

    bodies, google = subscriptions(sim, APPLE, GOOGLE)
    answers = await asyncio.gather(*(deliver(sim, b, service.port)
                                     for b in bodies + google + bodies[:RACED]))
    assert answers.count("duplicate") == RACED
    assert answers.count("accepted") == APPLE + GOOGLE
    inbox, events = await asyncio.to_thread(sqlite_rows, tmp_path / "relay.sqlite3")
    assert inbox == {json.loads(b)["eventId"] for b in bodies + google}
    assert len(events) == APPLE + GOOGLE
    # Delivered downstream well before the hour-long sweep: the answers woke the outbox.
    async with asyncio.timeout(15):
        while {r.headers["webhook-id"] for r in receiver.successful()} < set(events):
            await receiver.wait_for(len(receiver.received) + 1, timeout_s=15)

    assert service.proc is not None
    service.proc.send_signal(signal.SIGHUP)
    assert (await service.until("READY=1"))[0] == "RELOADING=1"
    await service.log_shows("ingest writer: configuration reloaded")

    pids = service.worker_pids()
    service.proc.send_signal(signal.SIGTERM)
    assert await service.stop() == 0
    await service.log_shows("ingest writer stopped after")
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or _is_zombie(pid)
    assert list((tmp_path / "run").iterdir()) == []


async def test_a_writer_that_dies_stops_the_service(sim: AttestoSimulator,
                                                    service: Service) -> None:
    await service.start()
    await service.until("READY=1")
    os.kill(writer_pid(service), signal.SIGKILL)
    assert service.proc is not None
    assert await asyncio.wait_for(service.proc.wait(), 30) == 1
    await service.log_shows("ingest writer (pid")
    await service.log_shows("exited with code -9; stopping the other workers")


async def test_the_writer_holds_rows_of_an_endpoint_paused_elsewhere(
        tmp_path: Path, sim: AttestoSimulator, service: Service) -> None:
    await service.start()
    await service.until("READY=1")
    async with aiohttp.ClientSession() as session:
        async with session.post(
                f"http://127.0.0.1:{service.port}/v1/admin/endpoints/billing/pause",
                headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as resp:
            assert resp.status == 200, await resp.text()
    now_ms = int(time.time() * 1000)
    body = sim.apple_webhook("SUBSCRIBED", sim.add_apple(
        original_transaction_id="op", transaction_id="tp", product_id="premium",
        expires_ms=now_ms + 86_400_000, purchase_ms=now_ms), auto_renew=True)
    assert await deliver(sim, body, service.port) == "accepted"

    def statuses() -> list[str]:
        with sqlite3.connect(tmp_path / "relay.sqlite3") as db:
            return [r[0] for r in db.execute("SELECT status FROM delivery")]
    assert await asyncio.to_thread(statuses) == ["held"]
    assert await service.stop() == 0


async def test_the_writer_stops_when_its_supervisor_is_gone(service: Service) -> None:
    await service.start()
    await service.until("READY=1")
    writer = writer_pid(service)
    assert service.proc is not None
    os.kill(service.proc.pid, signal.SIGKILL)  # no chance to stop its children
    await service.proc.wait()
    await service.log_shows("ingest writer: the supervisor is gone; stopping")
    async with asyncio.timeout(10):
        while Path(f"/proc/{writer}").exists() and not _is_zombie(writer):
            await asyncio.sleep(0.05)


async def test_a_malformed_envelope_gets_400_from_the_writer(tmp_path: Path,
                                                            sim: AttestoSimulator,
                                                            service: Service) -> None:
    await service.start()
    await service.until("READY=1")
    doc = {"eventId": "evt_bad_1", "event": "subscription.renewed", "source": "amazon",
           "subject": None, "data": {}}
    body = json.dumps(doc).encode()
    async with aiohttp.ClientSession() as session:
        async with session.post(f"http://127.0.0.1:{service.port}/v1/webhooks/attesto",
                                data=body, headers=sim.headers_for(body)) as resp:
            assert resp.status == 400
            error = (await resp.json())["error"]
    assert error["code"] == "invalid_envelope" and error["details"] == {"field": "source"}
    inbox, events = await asyncio.to_thread(sqlite_rows, tmp_path / "relay.sqlite3")
    assert inbox == set() and events == []
    assert await service.stop() == 0
