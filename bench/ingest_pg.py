"""The `--store postgres` run of bench/ingest.py: N relay instances on one PostgreSQL
database, the load split evenly across them (one load generator per instance, in parallel),
reported as a ratio to the single SQLite instance measured in the same run."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg2

Load = Callable[[str, Path, Path, int, int, float], dict[str, Any]]


def _database(url: str, name: str, drop_only: bool = False) -> str:
    conn = psycopg2.connect(url)
    conn.autocommit = True
    try:
        cur = conn.cursor()
        cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if not drop_only:
            cur.execute(f'CREATE DATABASE "{name}"')
    finally:
        conn.close()
    u = urlsplit(url)
    return urlunsplit((u.scheme, u.netloc, "/" + name, u.query, u.fragment))


def _merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
    total = {k: sum(p[k] for p in parts) for k in ("requests", "accepted", "non2xx",
                                                   "duplicates", "socket_errors")}
    total["accepted_per_s"] = sum(p["accepted_per_s"] for p in parts)
    for k in ("p50_ms", "p99_ms", "p999_ms", "max_ms"):  # the worse instance
        total[k] = max(p[k] for p in parts)
    return total


def run_postgres(ingest: ModuleType, args: argparse.Namespace, tmp: Path, script: Path,
                 load: Load, need: int) -> dict[str, Any]:
    """`ingest` is bench/ingest.py as loaded (its helpers; not re-imported)."""
    n = args.instances
    url = _database(args.pg_url, "relay_bench_ingest")
    store = f'url = "{url}"'
    procs, ports = [], []
    try:
        for i in range(n):
            per = max(int(need * (args.duration + args.warmup) / n), 1000)
            ingest.make_request_files(tmp / f"pg{i}", per, args.threads,
                                      offset=20_000_000 * (i + 1))
            ports.append(ingest.free_port())
            procs.append(ingest.start_relay(ports[-1], tmp, args.log_level, store,
                                            name=f"pg{i}"))
            ingest.wait_ready(ports[-1], procs[-1])  # one at a time: the first one migrates
        conns = max(args.connections // n, 1)

        def one(i: int, seconds: float) -> dict[str, Any]:
            url = f"http://127.0.0.1:{ports[i]}{ingest.WEBHOOK_PATH}"
            return ingest.figures(load(url, script, tmp / f"pg{i}", args.threads, conns,
                                       seconds))

        with ThreadPoolExecutor(n) as pool:
            list(pool.map(lambda i: one(i, args.warmup), range(n)))
            parts = list(pool.map(lambda i: one(i, args.duration), range(n)))
    finally:
        for proc in procs:
            ingest.stop(proc)
    conn = psycopg2.connect(url)
    try:
        cur = conn.cursor()
        cur.execute("SELECT count(*) FROM inbox")
        stored = cur.fetchone()[0]
    finally:
        conn.close()
    _database(args.pg_url, "relay_bench_ingest", drop_only=True)
    merged = _merge(parts)
    merged.update(instances=n, stored=stored)
    base = args.sqlite_figures if hasattr(args, "sqlite_figures") else None
    print(f"{f'relay x{n} on PostgreSQL':32}{merged['accepted_per_s']:>12,.0f}"
          f"{merged['p50_ms']:>9.2f}{merged['p99_ms']:>9.2f}{merged['p999_ms']:>10.2f}")
    if base:
        print(f"{'PostgreSQL x' + str(n) + ' / SQLite x1':32}"
              f"{merged['accepted_per_s'] / base['accepted_per_s']:>12.2f}")
    return merged
