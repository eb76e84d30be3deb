"""Peer and host faults through the whole app: disk full, a long downstream outage, clock jumps.

Attesto down, slow, 5xx/429 and malformed answers are covered in test_attesto.py (client)
and test_routes_verify.py (HTTP); the signature window's arithmetic in
test_attesto_signature.py. Here the app is real, the peers are loopback servers.
"""

from __future__ import annotations

import json
import socket
import types
from typing import Any

import pytest
from aiohttp import web

from relay.attesto.simulator import AttestoSimulator
from relay.config import DownstreamConfig
from relay.outbox.receiver import DownstreamReceiver
from relay.web.appkeys import STORE_KEY
from tests.conftest import Clock, RelayFactory
from tests.support.outbox import deliveries, now_clock, outbox_of
from tests.support.store import sqlite_only
from tests.support.webhooks import BILLING, ENTITLEMENTS, Client, counts, post

ENTS = types.MappingProxyType(ENTITLEMENTS)


@pytest.fixture
def clock() -> Clock:
    return now_clock()  # the real time, so the outbox's sends and Attesto's t agree


def subscribed(sim: AttestoSimulator, n: int, now_s: int, subject: int | None = None,
               kind: str = "SUBSCRIBED") -> bytes:
    txn = sim.add_apple(transaction_id=f"9{n:09d}",
                        original_transaction_id=f"8{(subject if subject is not None else n):09d}",
                        product_id="com.example.premium", expires_ms=(now_s + 86_400) * 1000,
                        purchase_ms=now_s * 1000 - 60_000 + n)
    return sim.apple_webhook(kind, txn, signed_ms=now_s * 1000 - 30_000 + n, auto_renew=True)


async def _set_max_pages(client: Client, extra: int | None) -> None:
    store = client.app[STORE_KEY]

    def run() -> None:
        pages = store.db.execute_sql("PRAGMA page_count").fetchone()[0]
        limit = 1_073_741_823 if extra is None else pages + extra
        store.db.execute_sql(f"PRAGMA max_page_count = {limit}")

    await store.read(run)


@sqlite_only  # SQLite's max_page_count; PostgreSQL's disk full: tests/test_routes_webhooks.py
async def test_disk_full_answers_503_writes_nothing_half_and_recovers_live(
        relay_factory: RelayFactory, sim: AttestoSimulator, clock: Clock) -> None:
    client: Client = await relay_factory(use_clock=True, downstream=(BILLING,),
                                         entitlements=ENTS)
    now_s = int(clock.now)
    await _set_max_pages(client, 0)  # the disk is full: no page may be added
    accepted: list[str] = []
    refused: list[bytes] = []
    for n in range(400):
        body = subscribed(sim, n, now_s)
        status, answer = await post(client, sim, body, t=now_s)
        if status == 200:
            accepted.append(json.loads(body)["eventId"])
            continue
        assert status == 503 and answer["error"]["code"] == "store_unavailable"
        refused.append(body)
        if len(refused) == 3:
            break
    assert len(refused) == 3, "the page limit never bit"
    # Whatever was acknowledged is whole (row, event, outbox row); nothing else is there.
    assert await counts(client) == {"inbox": len(accepted), "event": len(accepted),
                                    "delivery": len(accepted), "purchase": len(accepted)}
    resp = await client.get("/healthz")
    assert resp.status == 200
    await _set_max_pages(client, None)  # space freed: no restart
    for body in refused:  # Attesto's retries
        assert await post(client, sim, body, t=now_s) == (200, {"status": "accepted"})
    total = len(accepted) + len(refused)
    assert await counts(client) == {"inbox": total, "event": total, "delivery": total,
                                    "purchase": total}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_downstream_down_for_hours_then_back_drains_in_order(
        relay_factory: RelayFactory, sim: AttestoSimulator, clock: Clock) -> None:
    port = _free_port()  # nothing listens here yet: connection refused
    ep = DownstreamConfig(name="billing", url=f"http://127.0.0.1:{port}/hook")
    client: Client = await relay_factory(use_clock=True, downstream=(ep,), entitlements=ENTS)
    await _outage_then_drain(client, sim, clock, port)


async def _outage_then_drain(client: Client, sim: AttestoSimulator, clock: Clock,
                             port: int) -> None:
    outbox = outbox_of(client)
    now_s = int(clock.now)
    n = 0
    for round_ in range(3):  # three deliveries for each of four subjects, interleaved
        for subject in range(4):
            body = subscribed(sim, n, now_s, subject=subject,
                              kind="SUBSCRIBED" if round_ == 0 else "DID_RENEW")
            n += 1
            assert (await post(client, sim, body, t=now_s))[0] == 200
        await outbox.settle()
    for _ in range(6):  # six hours of refused connections, retries on schedule
        clock.advance(3600)
        await outbox.settle()
    rows = await deliveries(client)
    assert len(rows) == 12 and {r["status"] for r in rows} == {"pending"}
    assert all(r["attempts"] >= 5 for r in rows if r["sequence"] == 1)
    assert all(r["attempts"] == 0 for r in rows if r["sequence"] > 1)  # blocked behind #1

    receiver = DownstreamReceiver()  # relay's clock is hours ahead: no signature check
    runner = web.AppRunner(receiver.app())
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()  # downstream is back
    try:
        clock.advance(6 * 3600)  # the next retry falls due
        for _ in range(6):
            await outbox.settle()
            if len(receiver.received) >= 12:
                break
        assert {r["status"] for r in await deliveries(client)} == {"delivered"}
        per_subject: dict[str, list[int]] = {}
        for r in receiver.received:
            per_subject.setdefault(r.json["subject_key"], []).append(r.json["sequence"])
        assert len(per_subject) == 4
        assert all(seqs == [1, 2, 3] for seqs in per_subject.values()), per_subject
    finally:
        await runner.cleanup()


async def test_clock_jumps_within_and_beyond_the_signature_window(
        relay_factory: RelayFactory, sim: AttestoSimulator, clock: Clock) -> None:
    client: Client = await relay_factory(use_clock=True, downstream=(BILLING,),
                                         entitlements=ENTS,
                                         webhooks={"tolerance_s": 300})
    t = int(clock.now)
    outcomes: list[tuple[int, Any]] = []
    for n, jump in enumerate((+299, -299 - 299, +299 + 301, -301 - 301)):
        clock.advance(jump)  # relay's clock moves; Attesto keeps signing at t
        status, answer = await post(client, sim, subscribed(sim, n, t), t=t)
        outcomes.append((status, answer.get("error", {}).get("details", {}).get("reason")))
    assert outcomes == [(200, None), (200, None), (401, "stale"), (401, "stale")]
    clock.now = t + 10  # back in step: Attesto's retry (a fresh t) is accepted
    status, _ = await post(client, sim, subscribed(sim, 2, t), t=t + 10)
    assert status == 200
    assert (await counts(client))["inbox"] == 3
