"""Run every benchmark in bench/ in one go and write bench/RESULTS.md.

Run from the worktree root:  /tmp/v/bin/python bench/run.py [--quick] [--only ingest,...]
Each bench is imported and its `main(argv)` called with bounded arguments; each figure is
reported next to the baseline the same bench measured in the same run, and their ratio.
A bench that fails is reported as failed (with the error), never silently skipped.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import importlib.util
import json
import os
import platform
import socket
import sqlite3
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
if sys.path and Path(sys.path[0] or ".").resolve() == BENCH:
    sys.path.pop(0)  # run as a script: bench/relay.py must not shadow the relay package
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

Row = tuple[str, float, str, float, str]  # figure, value, baseline name, baseline, unit


def _pg() -> bool:
    try:
        socket.create_connection(("127.0.0.1", 5432), timeout=1).close()
    except OSError:
        return False
    return True


def _verify(f: dict[str, Any]) -> list[Row]:
    d, r = f["direct"], f["relay"]
    return [("verify throughput", r["rps"], "direct to Attesto", d["rps"], "req/s"),
            ("verify p50, 1 in flight", r["p50_ms"], "direct to Attesto", d["p50_ms"], "ms"),
            ("verify p50, 1 in flight", r["p50_ms"],
             "floor: bare aiohttp proxy + one durable SQLite insert", f["floor"]["p50_ms"],
             "ms"),
            ("verify p99, 1 in flight", r["p99_ms"], "direct to Attesto", d["p99_ms"], "ms"),
            ("verify p99 under load", r["loaded_p99_ms"], "direct to Attesto",
             d["loaded_p99_ms"], "ms")]


def _ingest(f: dict[str, Any]) -> list[Row]:
    c, r = f["ceiling"], f["relay"]
    pg = f.get("postgres")
    scale_out: list[Row] = [] if not pg else [
        (f"ingest, {pg.get('instances', 2)} instances on one PostgreSQL", pg["accepted_per_s"],
         "1 instance on SQLite", r["accepted_per_s"], "deliveries/s")]
    return scale_out + [
            ("webhook ingest, durable", r["accepted_per_s"], "aiohttp HMAC+JSON ceiling",
             c["accepted_per_s"], "deliveries/s"),
            ("webhook ingest p50", r["p50_ms"], "ceiling", c["p50_ms"], "ms"),
            ("webhook ingest p99", r["p99_ms"], "ceiling", c["p99_ms"], "ms")] + [
            ("webhook ingest, store bypassed (the front alone)", b["accepted_per_s"],
             "ceiling", c["accepted_per_s"], "deliveries/s") for b in [f.get("bypassed")] if b] + [
            ("relay CPU per accepted delivery (target <= 0.6)", r["cpu_us_per_delivery"],
             f"today's ({t['commit']}, PERF-NOTES.md)", t["cpu_us_per_delivery"], "µs")
            for t in [f.get("today")] if t]


def _ingest_pinned(f: dict[str, Any]) -> list[Row]:
    """Issue 19's ingest targets: relay and every receiver pinned to one core, wrk on the
    other; throughput, p99 and CPU per accepted delivery, each beside its baseline."""
    c, r = f["ceiling"], f["relay"]
    receivers = f.get("receivers", {})
    labels, targets = _load("fastapi_receiver").LABELS, _load("fastapi_receiver").TARGETS
    rows: list[Row] = [
        (f"webhook ingest, 1 core (target >= {targets[n]})", r["accepted_per_s"],
         f"{labels[n]}, same core", b["accepted_per_s"], "deliveries/s")
        for n, b in receivers.items()]
    rows += [("webhook ingest, 1 core (target >= 0.4)", r["accepted_per_s"],
              "aiohttp HMAC+JSON ceiling, same core", c["accepted_per_s"], "deliveries/s"),
             ("webhook ingest p99, 1 core (target <= 30 ms)", r["p99_ms"], "ceiling",
              c["p99_ms"], "ms")]
    rows += [("relay CPU per accepted delivery, 1 core", r["cpu_us_per_delivery"],
              f"{labels[n]} CPU per request", b["cpu_us_per_delivery"], "µs")
             for n, b in receivers.items()]
    today = f.get("today")
    if today:
        rows.append(("relay CPU per accepted delivery, 1 core (target <= 0.6)",
                     r["cpu_us_per_delivery"], f"today's ({today['commit']}, PERF-NOTES.md)",
                     today["cpu_us_per_delivery"], "µs"))
    return rows


def _verify_workers(f: dict[str, Any]) -> list[Row]:
    return [(f"verify throughput, workers = {f['workers']}", f["relay"]["rps"],
             "direct to Attesto", f["direct"]["rps"], "req/s")]


def _ingest_workers(f: dict[str, Any]) -> list[Row]:
    c, r, n = f["ceiling"], f["relay"], f["workers"]
    return [(f"webhook ingest, durable, workers = {n}", r["accepted_per_s"],
             f"ceiling, {n} processes", c["accepted_per_s"], "deliveries/s"),
            (f"webhook ingest p99, workers = {n}", r["p99_ms"], f"ceiling, {n} processes",
             c["p99_ms"], "ms")]


def _ingest_writer(f: dict[str, Any]) -> list[Row]:
    c, r = f["ceiling"], f["relay"]
    return [("webhook ingest, durable, ingest_writer = true", r["accepted_per_s"],
             "aiohttp HMAC+JSON ceiling", c["accepted_per_s"], "deliveries/s"),
            ("webhook ingest p99, ingest_writer = true", r["p99_ms"], "ceiling", c["p99_ms"],
             "ms")]


def _relay(f: dict[str, Any]) -> list[Row]:
    w = f.get("workers")
    workers: list[Row] = [] if not w else [
        (f"outbox delivery, workers = {w['workers']}", w["workers_deliveries_per_s"],
         f"bare client, {w['workers']} processes", w["ceiling_posts_per_s"], "deliveries/s"),
        (f"outbox delivery, workers = {w['workers']}", w["workers_deliveries_per_s"],
         "`relay serve`, one process", w["one_process_deliveries_per_s"], "deliveries/s")]
    pg = f.get("postgres")
    scale_out: list[Row] = [] if not pg else [
        (f"outbox delivery, {pg['instances']} instances on one PostgreSQL "
         f"({pg['duplicates']} duplicates, {pg['order_violations']} out of order)",
         pg["postgres_deliveries_per_s"], "1 `relay serve` on SQLite",
         pg["sqlite_deliveries_per_s"], "deliveries/s")]
    return scale_out + workers + [
        ("outbox delivery, signed, in order", f["relay_deliveries_per_s"],
         "bare aiohttp client ceiling", f["ceiling_posts_per_s"], "deliveries/s")]


def _rows(f: dict[str, Any]) -> list[Row]:
    return [(r[0], r[1], r[2], r[3], r[4]) for r in f["rows"]]


# name -> (argv for the full run, argv for --quick, the rows it reports)
def _repoll(f: dict[str, Any]) -> list[Row]:
    return [("due claim, 500 of 1M rows (p50)", f["claim_500_p50_ms"], "bare indexed SELECT",
             f["select_500_p50_ms"], "ms"),
            ("re-polls through relay", f["polls_per_s"], "fake Attesto directly",
             f["direct_per_s"], "polls/s"),
            ("RSS peak while sweeping", f["rss_peak_sweep_mb"], "RSS before the sweep",
             f["rss_before_mb"], "MB")]


def _console(f: dict[str, Any]) -> list[Row]:
    pages, h, c = f["pages"], f["healthz"], f["write_cost"]
    n = f["rows"]
    where = f"{n['purchases']:,} purchases, {n['deliveries']:,} deliveries"
    return [(f"console: slowest page, worst of each page's GETs ({where})",
             f["worst_page_max_ms"], "GET /healthz p50", h["p50_ms"], "ms")] + [
        (f"console: {name} p50", pages[name]["p50_ms"], "GET /healthz p50", h["p50_ms"], "ms")
        for name in ("overview (6 h plots)", "endpoint, failed", "purchase (3 events)")] + [
        ("insert 100 events + 200 deliveries, migration 7's index", c["insert_with_ms"],
         "without it", c["insert_without_ms"], "ms"),
        ("record 100 attempts, counted per minute", c["record_with_ms"], "not counted",
         c["record_without_ms"], "ms")]


BENCHES: dict[str, tuple[list[str], list[str], Callable[[dict[str, Any]], list[Row]]]] = {
    "verify": (["--duration", "5"], ["--duration", "2", "--requests", "300"], _verify),
    # With PostgreSQL on 127.0.0.1:5432, also two instances on one database (issue 9).
    "ingest": (["--duration", "10"] + (["--store", "postgres"] if _pg() else []),
               ["--duration", "3", "--warmup", "1"], _ingest),
    # With PostgreSQL, also two `relay serve` draining one database against one on SQLite.
    "relay": (["--events", "20000", "--workers", "2"]
              + (["--store", "postgres"] if _pg() else []),
              ["--events", "4000"], _relay),
    # [server] workers = 2: the same benches with relay's worker processes (README Workers).
    # Issue 19: relay and FastAPI receivers (their own venvs) pinned to one core, wrk on
    # the other; two rounds, each row its best.
    "ingest-pinned": (["--duration", "10", "--pin", "--receivers", "fastapi,fastapi-standard",
                       "--rounds", "2", "--no-bypassed"],
                      ["--duration", "3", "--warmup", "1", "--pin", "--receivers",
                       "fastapi,fastapi-standard", "--no-bypassed"], _ingest_pinned),
    "verify-workers": (["--duration", "5", "--workers", "2"],
                       ["--duration", "2", "--requests", "300", "--workers", "2"],
                       _verify_workers),
    "ingest-workers": (["--duration", "10", "--workers", "2"],
                       ["--duration", "3", "--warmup", "1", "--workers", "2"], _ingest_workers),
    # [server] ingest_writer = true: webhooks stored by a writer process (README).
    "ingest-writer": (["--duration", "10", "--ingest-writer"],
                      ["--duration", "3", "--warmup", "1", "--ingest-writer"], _ingest_writer),
    "repoll": (["--polls", "10000"], ["--rows", "300000", "--polls", "2000"], _repoll),
    # Every console page on 1M purchases and ~100k deliveries (issue 20: under 100 ms).
    "console": ([], ["--rows", "200000", "--events", "12000", "--requests", "5",
                     "--cost-rounds", "40"], _console),
    # History, explain and the ledger: a purchase with 1,000 inputs among 1M (issue 18).
    "history": ([], ["--purchases", "100000", "--requests", "100"], _rows),
}
OPTIONAL: tuple[str, ...] = ()  # run if present; its main() must return `rows`
# bench name -> bench/<module>.py
MODULE = {"verify-workers": "verify", "ingest-workers": "ingest",
          "ingest-writer": "ingest", "ingest-pinned": "ingest"}


def machine() -> dict[str, str]:
    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem_kb = next(int(line.split()[1]) for line in
                      Path("/proc/meminfo").read_text().splitlines()
                      if line.startswith("MemTotal"))
        mem = f"{mem_kb / 1_048_576:.1f} GiB"
    except (OSError, StopIteration):
        mem = "?"
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "?"
    versions = {name: metadata.version(name) for name in ("aiohttp", "peewee", "apscheduler")}
    return {"date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "os": f"{platform.system()} {platform.release()}", "cpu": cpu,
            "cpus": str(os.cpu_count()), "memory": mem,
            "python": platform.python_version(), "sqlite": sqlite3.sqlite_version,
            **versions, "commit": commit}


def _load(name: str) -> Any:
    """Import bench/<name>.py. By its own name when free (spawned workers import it again
    that way); by path under bench_<name> when a package has the name (bench/relay.py)."""
    found = importlib.util.find_spec(name)
    if found is None or found.origin == str(BENCH / f"{name}.py"):
        if str(BENCH) not in sys.path:
            sys.path.append(str(BENCH))
        return importlib.import_module(name)
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # multiprocessing (spawn) finds it again by name
    spec.loader.exec_module(module)
    return module


def run(names: list[str], quick: bool) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name in names + [n for n in OPTIONAL if (BENCH / f"{n}.py").exists()]:
        full, short, _ = BENCHES.get(name, ([], [], lambda f: f.get("rows", [])))
        started = time.monotonic()
        module = MODULE.get(name, name)
        print(f"== bench/{module}.py {' '.join(short if quick else full)}", flush=True)
        try:
            figures = _load(module).main(short if quick else full)
            results[name] = {"figures": figures, "seconds": time.monotonic() - started}
        except Exception as exc:  # a failed bench is a result too
            traceback.print_exc()
            results[name] = {"error": f"{type(exc).__name__}: {exc}",
                             "seconds": time.monotonic() - started}
    return results


def render(info: dict[str, str], results: dict[str, Any], quick: bool) -> str:
    out = ["# Benchmark results", "",
           "Produced by `bench/run.py`" + (" --quick" if quick else "") + "; do not edit by "
           "hand. Every figure is compared with a baseline measured by the same bench in "
           "the same run, on the same machine, over 127.0.0.1. For latency a ratio above 1 "
           "is slower than the baseline; for throughput, below 1 is slower.", "",
           "## Machine", "", "| | |", "|---|---|"]
    out += [f"| {k} | {v} |" for k, v in info.items()]
    out += ["", "## Figures", "",
            "| bench | figure | value | baseline | baseline value | ratio |",
            "|---|---|---:|---|---:|---:|"]
    for name, res in results.items():
        if "error" in res:
            out.append(f"| {name} | **failed**: {res['error']} | | | | |")
            continue
        rows = BENCHES[name][2](res["figures"]) if name in BENCHES else res["figures"]["rows"]
        for figure, value, base_name, base, unit in rows:
            ratio = value / base if base else float("nan")
            out.append(f"| {name} | {figure} | {value:,.2f} {unit} | {base_name} | "
                       f"{base:,.2f} {unit} | {ratio:.2f} |")
    out += ["", "## Raw figures", ""]
    for name, res in results.items():
        out += [f"### {name} ({res['seconds']:.0f} s)", "", "```json",
                json.dumps(res.get("figures", res), indent=1, default=str), "```", ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs (a smoke test)")
    parser.add_argument("--only", default=",".join(BENCHES), help="comma-separated benches")
    parser.add_argument("--out", default=str(BENCH / "RESULTS.md"))
    args = parser.parse_args(argv)
    info = machine()
    results = run([n for n in args.only.split(",") if n], args.quick)
    Path(args.out).write_text(render(info, results, args.quick) + "\n")
    print(f"wrote {args.out}")
    return {"machine": info, "results": results}


if __name__ == "__main__":
    outcome = main()
    sys.exit(1 if any("error" in r for r in outcome["results"].values()) else 0)
