"""Two `relay serve` processes on one PostgreSQL database, one killed midway (PostgreSQL only).

Signed Attesto deliveries are split across both instances (some raced to both at once);
instance A is SIGKILLed halfway and Attesto's retries go to B. Then: every acknowledged
delivery was processed once, every event reached downstream at least once (duplicates are
counted and reported), and each due purchase was re-polled once (the tick's lease).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import psycopg2
import pytest

from relay.attesto.simulator import AttestoSimulator
from relay.outbox.receiver import DownstreamReceiver
from tests.conftest import API_KEY, DOWNSTREAM_SECRET
from tests.support.service import Calls, free_port
from tests.support.store import ON_POSTGRES, create_database

pytestmark = pytest.mark.skipif(not ON_POSTGRES, reason="needs RELAY_TEST_POSTGRES_URL")
ROOT = Path(__file__).resolve().parents[2]
WEBHOOK_SECRET = "whsec-example-0123456789abcdefghijklmnopqrstuv"
APPLE, GOOGLE, RACED = 60, 10, 10


def write_config(tmp_path: Path, name: str, url: str, attesto: str, downstream: str) -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(f"""
[server]
host = "127.0.0.1"
port = {free_port()}
shutdown_timeout_s = 2.0
[store]
url = "{url}"
auto_migrate = false
[attesto]
base_url = "{attesto}"
[scheduler]
tick_s = 0.2
[outbox]
allow_networks = ["127.0.0.0/8"]
# Short leases, so the rows the killed instance had claimed come due again soon:
# lease = max(claim_timeout_s, timeout_s + 5) + a round of timeout_s + 5 (> a request).
claim_timeout_s = 2.0
concurrency = 64
per_endpoint_concurrency = 64
[log]
level = "warning"
[[downstream]]
name = "billing"
url = "{downstream}"
timeout_s = 1.0
""")
    return path


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT),
            "RELAY_CREDENTIAL_ATTESTO_API_KEY": AttestoSimulator.api_key,
            "RELAY_CREDENTIAL_ATTESTO_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "RELAY_CREDENTIAL_API_KEYS": "backend:" + hashlib.sha256(API_KEY.encode()).hexdigest(),
            "RELAY_CREDENTIAL_DOWNSTREAM_BILLING_SECRET": DOWNSTREAM_SECRET}


def port_of(config: Path) -> int:
    return int(config.read_text().split("port = ")[1].split()[0])


async def wait_healthy(session: aiohttp.ClientSession, port: int, proc: Any) -> None:
    async with asyncio.timeout(20):
        while True:
            assert proc.returncode is None, "relay exited at start"
            try:
                async with session.get(f"http://127.0.0.1:{port}/healthz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.05)  # the process is starting: nothing to await but a poll


async def deliver(session: aiohttp.ClientSession, sim: AttestoSimulator, body: bytes,
                  ports: list[int]) -> str:
    """Post as Attesto does, trying the instances in turn until one acknowledges."""
    for attempt in range(20):
        port = ports[attempt % len(ports)]
        headers = sim.headers_for(body, t=int(time.time()))
        try:
            async with session.post(f"http://127.0.0.1:{port}/v1/webhooks/attesto",
                                    data=body, headers=headers) as resp:
                answer = await resp.json()
                if resp.status == 200:
                    return str(answer["status"])
        except (TimeoutError, aiohttp.ClientError):
            pass  # the instance died: Attesto retries, the balancer sends it elsewhere
    raise AssertionError("no instance acknowledged a delivery")


def db_rows(url: str) -> tuple[set[str], list[tuple[str, str]]]:
    conn = psycopg2.connect(url)
    try:
        cur = conn.cursor()
        cur.execute("SELECT event_id FROM inbox")
        inbox = {r[0] for r in cur.fetchall()}
        cur.execute("SELECT id, body FROM event ORDER BY cursor")
        events = [(r[0], r[1]) for r in cur.fetchall()]
    finally:
        conn.close()
    return inbox, events


async def test_two_instances_one_killed(tmp_path: Path, sim: AttestoSimulator,
                                        attesto_url: str, receiver: DownstreamReceiver,
                                        receiver_url: str,
                                        record_property: Any) -> None:
    calls = Calls()
    sim.calls = calls
    url = create_database(f"relay_multi_{os.getpid()}")
    configs = [write_config(tmp_path, n, url, attesto_url, receiver_url) for n in ("a", "b")]
    migrate = subprocess.run([sys.executable, "-m", "relay", "migrate", "--config",
                              str(configs[0])], env=env(), capture_output=True, text=True,
                             timeout=60)
    assert migrate.returncode == 0, migrate.stderr
    logs = [(tmp_path / f"{c.stem}.log").open("wb") for c in configs]
    procs = [await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relay", "serve", "--config", str(c), env=env(), stderr=log)
        for c, log in zip(configs, logs, strict=True)]
    ports = [port_of(c) for c in configs]
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            for port, proc in zip(ports, procs, strict=True):
                await wait_healthy(session, port, proc)
            now_ms = int(time.time() * 1000)
            bodies = [sim.apple_webhook("SUBSCRIBED", sim.add_apple(
                original_transaction_id=f"o{i}", transaction_id=f"t{i}",
                product_id="premium", expires_ms=now_ms + 86_400_000, purchase_ms=now_ms),
                subtype="INITIAL_BUY", auto_renew=True) for i in range(APPLE)]
            google = [sim.google_webhook(4, sim.add_google(token=f"g{i}",
                                                            product_id="premium_monthly"),
                                         root_token=f"root{i}") for i in range(GOOGLE)]
            ids = [json.loads(b)["eventId"] for b in bodies + google]
            half = APPLE // 2
            # First half: alternate instances; RACED of them go to both at once.
            first = [deliver(session, sim, b, [ports[i % 2], ports[1 - i % 2]])
                     for i, b in enumerate(bodies[:half])]
            raced = [deliver(session, sim, b, [ports[1]]) for b in bodies[:RACED]]
            answers = await asyncio.gather(*first, *raced)
            procs[0].send_signal(signal.SIGKILL)  # midway: A dies, with work in flight
            rest = [deliver(session, sim, b, ports) for b in bodies[half:] + google]
            answers += await asyncio.gather(*rest)
            assert answers.count("duplicate") >= RACED - answers[:half].count("duplicate")

            want = set(ids)
            async with asyncio.timeout(90):
                inbox, events = await asyncio.to_thread(db_rows, url)
                while len({r.headers["webhook-id"] for r in receiver.successful()}) < len(
                        events) or len(events) < len(want):
                    await receiver.wait_for(len(receiver.received) + 1, timeout_s=60)
                    inbox, events = await asyncio.to_thread(db_rows, url)
            # Re-poll: every Google purchase is due now; each is polled once, by one tick.
            async with asyncio.timeout(90):
                while len([c for c in calls if "google" in c[0]]) < GOOGLE:
                    calls.arrived.clear()
                    await calls.arrived.wait()
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            await asyncio.wait_for(proc.wait(), 20)
        for log in logs:
            log.close()

    # Every acknowledged delivery processed once: one inbox row, one webhook event each.
    assert inbox == want
    webhook_events = [json.loads(body) for _, body in events]
    by_source = [e for e in webhook_events if e["source"] == "webhook"]
    assert len(by_source) == len(want)
    # Every event delivered at least once, validly signed; duplicates counted and reported.
    delivered = [r.headers["webhook-id"] for r in receiver.successful()]
    assert {eid for eid, _ in events} <= set(delivered)
    duplicates = len(delivered) - len(set(delivered))
    record_property("downstream_duplicates", duplicates)
    print(f"\nmulti-instance: {len(want)} deliveries, {len(events)} events, "
          f"{len(delivered)} downstream requests, {duplicates} duplicates")
    # Re-poll ran once per tick: no Google purchase was verified by both instances.
    polled = [c[1].get("purchase_token") or c[1].get("purchaseToken") for c in calls
              if "google" in c[0]]
    assert sorted(polled) == sorted(f"g{i}" for i in range(GOOGLE)), polled
