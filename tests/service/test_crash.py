"""Crash safety: kill -9 the real daemon at random moments; nothing acknowledged is lost.

RELAY_CRASH_CYCLES=50 runs longer (default 3); RELAY_CRASH_SEED replays a run.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from relay.attesto.simulator import AttestoSimulator
from relay.core.signing import WebhookSignatureError, parse_secret, verify_headers
from tests.support.crash import (
    DOWNSTREAM_SECRET,
    WEBHOOK_SECRET,
    Ledger,
    RelayProcess,
    drive,
    make_deliveries,
    problems,
    read_database,
    summary,
)

CYCLES = int(os.environ.get("RELAY_CRASH_CYCLES", "3"))
PER_CYCLE = 120


class Downstream:
    """Loopback downstream: webhook-id -> bodies seen; can hold replies to be cut mid-send."""

    def __init__(self) -> None:
        self.bodies: dict[str, set[bytes]] = {}
        self.bad_signatures = 0
        self.started = asyncio.Event()
        self.arrived = asyncio.Event()
        self.delay_s = 0.0
        self.secret = [parse_secret(DOWNSTREAM_SECRET)]

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.Response:
        self.started.set()
        body = await request.read()
        if self.delay_s:
            await asyncio.sleep(self.delay_s)  # a slow downstream: relay is cut mid-send
        headers = {k.lower(): v for k, v in request.headers.items()}
        try:
            verify_headers(headers, body, self.secret, now_s=int(time.time()))
        except WebhookSignatureError:
            self.bad_signatures += 1
            return web.Response(status=400)
        self.bodies.setdefault(headers["webhook-id"], set()).add(body)
        self.arrived.set()
        return web.Response(text="ok")


async def _kill_when(mode: str, rng: random.Random, ledger: Ledger,
                     downstream: Downstream, relay: RelayProcess) -> None:
    """Wait for the cycle's moment, then kill -9."""
    await ledger.ack_event.wait()
    if mode == "mid-commit":
        # Right after the n-th acknowledgement: the next deliveries are mid-transaction.
        target = len(ledger.acked) + rng.randint(1, 40)
        while len(ledger.acked) < target:
            ledger.ack_event.clear()
            await ledger.ack_event.wait()
    elif mode == "mid-delivery":
        downstream.delay_s = 0.05
        downstream.started.clear()
        await downstream.started.wait()
        await asyncio.sleep(rng.uniform(0, 0.04))  # a random moment inside the send
    else:
        await asyncio.sleep(rng.uniform(0.0, 0.4))  # a random moment under load
    await relay.kill()
    downstream.delay_s = 0.0


async def _wait_drained(relay: RelayProcess, db: Path, downstream: Downstream,
                        timeout_s: float = 60.0) -> Any:
    """Until every stored delivery is delivered and each event reached downstream."""
    async with asyncio.timeout(timeout_s):
        while True:
            downstream.arrived.clear()
            stored = await asyncio.to_thread(read_database, db)
            if (stored.deliveries and all(s == "delivered" for s in stored.deliveries.values())
                    and set(stored.deliveries) <= set(downstream.bodies)):
                return stored
            try:
                async with asyncio.timeout(0.5):  # or the outbox's next retry, if any
                    await downstream.arrived.wait()
            except TimeoutError:
                pass


async def test_nothing_acknowledged_is_lost_across_kill_9(tmp_path: Path) -> None:
    seed = int(os.environ.get("RELAY_CRASH_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    downstream = Downstream()
    server = TestServer(downstream.app(), host="127.0.0.1")
    await server.start_server()
    relay = RelayProcess(tmp_path, str(server.make_url("/hook")))
    sim = AttestoSimulator(webhook_secret=WEBHOOK_SECRET)
    ledger = Ledger()
    now_ms = int(time.time() * 1000)
    pending: list[bytes] = []
    modes = ("mid-commit", "mid-delivery", "timer")
    try:
        async with aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=10)) as session:
            for cycle in range(CYCLES):
                await relay.start()
                # Attesto retries what was not acknowledged, alongside new deliveries.
                bodies = pending + make_deliveries(sim, cycle * PER_CYCLE, PER_CYCLE, now_ms)
                rng.shuffle(bodies)
                ledger.ack_event.clear()
                driver = asyncio.create_task(drive(session, sim, relay.url, bodies, ledger))
                await _kill_when(modes[cycle % len(modes)], rng, ledger, downstream, relay)
                await driver
                pending = [b for b in bodies if json.loads(b)["eventId"] not in ledger.acked]
            await relay.start()
            await drive(session, sim, relay.url, pending, ledger)
            try:
                stored = await _wait_drained(relay, tmp_path / "relay.sqlite3", downstream)
            except TimeoutError:
                stored = read_database(tmp_path / "relay.sqlite3")
                raise AssertionError(
                    f"not drained: {summary(ledger, stored, downstream.bodies)}, deliveries "
                    f"{sorted(set(stored.deliveries.values()))}\n"
                    + "\n".join(relay.log_lines[-15:])) from None
            assert await relay.terminate() == 0
    finally:
        await relay.kill()
        await server.close()
    stored = read_database(tmp_path / "relay.sqlite3")
    info = f"seed {seed}, {CYCLES} cycles: {summary(ledger, stored, downstream.bodies)}"
    print(info)
    assert problems(ledger, stored, downstream.bodies) == [], info
    # Every delivery was eventually acknowledged (retries included), none twice in the inbox.
    assert len(ledger.acked) == CYCLES * PER_CYCLE, info
    assert set(stored.inbox) == ledger.acked, info
    assert downstream.bad_signatures == 0


@pytest.mark.parametrize("cut", ["inbox", "event"])
def test_the_checker_catches_a_lost_ack(cut: str) -> None:
    """The verdict can fail: an acked delivery missing its row or its event is reported."""
    from tests.support.crash import Stored
    ledger = Ledger(acked={"evt_a"})
    stored = Stored(inbox={"evt_a": 1}, events={"evt_a": ["e1"]}, bodies={"e1": "{}"},
                    deliveries={"e1": "delivered"}, integrity="ok")
    if cut == "inbox":
        stored.inbox.clear()
    else:
        stored.events.clear()
    assert problems(ledger, stored, {"e1": {b"{}"}})
    assert problems(Ledger(acked={"evt_a"}), Stored({"evt_a": 1}, {"evt_a": ["e1"]},
                                                     {"e1": "{}"}, {}, "ok"), {}) != []
