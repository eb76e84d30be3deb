"""The `--store postgres` run of bench/relay.py: N `relay serve` instances on one PostgreSQL
database drain the same queued events together, against one `relay serve` on SQLite draining
them alone, in the same run, to the same receiver process.

Each drain: a fresh store (SQLite file, or a PostgreSQL database created for it); the events
are enqueued in-process with the endpoint paused (held rows, as bench/relay.py does); the
instances start on that store (they restore the pause); then every instance is resumed at
once through the admin API and the clock runs until the receiver has seen every event.
The receiver logs each request's webhook-id in arrival order, so the run also reports
duplicates (repeated webhook-ids), per-subject order violations (an event arriving after a
later event of its purchase) and events never delivered, and each instance's /metrics tells
how many deliveries it made (both must take part).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib.util
import os
import re
import secrets
import sqlite3
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import aiohttp
from aiohttp import web

BENCH = Path(__file__).resolve().parent
DATABASE = f"relay_bench_relay_{os.getpid()}"  # runs beside each other do not collide
_DELIVERED = re.compile(
    r'^relay_delivery_attempts_total\{endpoint="bench",outcome="delivered"\} (\S+)$', re.M)


def _sibling(name: str) -> ModuleType:
    """bench/<name>.py by path (bench/ is not a package; `relay` is the app's name)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def _enqueue(bench: ModuleType, cfg: Any, events: int, per_subject: int) -> None:
    """Queue `events` (held: the endpoint is paused, and stays paused in the store)."""
    from relay.web.app import create_app
    from relay.web.appkeys import OUTBOX_KEY, STORE_KEY

    app = create_app(cfg)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        await app[OUTBOX_KEY].pause("bench")
        for start in range(0, events, 500):
            def batch(s: int = start, n: int = min(500, events - start)) -> list[str]:
                bodies: list[str] = bench._enqueue(app, s, n, per_subject)
                return bodies

            await app[STORE_KEY].write(batch)
    finally:
        await runner.cleanup()


def _events(store: str) -> tuple[dict[str, tuple[str, int]], int]:
    """event id -> (subject, sequence), and how many delivery rows are 'delivered'."""
    query = ("SELECT id, subject_key, sequence FROM event",
             "SELECT count(*) FROM delivery WHERE status = 'delivered'")
    if store.startswith("postgresql://"):
        import psycopg2  # type: ignore[import-untyped]

        conn: Any = psycopg2.connect(store)
    else:
        conn = sqlite3.connect(store)
    try:
        cur = conn.cursor()
        cur.execute(query[0])
        rows = {str(eid): (str(subject), int(seq)) for eid, subject, seq in cur.fetchall()}
        cur.execute(query[1])
        delivered = int(cur.fetchone()[0])
    finally:
        conn.close()
    return rows, delivered


def _analyze(url: str) -> None:
    """Give the planner its statistics, as autovacuum does on a default server within a
    minute of a backlog this size. Without them (a never-analyzed table; autovacuum is off
    on this machine) PostgreSQL plans the claim's NOT EXISTS as a nested loop over every
    open row of the endpoint: each claim costs O(pending^2), ~0.5 s at 2,000 rows."""
    import psycopg2

    conn = psycopg2.connect(url)
    conn.autocommit = True
    try:
        conn.cursor().execute("ANALYZE")
    finally:
        conn.close()


def check(ids: list[str], events: dict[str, tuple[str, int]]) -> dict[str, int]:
    """Duplicates, order violations and misses in the receiver's arrival log.

    A violation: the first arrival of an event after an event of the same subject with a
    higher sequence had arrived. (A repeated webhook-id is counted as a duplicate only.)
    """
    seen: set[str] = set()
    highest: dict[str, int] = {}
    violations = unknown = 0
    for wid in ids:
        if wid in seen:
            continue
        seen.add(wid)
        if wid not in events:
            unknown += 1
            continue
        subject, seq = events[wid]
        if seq < highest.get(subject, 0):
            violations += 1
        highest[subject] = max(seq, highest.get(subject, 0))
    return {"requests": len(ids), "duplicates": len(ids) - len(seen),
            "order_violations": violations, "missing": len(events.keys() - seen),
            "unknown": unknown}


def _release_offline(store: str) -> None:
    """What `relay resume` does, done before relay starts: the rows are due at once."""
    with sqlite3.connect(store) as db:
        db.execute("DELETE FROM endpoint_state")
        db.execute("UPDATE delivery SET status = 'pending', next_attempt_ms = 0 "
                   "WHERE status = 'held'")


async def drain(bench: ModuleType, ingest: ModuleType, base: str, *, store: str, instances: int,
                events: int, per_subject: int, concurrency: int, tmp: Path,
                timeout_s: float, analyze: bool = True, workers: int = 1) -> dict[str, Any]:
    """One timed drain of `events` by `instances` relay serve processes on `store`.

    `workers` > 1 (one SQLite instance): the rows are released before `relay serve`
    starts, its workers claim them as they come up, and the clock runs from the first
    delivery the receiver sees to the last; each worker gets `concurrency / workers`
    attempts in flight, so the service has `concurrency` in all, as a single process has.
    """
    secret, token = bench.generate_secret(), secrets.token_urlsafe(24)
    on_pg = store.startswith("postgresql://")
    cfg = bench._config(tmp, f"{base}/hook", secret, concurrency)
    cfg = dataclasses.replace(cfg, store=dataclasses.replace(
        cfg.store, **({"url": store} if on_pg else {"path": store})))
    await _enqueue(bench, cfg, events, per_subject)
    if workers > 1:
        await asyncio.to_thread(_release_offline, store)
        concurrency = max(1, concurrency // workers)
    if on_pg and analyze:
        await asyncio.to_thread(_analyze, store)
    body = (f'url = "{store}"\nauto_migrate = false' if on_pg else f'path = "{store}"')
    downstream = (f'[outbox]\nallow_networks = ["127.0.0.0/8"]\nconcurrency = {concurrency}\n'
                  f'per_endpoint_concurrency = {concurrency}\n'
                  f'[[downstream]]\nname = "bench"\nurl = "{base}/hook"\n')
    env = {"RELAY_CREDENTIAL_DOWNSTREAM_BENCH_SECRET": secret,
           "RELAY_CREDENTIAL_ADMIN_TOKEN": token}
    procs, ports = [], []
    auth = {"Authorization": f"Bearer {token}"}
    try:
        for i in range(instances):
            ports.append(ingest.free_port())
            procs.append(ingest.start_relay(ports[-1], tmp, "warning", body,
                                            name=f"relay{i}", downstream=downstream,
                                            env_extra=env, workers=workers))
        for port, proc in zip(ports, procs, strict=True):
            await asyncio.to_thread(ingest.wait_ready, port, proc)
        async with aiohttp.ClientSession() as session:
            if workers == 1:
                await bench._stats(session, base, reset=True)

            async def resume(port: int) -> None:
                async with session.post(
                        f"http://127.0.0.1:{port}/v1/admin/endpoints/bench/resume",
                        headers=auth) as resp:
                    assert resp.status == 200, await resp.text()

            t0 = time.time()
            if workers == 1:
                await asyncio.gather(*(resume(p) for p in ports))
            async with asyncio.timeout(timeout_s):
                while (got := await bench._stats(session, base))["distinct"] < events:
                    await asyncio.sleep(0.1)  # another process delivers: poll its count
            seconds = got["last_new_at"] - (t0 if workers == 1 else got["first_new_at"])
            async with asyncio.timeout(30):  # outcomes are recorded a moment later
                while (found := await asyncio.to_thread(_events, store))[1] < events:
                    await asyncio.sleep(0.1)
            per_instance = []
            for port in ports:
                async with session.get(f"http://127.0.0.1:{port}/metrics",
                                       headers=auth) as resp:
                    m = _DELIVERED.search(await resp.text())
                    per_instance.append(round(float(m.group(1))) if m else 0)
            got = await bench._stats(session, base, ids=True, reset=True)
    finally:
        for proc in procs:
            ingest.stop(proc)
    figures = check(got["ids"], found[0])
    # Every 100th request, as signed by these processes, checked by an independent verifier.
    verified, oracle = bench._verify(got["samples"], secret)
    return {"instances": instances, "seconds": round(seconds, 3),
            "deliveries_per_s": round(events / seconds), "per_instance": per_instance,
            "delivered_rows": found[1], "signatures_verified": verified,
            "verified_with": oracle, **figures,
            "all_delivered": figures["missing"] == 0 and found[1] == events == len(found[0])}


async def compare(bench: ModuleType, args: argparse.Namespace) -> dict[str, Any]:
    """`args.pg_rounds` rounds, each one SQLite x1 drain and one PostgreSQL xN drain
    (interleaved, so both sample the same machine noise); the fastest of each counts."""
    ingest, ingest_pg = _sibling("ingest"), _sibling("ingest_pg")
    runs: dict[str, list[dict[str, Any]]] = {"sqlite": [], "postgres": []}
    common = {"events": args.events, "per_subject": args.per_subject,
              "concurrency": args.concurrency, "timeout_s": args.timeout,
              "analyze": not args.no_analyze}
    async with bench.receiver() as base:
        for _ in range(args.pg_rounds):
            with tempfile.TemporaryDirectory(prefix="relay-bench-sqlite-") as tmp:
                runs["sqlite"].append(await drain(
                    bench, ingest, base, store=str(Path(tmp) / "relay.sqlite3"), instances=1,
                    tmp=Path(tmp), **common))
            url = ingest_pg._database(args.pg_url, DATABASE)
            try:
                with tempfile.TemporaryDirectory(prefix="relay-bench-pg-") as tmp:
                    runs["postgres"].append(await drain(
                        bench, ingest, base, store=url, instances=args.instances,
                        tmp=Path(tmp), **common))
            finally:
                ingest_pg._database(args.pg_url, DATABASE, drop_only=True)
    best = {k: max(v, key=lambda r: r["deliveries_per_s"]) for k, v in runs.items()}
    pg, lite = best["postgres"], best["sqlite"]
    every = runs["sqlite"] + runs["postgres"]
    out = {"sqlite_x1": lite, f"postgres_x{args.instances}": pg, "instances": args.instances,
           "rounds": args.pg_rounds,
           "postgres_deliveries_per_s": pg["deliveries_per_s"],
           "sqlite_deliveries_per_s": lite["deliveries_per_s"],
           "ratio_postgres_to_sqlite": round(pg["deliveries_per_s"]
                                             / lite["deliveries_per_s"], 3),
           # Over every round, not only the fastest: a duplicate or a misordering anywhere.
           "duplicates": sum(r["duplicates"] for r in every),
           "order_violations": sum(r["order_violations"] for r in every),
           "all_delivered": all(r["all_delivered"] for r in every),
           "all_instances_delivered": all(all(r["per_instance"]) for r in runs["postgres"])}
    print(f"{'':34}{'deliveries/s':>13}{'duplicates':>11}{'misordered':>11}  per instance")
    for name, r in ((f"relay x{args.instances} on PostgreSQL", pg),
                    ("relay x1 on SQLite", lite)):
        print(f"{name:34}{r['deliveries_per_s']:>13,}{r['duplicates']:>11}"
              f"{r['order_violations']:>11}  {r['per_instance']}")
    print(f"{f'PostgreSQL x{args.instances} / SQLite x1':34}"
          f"{out['ratio_postgres_to_sqlite']:>13.2f}")
    return out
