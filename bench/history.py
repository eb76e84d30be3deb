"""History, transactions and explain at scale: one purchase with 1,000 inputs in a store of
1,000,000 purchases; each answer's latency through relay's HTTP API, and the index plans.

    /tmp/v/bin/python bench/history.py [--purchases 1000000] [--inputs 1000] [--requests 300]
    /tmp/v/bin/python bench/history.py --store postgres [--pg-url postgresql://...]

1. Fills a store (real schema, migrations; SQLite, or PostgreSQL with --store postgres):
   `--purchases` purchases with one input and one ledger row each, and the target purchase
   with `--inputs` inputs (a verify, then DID_RENEW webhooks with their inbox bodies; its
   state set by the first, so explain's "set by" search walks back through all of them)
   and a ledger row per third input.
2. Starts relay (the real app) on 127.0.0.1 and times `--requests` sequential requests of
   each answer: the history's first and last pages (100 inputs), a page with raw bodies,
   explain, the user's transactions, a page of the whole ledger; against the same server
   answering `GET /v1/purchases/{platform}/{key}` (one indexed row: the baseline).
3. Prints each query's plan (SQLite EXPLAIN QUERY PLAN / PostgreSQL EXPLAIN).
`main(argv)` returns the figures (`rows`: as bench/run.py reports them).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if sys.path[:1] != [str(ROOT)]:  # ahead of bench/: bench/relay.py must not shadow relay
    sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
from aiohttp import web  # noqa: E402

API_KEY = "history-bench-key"
DAY = 86_400_000
TARGET, USER = "otarget", "utarget"
PG_URL = "postgresql://postgres@127.0.0.1:5432/test"


def _purchases(n: int, now: int) -> Iterator[tuple[Any, ...]]:
    for i in range(n):
        yield ("apple", f"o{i}", "subscription", f"u{i % 200_000}", "com.example.premium",
               "active", "production", now + 30 * DAY, True, f"t{i}", now - DAY, 1,
               now - DAY, now - DAY, now + DAY, 0, False)
    yield ("apple", TARGET, "subscription", USER, "com.example.premium", "active",
           "production", now + 30 * DAY, True, f"{TARGET}-t333", now - DAY, 1000, now - DAY,
           now - DAY, now + DAY, 0, False)


def _inputs(n: int, target_inputs: int, now: int,
            body: str) -> Iterator[tuple[Any, ...]]:
    for i in range(n):
        yield ("apple", f"o{i}", "webhook", now - DAY, now - DAY, "SUBSCRIBED", None,
               "subscription.purchased", f"t{i}", f"t{i}", now + 30 * DAY, None, "active",
               None, None, None, None, 1)
    for j in range(target_inputs):
        tid = f"{TARGET}-t{j // 3}"
        if j == 0:
            yield ("apple", TARGET, "verify", now - DAY, now - DAY, "transaction", None, None,
                   tid, tid, now + 30 * DAY, None, "active", None, None, USER, body, 1)
        else:
            yield ("apple", TARGET, "webhook", now - DAY + j, now - DAY + j, "DID_RENEW", None,
                   "subscription.renewed", tid, tid, now + 30 * DAY, "active", "active",
                   f"evt{j}", f"evt_{j:026d}", None, None, 1)


def _inbox(target_inputs: int, now: int, body: bytes) -> Iterator[tuple[Any, ...]]:
    for j in range(1, target_inputs):
        yield (f"evt_{j:026d}", "subscription.renewed", now - DAY + j, now // 1000, "{}", body)


def _ledger(n: int, target_inputs: int, now: int) -> Iterator[tuple[Any, ...]]:
    for i in range(n):
        yield (i + 1, "apple", f"t{i}", f"o{i}", f"u{i % 200_000}", "com.example.premium",
               "production", "purchased", now - DAY, now + 29 * DAY, 9_990_000, "USD", None,
               None, now - DAY, now - DAY, now - DAY, 1, "recorded")
    for k in range((target_inputs + 2) // 3):
        yield (n + k + 1, "apple", f"{TARGET}-t{k}", TARGET, USER, "com.example.premium",
               "production", "purchased", now - DAY, now + 29 * DAY, 9_990_000, "USD", None,
               None, now - DAY, now - DAY, now - DAY, 1, "recorded")


_TABLES = {
    "purchase": ("platform", "subject_key", "kind", "user_id", "product_id", "state",
                 "environment", "expires_ms", "auto_renew", "latest_ref", "store_time_ms",
                 "sequence", "created_ms", "updated_ms", "next_poll_ms", "poll_failures",
                 "period_pending"),
    "input_log": ("platform", "subject_key", "source", "received_ms", "observed_ms",
                  "store_type", "store_subtype", "event_type", "ref", "transaction_id",
                  "expires_ms", "state_before", "state_after", "event_ids", "inbox_event_id",
                  "user_id", "body", "repeats"),
    "inbox": ("event_id", "event_type", "received_ms", "signature_t", "headers", "body"),
    "ledger": ("cursor", "platform", "transaction_id", "subject_key", "user_id", "product_id",
               "environment", "ownership", "period_start_ms", "period_end_ms", "price_micros",
               "currency", "refunded_ms", "revoked_ms", "observed_ms", "created_ms",
               "updated_ms", "version", "change"),
}


def _fill(args: argparse.Namespace, store: Any, now: int) -> None:
    from relay.attesto.simulator import AttestoSimulator

    sim = AttestoSimulator(webhook_secret="x" * 32)
    txn = sim.add_apple(transaction_id="2000000000000001", original_transaction_id=TARGET,
                        product_id="com.example.premium", expires_ms=now + 30 * DAY,
                        purchase_ms=now, environment="production")
    webhook = sim.apple_webhook("DID_RENEW", txn, signed_ms=now, auto_renew=True)
    answer = json.dumps({"valid": True, "transaction": {"transactionId": "x" * 16,
                                                         "padding": "p" * 1200}})
    n, k = args.purchases, args.inputs
    data = {"purchase": _purchases(n, now), "input_log": _inputs(n, k, now, answer),
            "inbox": _inbox(k, now, webhook), "ledger": _ledger(n, k, now)}
    if args.store == "sqlite":
        import sqlite3

        db = sqlite3.connect(store)
        db.execute("PRAGMA synchronous=off")  # the fill is set-up, not what is measured
        for table, rows in data.items():
            cols = _TABLES[table]
            db.executemany(f'INSERT INTO "{table}" ({", ".join(cols)}) VALUES '
                           f'({", ".join("?" * len(cols))})', rows)
        db.commit()
        db.execute("ANALYZE")
        db.close()
        return
    import psycopg2
    from psycopg2.extras import execute_values

    conn = psycopg2.connect(store)
    cur = conn.cursor()
    for table, rows in data.items():
        cols = _TABLES[table]
        execute_values(cur, f'INSERT INTO "{table}" ({", ".join(cols)}) VALUES %s',
                       rows, page_size=5000)
    conn.commit()
    conn.autocommit = True
    cur.execute("ANALYZE")
    conn.close()


def _plans(store_kind: str, store: Any, now: int) -> dict[str, list[str]]:
    """Each query's plan, as the database will run it."""
    from relay.store import history, ledger, lookups

    queries = {
        "history page": (history._PAGE, ("apple", TARGET, 0, 100)),
        "history page, raw": (history._PAGE_RAW, ("apple", TARGET, 0, 100)),
        "explain: input that set the state": (history._SET_BY, ("apple", TARGET, "active")),
        "explain: purchases the user verified": (
            "SELECT DISTINCT platform, subject_key FROM input_log WHERE user_id = {p}",
            (USER,)),
        "user's purchases": (lookups._SELECT + "user_id = ? ORDER BY created_ms, subject_key",
                             (USER,)),
        "ledger page": (ledger._SELECT + 'WHERE "cursor" > {p} ORDER BY "cursor" LIMIT {p}',
                        (500_000, 100)),
        "user's transactions": (ledger._SELECT + 'WHERE "user_id" = {p} AND "cursor" > {p} '
                                'ORDER BY "cursor" LIMIT {p}', (USER, 0, 100)),
        "ledger upsert conflict target": (
            'SELECT "cursor" FROM "ledger" WHERE "platform" = {p} AND "transaction_id" = {p}',
            ("apple", "t5")),
    }
    out: dict[str, list[str]] = {}
    if store_kind == "sqlite":
        import sqlite3

        db = sqlite3.connect(store)
        for name, (sql, params) in queries.items():
            text = sql.replace("{p}", "?")
            out[name] = [r[3] for r in db.execute("EXPLAIN QUERY PLAN " + text, params)]
        db.close()
        return out
    import psycopg2

    conn = psycopg2.connect(store)
    cur = conn.cursor()
    for name, (sql, params) in queries.items():
        cur.execute("EXPLAIN " + sql.replace("{p}", "%s").replace("?", "%s"), params)
        out[name] = [r[0] for r in cur.fetchall()]
    conn.close()
    return out


