"""Console pages on a big store: 1,000,000 purchases and ~100,000 deliveries.

    .venv/bin/python bench/console.py [--rows 1000000] [--events 60000] [--requests 20]
                                      [--store sqlite|postgres] [--plans] [--screenshot PNG]

1. Fills a store (real schema, migrations) with `--rows` purchases (bench/repoll.py's
   rows: 50,000 users, 10 % due for a re-poll), `--events` events over the last 24 h
   (3 per purchase for the first ones), ~1.7 deliveries per event on three endpoints
   (billing: almost all delivered; analytics: failing, 10 % dead after 12 attempts;
   crm: paused, its rows held), their attempts, and one inbox row per event; and
   bench/history.py's input log and ledger: one input and one ledger row per purchase,
   and its target purchase with `--inputs` inputs (a verify, then DID_RENEW webhooks with
   their inbox bodies) and a ledger row per third input, for the purchase page's history,
   transactions and explain, and its user's page.
2. Serves relay (the real app: outbox, console) on 127.0.0.1, signs in to the console,
   and times `--requests` GETs of each page from a client on the same loop, after two
   warm-ups; the baseline is `GET /healthz` on the same server in the same run.
3. What the console costs the write path, paired in one process on two stores (SQLite, the
   real pragmas: fsync per commit): inserting events and their deliveries (100 events,
   200 deliveries per transaction) with and without the index migration 7 adds
   (delivery_endpoint_id), and the outbox recording 100 claimed deliveries' attempts with
   and without counting them (`outbox_db.note_attempts`).
4. `--plans`: the query plan of every statement each page ran (EXPLAIN QUERY PLAN on
   SQLite, EXPLAIN on PostgreSQL), captured from the store's own connection.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if sys.path[:1] != [str(ROOT)]:  # ahead of bench/: bench/relay.py must not shadow relay
    sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402

from bench.history import _TABLES as HISTORY_COLUMNS  # noqa: E402
from bench.history import TARGET  # noqa: E402
from bench.history import USER as TARGET_USER  # noqa: E402
from bench.history import _inbox as history_inbox  # noqa: E402
from bench.history import _inputs as history_inputs  # noqa: E402
from bench.history import _ledger as history_ledger  # noqa: E402
from bench.history import _purchases as history_purchase  # noqa: E402
from bench.repoll import _fill as fill_purchases  # noqa: E402
from relay.store.migrations import COUNT_ATTEMPTS_PER_MINUTE  # noqa: E402

HOUR = 3_600_000
DAY = 86_400_000
ADMIN_TOKEN = "bench-console-admin-token"
ENDPOINTS = ("billing", "analytics", "crm")
PAGES = {  # name -> path under the console
    "overview (6 h plots)": "/",
    "overview (48 h plots)": "/?hours=48",
    "endpoint, all deliveries": "/endpoints/billing",
    "endpoint, failed": "/endpoints/analytics?status=failed",
    "endpoint, dead": "/endpoints/analytics?status=dead",
    "endpoint, dead (rare)": "/endpoints/billing?status=dead",
    "endpoint, page 20": None,  # filled in: ?before= the 20th page's first id
    "delivery (12 attempts)": None,  # filled in: a dead analytics delivery
    "purchase (3 events)": "/purchase?platform=apple&key=o7",
    "purchases of a user (20)": "/purchases?user=u7",
    "purchase (1,000 inputs), history p1": f"/purchase?platform=apple&key={TARGET}",
    "purchase (1,000 inputs), last page": None,  # filled in: ?after= the last page's
    "input with its raw body": None,  # filled in: a webhook input of the target
    "user of the 1,000-input purchase": f"/purchases?user={TARGET_USER}",
}


def _event_body(i: int, subject: str, now_ms: int, received: int) -> str:
    return json.dumps({
        "id": f"rly_bench{i:012d}", "type": "subscription.renewed", "source": "webhook",
        "occurred_at": received, "received_at": received, "platform": "apple",
        "subject_key": subject, "user_id": f"u{i % 50000}", "app_user_id": None,
        "product_id": "premium.monthly", "environment": "production", "state": "active",
        "previous_state": "active", "expires_at": now_ms + 30 * DAY,
        "entitlements": ["premium"], "sequence": i // 20000 + 1,
        "attesto_event_id": f"evt_{i:012d}"}, separators=(",", ":"))


@dataclasses.dataclass
class Rows:
    events: list[tuple[Any, ...]] = dataclasses.field(default_factory=list)
    deliveries: list[tuple[Any, ...]] = dataclasses.field(default_factory=list)
    attempts: list[tuple[Any, ...]] = dataclasses.field(default_factory=list)
    inbox: list[tuple[Any, ...]] = dataclasses.field(default_factory=list)


def make_rows(events: int, now_ms: int) -> Rows:
    """Events over the last 24 h, their deliveries on three endpoints, attempts, inbox."""
    rows = Rows()
    delivery_id = attempt_id = 0
    step = DAY // events
    for i in range(events):
        cursor = i + 1
        received = now_ms - DAY + i * step
        subject = f"o{i % 20000}"
        rows.events.append((cursor, f"rly_bench{i:012d}", "subscription.renewed", "webhook",
                            "apple", subject, i // 20000 + 1, f"u{i % 50000}", received,
                            received, f"evt_{i:012d}", False,
                            _event_body(i, subject, now_ms, received)))
        rows.inbox.append((f"evt_{i:012d}", "subscription.renewed", received, received // 1000,
                           '{"Content-Type": "application/json"}',
                           b'{"eventId":"evt_%012d","padding":"%s"}' % (i, b"x" * 400)))
        targets = ["billing"] + (["analytics"] if i % 3 != 2 else []) + (
            ["crm"] if i % 30 == 0 else [])
        for endpoint in targets:
            delivery_id += 1
            status, attempts, next_ms, last, error = "delivered", 1, received, 200, None
            if endpoint == "crm":
                status, attempts, last = "held", 0, None
            elif endpoint == "billing" and i % 200 == 0:
                status, attempts, next_ms, last, error = "dead", 12, received, 500, "HTTP 500"
            elif endpoint == "billing" and i >= events - events // 100:
                status, attempts, next_ms, last, error = ("pending", 2, now_ms + HOUR, 503,
                                                          "HTTP 503")
            elif endpoint == "analytics" and i % 10 == 1:
                status, attempts, last, error = "dead", 12, None, "timeout after 15s"
            elif endpoint == "analytics" and i % 10 in (2, 3):
                status, attempts, next_ms, last, error = ("pending", 1 + i % 3, now_ms + HOUR,
                                                          502, "HTTP 502")
            rows.deliveries.append((
                delivery_id, cursor, endpoint, f"apple:{subject}", i // 20000 + 1, status,
                attempts, next_ms, None, last, error, received,
                received + 40 if status == "delivered" else None))
            for a in range(attempts):
                attempt_id += 1
                ok = status == "delivered" and a == attempts - 1
                started = min(received + a * 5000, now_ms - 1)
                rows.attempts.append((attempt_id, delivery_id, started, 35,
                                      200 if ok else last, None if ok else error,
                                      '{"ok":true}' if ok else None))
    return rows


COLUMNS = {
    "event": "cursor, id, type, source, platform, subject_key, sequence, user_id, "
             "occurred_ms, received_ms, attesto_event_id, stale, body",
    "delivery": "id, event_cursor, endpoint, subject, sequence, status, attempts, "
                "next_attempt_ms, claimed_until_ms, last_status, last_error, created_ms, "
                "delivered_ms",
    "attempt": "id, delivery_id, started_ms, duration_ms, status_code, error, "
               "response_excerpt",
    "inbox": "event_id, event_type, received_ms, signature_t, headers, body",
}


def history_rows(purchases: int, inputs: int, now_ms: int) -> dict[str, Iterator[Any]]:
    """bench/history.py's rows per table (columns: bench.history._TABLES): one input and
    one ledger row per purchase (o0, o1, ...: the purchases bench/repoll.py fills), and
    its target purchase with `inputs` inputs, their inbox bodies and its ledger rows."""
    answer = json.dumps({"valid": True, "transaction": {"transactionId": "x" * 16,
                                                         "padding": "p" * 1200}})
    webhook = b'{"signedPayload":"%s"}' % (b"e" * 1500)
    return {"purchase": history_purchase(0, now_ms),  # the target alone
            "input_log": history_inputs(purchases, inputs, now_ms, answer),
            "inbox": history_inbox(inputs, now_ms, webhook),
            "ledger": history_ledger(purchases, inputs, now_ms)}


def _history_sql(table: str, marks: str) -> str:
    cols = HISTORY_COLUMNS[table]
    return f'INSERT INTO "{table}" ({", ".join(cols)}) VALUES {marks}'


def _chunks(items: list[tuple[Any, ...]], n: int = 5000) -> Iterator[list[tuple[Any, ...]]]:
    for i in range(0, len(items), n):
        yield items[i:i + n]


def fill_sqlite(path: Path, purchases: int, rows: Rows, now_ms: int,
                history: dict[str, Iterator[Any]]) -> None:
    import sqlite3

    fill_purchases(path, purchases, now_ms)
    db = sqlite3.connect(path)
    db.execute("PRAGMA synchronous=off")  # the fill is set-up, not what is measured
    for table, values in (("event", rows.events), ("delivery", rows.deliveries),
                          ("attempt", rows.attempts), ("inbox", rows.inbox)):
        cols = COLUMNS[table]
        marks = ", ".join("?" * len(cols.split(",")))
        db.executemany(f"INSERT INTO {table} ({cols}) VALUES ({marks})", values)
    for table, values in history.items():
        marks = "(" + ", ".join("?" * len(HISTORY_COLUMNS[table])) + ")"
        db.executemany(_history_sql(table, marks), values)
    _fill_state(db.execute, "?", now_ms)
    db.execute(COUNT_ATTEMPTS_PER_MINUTE)
    db.commit()
    db.close()


def fill_postgres(url: str, purchases: int, rows: Rows, now_ms: int,
                  history: dict[str, Iterator[Any]]) -> None:
    import psycopg2
    from psycopg2.extras import execute_values

    conn = psycopg2.connect(url)
    cur = conn.cursor()

    def purchase_rows() -> Iterable[tuple[Any, ...]]:
        states = ("active", "active", "active", "expired", "grace", "billing_retry",
                  "refunded")
        for i in range(purchases):
            state = states[i % len(states)]
            due = now_ms - (i % 1000) * 1000 if i % 10 == 0 else now_ms + (i % 97) * DAY
            yield ("apple", f"o{i}", "subscription", f"u{i % 50000}", "premium.monthly",
                   state, "sandbox", now_ms + 30 * DAY, True, f"t{i}", now_ms - DAY, 1,
                   now_ms - DAY, now_ms - DAY, None if state == "refunded" else due, 0)

    batch: list[tuple[Any, ...]] = []
    for row in purchase_rows():
        batch.append(row)
        if len(batch) == 20000:
            execute_values(cur, "INSERT INTO purchase (platform, subject_key, kind, user_id, "
                           "product_id, state, environment, expires_ms, auto_renew, "
                           "latest_ref, store_time_ms, sequence, created_ms, updated_ms, "
                           "next_poll_ms, poll_failures) VALUES %s", batch, page_size=20000)
            batch = []
    for table, values in (("event", rows.events), ("delivery", rows.deliveries),
                          ("attempt", rows.attempts), ("inbox", rows.inbox)):
        for part in _chunks(values):
            execute_values(cur, f"INSERT INTO {table} ({COLUMNS[table]}) VALUES %s", part,
                           page_size=5000)
    for table, values in history.items():
        execute_values(cur, _history_sql(table, "%s"), values, page_size=5000)
    cur.execute("SELECT setval(pg_get_serial_sequence('event', 'cursor'), "
                "(SELECT MAX(cursor) FROM event))")
    for table in ("delivery", "attempt"):
        cur.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                    f"(SELECT MAX(id) FROM {table}))")
    _fill_state(cur.execute, "%s", now_ms)
    cur.execute(COUNT_ATTEMPTS_PER_MINUTE)
    conn.commit()
    conn.close()
    conn = psycopg2.connect(url)
    conn.autocommit = True
    conn.cursor().execute("VACUUM ANALYZE")  # autovacuum would, soon after a bulk load
    conn.close()


def _fill_state(execute: Callable[..., Any], mark: str, now_ms: int) -> None:
    execute(f"INSERT INTO endpoint_state (name, reason, detail, since_ms) VALUES "
            f"({mark}, 'paused', NULL, {mark})", ("crm", now_ms - HOUR))
    for name, ok, err in (("billing", now_ms - 60_000, now_ms - 30_000),
                          ("analytics", now_ms - 120_000, now_ms - 5_000)):
        execute(f"INSERT INTO endpoint_health (name, last_success_ms, last_error_ms, "
                f"last_error_status, last_error) VALUES ({mark}, {mark}, {mark}, 502, "
                f"'HTTP 502')", (name, ok, err))


class Capture:
    """Records every statement the store runs (on its thread) while active."""

    def __init__(self) -> None:
        self.active = False
        self.statements: list[tuple[str, tuple[Any, ...]]] = []

    def install(self, db: Any) -> None:
        original = db.execute_sql

        def execute_sql(sql: str, params: Any = None, *args: Any, **kw: Any) -> Any:
            if self.active and not sql.lstrip().upper().startswith(("EXPLAIN", "SAVEPOINT",
                                                                    "RELEASE", "BEGIN")):
                self.statements.append((sql, tuple(params or ())))
            return original(sql, params, *args, **kw)

        db.execute_sql = execute_sql


def _plans(db: Any, statements: list[tuple[str, tuple[Any, ...]]], sqlite: bool) -> list[str]:
    out, seen = [], set()
    for sql, params in statements:
        if sql in seen:
            continue
        seen.add(sql)
        cur = db.cursor()
        cur.execute(("EXPLAIN QUERY PLAN " if sqlite else "EXPLAIN ") + sql, params)
        rows = cur.fetchall()
        plan = [" | ".join(str(c) for c in r[3:]) if sqlite else str(r[0]) for r in rows]
        out.append("  " + " ".join(sql.split())[:220] + "\n" + "\n".join(
            "      " + line for line in plan))
    return out


async def _measure(session: aiohttp.ClientSession, url: str, n: int) -> list[float]:
    for _ in range(2):
        async with session.get(url, allow_redirects=False) as resp:
            await resp.read()
            if resp.status != 200:
                raise SystemExit(f"{url}: HTTP {resp.status}: {(await resp.text())[:300]}")
    times = []
    for _ in range(n):
        t = time.perf_counter()
        async with session.get(url, allow_redirects=False) as resp:
            await resp.read()
        times.append((time.perf_counter() - t) * 1000)
    return times


def _config(store: Any, tmp: Path) -> Any:
    from relay.config import Credentials, DownstreamConfig, Secret, load_config

    base = load_config(None, environ={})
    secret = (Secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),)
    return dataclasses.replace(
        base, store=store,
        scheduler=dataclasses.replace(base.scheduler, enabled=False),
        outbox=dataclasses.replace(base.outbox, allow_networks=("127.0.0.0/8",)),
        entitlements={"premium.monthly": ("premium",), "com.example.premium": ("premium",)},
        downstream=tuple(DownstreamConfig(name=n, url=f"http://127.0.0.1:9/{n}")
                         for n in ENDPOINTS),
        credentials=Credentials(admin_token=Secret(ADMIN_TOKEN),
                                attesto_api_key=Secret("attesto_test_bench"),
                                downstream_secrets={n: secret for n in ENDPOINTS}))


async def _bench(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    from aiohttp.test_utils import TestServer

    from relay.config import StoreConfig
    from relay.store.database import Store
    from relay.store.models import database
    from relay.web.app import create_app
    from relay.web.appkeys import STORE_KEY

    sqlite = args.store == "sqlite"
    if sqlite:
        store_cfg = StoreConfig(path=str(tmp / "console.sqlite3"))
    else:
        from bench.ingest_pg import _database

        store_cfg = StoreConfig(url=_database(args.pg_url, "relay_bench_console"))
    store = Store(store_cfg)
    await store.open()
    await store.close()
    now = int(time.time() * 1000)
    t0 = time.perf_counter()
    rows = make_rows(args.events, now)
    history = history_rows(args.rows, args.inputs, now)
    if sqlite:
        fill_sqlite(Path(store_cfg.path), args.rows, rows, now, history)
    else:
        fill_postgres(store_cfg.url, args.rows, rows, now, history)
    fill_s = time.perf_counter() - t0
    counts = {"purchases": args.rows, "events": len(rows.events),
              "deliveries": len(rows.deliveries), "attempts": len(rows.attempts),
              "inbox": len(rows.inbox) + args.inputs - 1,
              "input log": args.rows + args.inputs,
              "ledger": args.rows + (args.inputs + 2) // 3,
              "inputs of one purchase": args.inputs,
              "ledger rows of it": (args.inputs + 2) // 3}
    dead = next(d[0] for d in rows.deliveries if d[2] == "analytics" and d[5] == "dead")
    billing = [d[0] for d in rows.deliveries if d[2] == "billing"]
    pages = dict(PAGES)
    pages["delivery (12 attempts)"] = f"/deliveries/{dead}"
    pages["endpoint, page 20"] = f"/endpoints/billing?before={billing[-1 - 50 * 19]}"
    del rows, history
    first_input = await _first_input(store_cfg)
    pages["purchase (1,000 inputs), last page"] = (
        f"/purchase?platform=apple&key={TARGET}&after={first_input + args.inputs - 51}")
    pages["input with its raw body"] = (
        f"/purchase/input?platform=apple&key={TARGET}&id={first_input + 1}")

    app = create_app(_config(store_cfg, tmp))
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    capture = Capture()
    results: dict[str, dict[str, float]] = {}
    plans: dict[str, list[str]] = {}
    try:
        # unsafe: keep cookies of an IP-address host (127.0.0.1)
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
            base = str(server.make_url("")).rstrip("/")
            async with session.post(base + "/console/signin", allow_redirects=False,
                                    data={"secret": ADMIN_TOKEN}) as resp:
                assert resp.status == 303, await resp.text()
            health = await _measure(session, base + "/healthz", args.requests)
            relay_store = app[STORE_KEY]
            await relay_store.read(lambda: capture.install(database.obj))
            for name, path in pages.items():
                results[name] = _stats(await _measure(session, base + "/console" + path,
                                                      args.requests))
                if args.plans:
                    capture.statements, capture.active = [], True
                    async with session.get(base + "/console" + path) as resp:
                        await resp.read()
                    capture.active = False
                    plans[name] = await relay_store.read(
                        lambda: _plans(database.obj.connection(), capture.statements,
                                       sqlite))
            if args.screenshot:
                await _screenshot(base, args.screenshot)
    finally:
        await server.close()
    worst = max(r["max_ms"] for r in results.values())
    cost = await asyncio.to_thread(write_cost, tmp, args.cost_rounds)
    return {"store": args.store, "fill_s": round(fill_s, 1), "rows": counts,
            "write_cost": cost,
            "healthz": _stats(health), "pages": results, "plans": plans,
            "worst_page_max_ms": round(worst, 1),
            "worst_page_p50_ms": round(max(r["p50_ms"] for r in results.values()), 1)}


async def _first_input(store_cfg: Any) -> int:
    """The id of the target purchase's first input (its inputs' ids follow it)."""
    from relay.store.database import Store
    from relay.store.models import database

    store = Store(store_cfg)
    await store.open()
    try:
        return int(await store.read(lambda: database.execute_sql(
            "SELECT MIN(id) FROM input_log WHERE platform = 'apple' AND subject_key = "
            f"'{TARGET}'").fetchone()[0]))
    finally:
        await store.close()


def write_cost(tmp: Path, rounds: int) -> dict[str, float]:
    """Median transaction time, migration 7's additions against none, alternating rounds
    (plain peewee transactions on the real pragmas; the bench's own thread)."""
    from relay.config import StoreConfig
    from relay.core.retry_policy import Verdict
    from relay.outbox import queue as outbox_db
    from relay.outbox.queue import Outcome
    from relay.store import migrations, statements
    from relay.store.database import make_database
    from relay.store.models import database

    dbs = {}
    for name in ("with", "without"):
        db = dbs[name] = make_database(StoreConfig(path=str(tmp / f"cost-{name}.sqlite3")))
        db.connect()
        database.initialize(db)
        migrations.migrate(db)
    dbs["without"].execute_sql("DROP INDEX delivery_endpoint_id")
    times: dict[str, list[float]] = {"insert_with": [], "insert_without": [],
                                     "record_with": [], "record_without": []}
    counter = iter(range(10**9))
    real_note = outbox_db.note_attempts

    def insert() -> None:
        now = int(time.time() * 1000)
        events = [(f"rly_c{next(counter):012d}", "subscription.renewed", "webhook", "apple",
                   f"o{n % 5000}", 1, f"u{n}", now, now, None, False, "{}")
                  for n in range(100)]
        cursors = statements.insert_events(events)
        statements.insert_deliveries([
            (cursor, endpoint, f"apple:{eid}", 1, "pending", 0, now)
            for eid, cursor in cursors.items() for endpoint in ("billing", "analytics")])

    claimed: list[int] = []

    def claim() -> None:  # the 100 newest billing rows, as a claim leaves them (untimed)
        db = database.obj
        claimed[:] = [r[0] for r in db.execute_sql(
            "SELECT id FROM delivery WHERE endpoint = 'billing' ORDER BY id DESC LIMIT 100")]
        db.execute_sql(f"UPDATE delivery SET claimed_until_ms = 7 WHERE id IN "
                       f"({', '.join(map(str, claimed))})")

    def record(note: bool) -> None:
        now = int(time.time() * 1000)
        outbox_db.note_attempts = real_note if note else (lambda outcomes: None)
        try:
            outbox_db.record([Outcome(i, "billing", 7, Verdict.DELIVERED, now, now, 30, 200,
                                      None, '{"ok":true}') for i in claimed], now)
        finally:
            outbox_db.note_attempts = real_note

    def timed(name: str, db: Any, work: Callable[[], None]) -> None:
        t = time.perf_counter()
        with db.atomic():
            work()
        times[name].append(time.perf_counter() - t)

    try:
        for r in range(rounds):
            for name in (("with", "without") if r % 2 else ("without", "with")):
                database.initialize(dbs[name])
                timed(f"insert_{name}", dbs[name], insert)
                with dbs[name].atomic():
                    claim()
                timed(f"record_{name}", dbs[name], lambda n=name: record(n == "with"))
    finally:
        for db in dbs.values():
            db.close()
    med = {k: statistics.median(v) * 1000 for k, v in times.items()}
    return {"insert_with_ms": round(med["insert_with"], 3),
            "insert_without_ms": round(med["insert_without"], 3),
            "record_with_ms": round(med["record_with"], 3),
            "record_without_ms": round(med["record_without"], 3)}


def _stats(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    return {"p50_ms": round(statistics.median(ordered), 2),
            "p95_ms": round(ordered[max(0, int(len(ordered) * 0.95) - 1)], 2),
            "max_ms": round(ordered[-1], 2)}


async def _screenshot(base: str, out: str) -> None:
    """The overview as a signed-in browser sees it (Debian's Chromium via Playwright)."""
    from playwright.async_api import async_playwright

    from tests.support.browser import CHROMIUM, CHROMIUM_ARGS

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = await browser.new_page(viewport={"width": 1280, "height": 900})
        await page.goto(base + "/console/signin")
        await page.fill("#secret", ADMIN_TOKEN)
        await page.click("button:has-text('Sign in')")
        await page.wait_for_url("**/console/")
        await page.screenshot(path=out, full_page=True)
        await browser.close()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="purchases")
    parser.add_argument("--events", type=int, default=60_000,
                        help="events; deliveries are about 1.7 times as many")
    parser.add_argument("--inputs", type=int, default=1000,
                        help="inputs of the purchase whose history the page shows")
    parser.add_argument("--requests", type=int, default=20, help="timed GETs per page")
    parser.add_argument("--store", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--plans", action="store_true", help="print each page's query plans")
    parser.add_argument("--cost-rounds", type=int, default=200,
                        help="paired transactions for the write-cost figures")
    parser.add_argument("--screenshot", help="write a PNG of the overview here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as d:
        r = asyncio.run(_bench(args, Path(d)))
    n = r["rows"]
    print(f"console bench ({r['store']}): {n['purchases']:,} purchases, {n['events']:,} "
          f"events, {n['deliveries']:,} deliveries, {n['attempts']:,} attempts, "
          f"{n['inbox']:,} inbox rows, {n['input log']:,} inputs, {n['ledger']:,} ledger "
          f"rows, one purchase with {n['inputs of one purchase']:,} inputs and "
          f"{n['ledger rows of it']:,} ledger rows (filled in {r['fill_s']} s); "
          f"{args.requests} GETs per page")
    h = r["healthz"]
    print(f"  {'GET /healthz (baseline)':30} p50 {h['p50_ms']:7.2f} ms  p95 {h['p95_ms']:7.2f}"
          f" ms  max {h['max_ms']:7.2f} ms")
    for name, s in r["pages"].items():
        print(f"  {name:30} p50 {s['p50_ms']:7.2f} ms  p95 {s['p95_ms']:7.2f} ms  "
              f"max {s['max_ms']:7.2f} ms")
    c = r["write_cost"]
    print("  what the console costs the write path (SQLite, paired transactions, medians):")
    print(f"  {'insert 100 events + 200 deliveries':36} {c['insert_with_ms']:.2f} ms with "
          f"migration 7's index, {c['insert_without_ms']:.2f} ms without (x"
          f"{c['insert_with_ms'] / c['insert_without_ms']:.2f})")
    print(f"  {'record 100 attempts':36} {c['record_with_ms']:.2f} ms counting them per "
          f"minute, {c['record_without_ms']:.2f} ms without (x"
          f"{c['record_with_ms'] / c['record_without_ms']:.2f})")
    for name, lines in r["plans"].items():
        print(f"\n{name}:")
        print("\n".join(lines))
    return r


if __name__ == "__main__":
    main()