async def _time(session: aiohttp.ClientSession, url: str, n: int) -> dict[str, float]:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    for _ in range(max(5, n // 10)):  # warm caches and the connection
        async with session.get(url, headers=headers) as resp:
            await resp.read()
    times = []
    for _ in range(n):
        t = time.perf_counter()
        async with session.get(url, headers=headers) as resp:
            body = await resp.read()
            assert resp.status == 200, body[:200]
        times.append((time.perf_counter() - t) * 1000)
    times.sort()
    return {"p50_ms": round(statistics.median(times), 3),
            "p99_ms": round(times[min(len(times) - 1, int(len(times) * 0.99))], 3),
            "bytes": len(body)}


async def _serve(args: argparse.Namespace, store_cfg: Any) -> dict[str, Any]:
    from relay.config import Credentials, load_config
    from relay.web.app import create_app

    logging.getLogger("relay").setLevel(logging.ERROR)  # credentials it does not need
    base = load_config(None, environ={})
    cfg = dataclasses.replace(
        base, store=store_cfg,
        scheduler=dataclasses.replace(base.scheduler, enabled=False),
        log=dataclasses.replace(base.log, level="warning"),
        entitlements={"com.example.premium": ("premium",)},
        credentials=Credentials(api_keys=(
            ("bench", hashlib.sha256(API_KEY.encode()).hexdigest()),)))
    app = create_app(cfg)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    url = f"http://{host}:{port}"
    n = args.requests
    last_page_after = args.purchases + args.inputs - 100  # input ids: the target's are last
    try:
        async with aiohttp.ClientSession() as s:
            return {
                "purchase (baseline)": await _time(s, f"{url}/v1/purchases/apple/{TARGET}", n),
                "history, first page": await _time(
                    s, f"{url}/v1/purchases/apple/{TARGET}/history", n),
                "history, last page": await _time(
                    s, f"{url}/v1/purchases/apple/{TARGET}/history?after={last_page_after}",
                    n),
                "history, page with raw bodies": await _time(
                    s, f"{url}/v1/purchases/apple/{TARGET}/history?raw=1", n),
                "explain": await _time(
                    s, f"{url}/v1/users/{USER}/entitlements/premium/explain", n),
                "user's purchases": await _time(s, f"{url}/v1/users/{USER}/purchases", n),
                "user's transactions": await _time(s, f"{url}/v1/users/{USER}/transactions", n),
                "ledger page": await _time(
                    s, f"{url}/v1/transactions?after={args.purchases // 2}", n),
            }
    finally:
        await runner.cleanup()


def _fresh_pg_database(server_url: str, name: str) -> str:
    """(Re)create database `name` on the server `server_url` names; return its URL."""
    from urllib.parse import urlsplit, urlunsplit

    import psycopg2

    conn = psycopg2.connect(server_url)
    conn.autocommit = True
    try:
        cur = conn.cursor()
        cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        cur.execute(f'CREATE DATABASE "{name}"')
    finally:
        conn.close()
    u = urlsplit(server_url)
    return urlunsplit((u.scheme, u.netloc, "/" + name, u.query, u.fragment))


async def _bench(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from relay.config import StoreConfig
    from relay.store.database import Store

    if args.store == "sqlite":
        store_cfg = StoreConfig(path=str(work / "history.sqlite3"))
        target: Any = store_cfg.path
    else:
        url = _fresh_pg_database(args.pg_url, "relay_bench_history")
        store_cfg, target = StoreConfig(url=url), url
    store = Store(store_cfg)
    await store.open()
    await store.close()
    now = int(time.time() * 1000)
    t0 = time.perf_counter()
    _fill(args, target, now)
    fill_s = time.perf_counter() - t0
    timings = await _serve(args, store_cfg)
    plans = _plans(args.store, target, now)
    base = timings["purchase (baseline)"]
    rows = [(f"{name}, p99", t["p99_ms"], "one purchase row (GET /v1/purchases/...)",
             base["p99_ms"], "ms") for name, t in timings.items() if name != next(iter(
                 timings))]
    return {"store": args.store, "purchases": args.purchases, "inputs": args.inputs,
            "requests": args.requests, "fill_s": round(fill_s, 1), "timings": timings,
            "plans": plans, "rows": rows}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--purchases", type=int, default=1_000_000)
    parser.add_argument("--inputs", type=int, default=1000, help="inputs of the target")
    parser.add_argument("--requests", type=int, default=300, help="timed requests per answer")
    parser.add_argument("--store", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--pg-url", default=os.environ.get("RELAY_TEST_POSTGRES_URL") or PG_URL)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as d:
        r = asyncio.run(_bench(args, Path(d)))
    print(f"history bench ({r['store']}): {r['purchases']:,} purchases, the target with "
          f"{r['inputs']:,} inputs (filled in {r['fill_s']} s); {r['requests']} sequential "
          "requests each over 127.0.0.1")
    for name, t in r["timings"].items():
        print(f"  {name:32} p50 {t['p50_ms']:7.2f} ms   p99 {t['p99_ms']:7.2f} ms   "
              f"({t['bytes']:,} bytes)")
    print("index plans:")
    for name, plan in r["plans"].items():
        print(f"  {name}:")
        for line in plan:
            print(f"    {line}")
    return r


if __name__ == "__main__":
    main()
