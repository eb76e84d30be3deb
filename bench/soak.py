"""Soak: signed, unique Attesto deliveries at half the measured maximum ingest rate for
10 minutes, with the outbox delivering every event to a loopback receiver.

Run from the worktree root:  /tmp/v/bin/python bench/soak.py [--duration 600] [--rate N]
Not in bench/run.py's default list (it takes 10 minutes); `main(argv)` returns the figures.

1. The maximum: unless --rate is given, a fresh `relay serve` with the same downstream
   takes wrk (bench/ingest.py's machinery) for --measure seconds; the soak runs at half its
   accepted/s.
2. The soak: another fresh `relay serve` (temp config + SQLite, one `[[downstream]]` at the
   receiver of bench/relay.py, secret from RELAY_CREDENTIAL_DOWNSTREAM_SOAK_SECRET). An
   open-loop generator sends request i at t0 + i/rate whatever the answers do; latency is
   measured from that scheduled time, so a stall shows up instead of slowing the load.
3. Every --interval seconds: relay's VmRSS, requests sent, 2xx, errors, p50/p99 of the
   requests scheduled in that interval, deliveries the receiver got.
4. After a drain: is every acknowledged delivery in the inbox, and every event delivered?
   The table and verdict go to stdout and to bench/SOAK.md. 127.0.0.1 only; bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
for p in (str(ROOT), str(BENCH)):
    if p not in sys.path:
        sys.path.insert(0, p)

import ingest  # noqa: E402
from receiver_proc import start_receiver, stop_receiver  # noqa: E402
from run import machine  # noqa: E402

from relay.core.signing import generate_secret  # noqa: E402

ENDPOINT = "soak"
CHUNK = 5000


# ---- the pieces: receiver, relay with a flowing downstream, signed deliveries ------------

def received(base: str, reset: bool = False) -> int:
    with urllib.request.urlopen(f"{base}/stats{'?reset=1' if reset else ''}", timeout=10) as r:
        count: int = json.load(r)["count"]
        return count


def start_relay(tmp: Path, receiver: str, log_level: str) -> tuple[subprocess.Popen[bytes], int]:
    downstream = ('[outbox]\nallow_networks = ["127.0.0.0/8"]\n'
                  f'[[downstream]]\nname = "{ENDPOINT}"\nurl = "{receiver}/hook"\n')
    env = {f"RELAY_CREDENTIAL_DOWNSTREAM_{ENDPOINT.upper()}_SECRET": generate_secret()}
    port = ingest.free_port()
    proc = ingest.start_relay(port, tmp, log_level, downstream=downstream, env_extra=env)
    ingest.wait_ready(port, proc)
    return proc, port


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def sign(path: Path, rate: float, duration_s: float, planned_start: float) -> int:
    """Write one signed delivery per scheduled send to `path`, in order.

    Attesto's replay window is 5 minutes, so each chunk is signed for the time it will be
    sent (planned start + its offset in the schedule), not for now.
    """
    count = int(rate * duration_s) + CHUNK
    subjects = max(count // 4, 1)
    chunks = [(s, min(s + CHUNK, count), subjects, int(planned_start + s / rate), 0)
              for s in range(0, count, CHUNK)]
    with multiprocessing.get_context("spawn").Pool(min(2, os.cpu_count() or 1)) as pool, \
            open(path, "w", encoding="utf-8") as out:
        for part in pool.imap(ingest._make_chunk, chunks):
            out.write("\n".join(part) + "\n")
    return count


# ---- 1. the maximum -------------------------------------------------------------------------

def measure_max(tmp: Path, receiver: str, seconds: float, log_level: str) -> dict[str, Any]:
    """Accepted/s of a fresh relay (downstream flowing) under wrk, bench/ingest.py style."""
    use_wrk = shutil.which("wrk") is not None
    load = ingest.run_wrk if use_wrk else ingest.run_python_load
    threads, connections = 2, 64
    script = tmp / "deliver.lua"
    script.write_text(ingest.LUA)
    ingest.make_request_files(tmp / "warm", 6000, threads, offset=40_000_000)
    ingest.make_request_files(tmp / "max", int(4000 * seconds), threads, offset=50_000_000)
    proc, port = start_relay(tmp, receiver, log_level)
    try:
        url = f"http://127.0.0.1:{port}{ingest.WEBHOOK_PATH}"
        load(url, script, tmp / "warm", threads, connections, 2)
        fig = ingest.figures(load(url, script, tmp / "max", threads, connections, seconds))
    finally:
        ingest.stop(proc)
    fig["tool"] = "wrk" if use_wrk else "aiohttp load generator"
    return fig


# ---- 2./3. the soak --------------------------------------------------------------------------

def _pct(xs: list[float], q: float) -> float:
    return xs[min(len(xs) - 1, int(len(xs) * q / 100))] if xs else 0.0


async def drive(url: str, path: Path, rate: float, duration_s: float, interval_s: float,
                pid: int, receiver: str) -> list[dict[str, Any]]:
    """Open loop: request i goes at t0 + i/rate; per interval figures by scheduled time."""
    n_int = max(1, round(duration_s / interval_s))
    total = int(rate * duration_s)
    buckets = [{"sent": 0, "ok": 0, "dup": 0, "errors": 0, "lat": []} for _ in range(n_int)]
    samples: list[dict[str, int]] = []
    loop = asyncio.get_running_loop()
    timeout = aiohttp.ClientTimeout(total=30)
    connector = aiohttp.TCPConnector(limit=512)
    tasks: set[asyncio.Task[None]] = set()

    async def send(session: aiohttp.ClientSession, i: int, line: str, at: float) -> None:
        b = buckets[min(n_int - 1, int(i / rate // interval_s))]
        eid, ev, ts, sig, body = line.rstrip("\n").split("\t", 4)
        headers = {"Content-Type": "application/json", "X-Attesto-Event": ev,
                   "X-Attesto-Event-Id": eid, "X-Attesto-Timestamp": ts,
                   "X-Attesto-Signature": sig}
        b["sent"] += 1
        try:
            async with session.post(url, data=body.encode(), headers=headers) as resp:
                text = await resp.read()
        except (TimeoutError, aiohttp.ClientError):
            b["errors"] += 1
            return
        b["lat"].append((time.perf_counter() - at) * 1000)
        if not 200 <= resp.status < 300:
            b["errors"] += 1
        elif b"duplicate" in text:
            b["dup"] += 1
        else:
            b["ok"] += 1

    async def sampler(t0: float) -> None:
        for m in range(n_int):
            await asyncio.sleep(max(0.0, t0 + (m + 1) * interval_s - time.perf_counter()))
            got = await loop.run_in_executor(None, received, receiver)
            samples.append({"rss_kb": rss_kb(pid), "received_total": got})

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        with open(path, encoding="utf-8") as lines:
            t0 = time.perf_counter()
            watch = asyncio.create_task(sampler(t0))
            i = 0
            while i < total:
                due = min(total, int((time.perf_counter() - t0) * rate) + 1)
                while i < due:
                    task = asyncio.create_task(send(session, i, lines.readline(),
                                                    t0 + i / rate))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                    i += 1
                await asyncio.sleep(max(0.0, t0 + i / rate - time.perf_counter()))
            if tasks:
                await asyncio.gather(*list(tasks))
            await watch
    rows, before, acked = [], 0, 0
    for m, (b, s) in enumerate(zip(buckets, samples, strict=True)):
        lat = sorted(b["lat"])
        acked += b["ok"]
        rows.append({"minute": m + 1, "rss_mb": s["rss_kb"] / 1024, "sent": b["sent"],
                     "ok_2xx": b["ok"] + b["dup"], "accepted": b["ok"],
                     "duplicates": b["dup"], "errors": b["errors"],
                     "p50_ms": _pct(lat, 50), "p99_ms": _pct(lat, 99),
                     "max_ms": lat[-1] if lat else 0.0,
                     "delivered": s["received_total"] - before,
                     "behind": acked - s["received_total"]})
        before = s["received_total"]
    return rows


def outbox_counts(db_path: Path) -> dict[str, int]:
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as db:
        out = {"inbox": db.execute("SELECT count(*) FROM inbox").fetchone()[0],
               "events": db.execute("SELECT count(*) FROM event").fetchone()[0]}
        for status in ("pending", "held", "delivered", "dead"):
            out[status] = db.execute("SELECT count(*) FROM delivery WHERE status = ?",
                                     (status,)).fetchone()[0]
    return out


def drain(db_path: Path, seconds: float) -> tuple[dict[str, int], float]:
    """Wait until no delivery is pending (or `seconds` pass); return counts and time taken."""
    t0 = time.monotonic()
    while True:
        counts = outbox_counts(db_path)
        if counts["pending"] == 0 or time.monotonic() - t0 > seconds:
            return counts, time.monotonic() - t0
        time.sleep(0.5)


# ---- 4. report ------------------------------------------------------------------------------

def verdict(res: dict[str, Any]) -> dict[str, Any]:
    rows = res["intervals"]
    warm, end = rows[0]["rss_mb"], rows[-1]["rss_mb"]
    p99s = sorted(r["p99_ms"] for r in rows)
    median_p99 = p99s[len(p99s) // 2]
    ob = res["outbox"]
    acked = sum(r["accepted"] for r in rows)
    return {
        "rss_growth_pct": (end - warm) / warm * 100 if warm else 0.0,
        "rss_flat": end <= warm * 1.10,
        "errors": sum(r["errors"] for r in rows),
        "p99_max_over_median": p99s[-1] / median_p99 if median_p99 else 0.0,
        "p99_stable": p99s[-1] <= 2 * median_p99,
        "acked": acked,
        "all_acked_stored": ob["inbox"] == acked + sum(r["duplicates"] for r in rows),
        "all_delivered": (ob["pending"] == 0 and ob["dead"] == 0
                          and ob["delivered"] == ob["events"]
                          and res["received_total"] >= ob["delivered"]),
    }


def table(res: dict[str, Any]) -> list[str]:
    unit = "min" if res["interval_s"] == 60 else f"{res['interval_s']:g}s"
    out = [f"| {unit} | RSS MB | sent | 2xx | errors | p50 ms | p99 ms | max ms | delivered "
           "| outbox behind |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in res["intervals"]:
        out.append(f"| {r['minute']} | {r['rss_mb']:.1f} | {r['sent']:,} | {r['ok_2xx']:,} | "
                   f"{r['errors']} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
                   f"{r['max_ms']:.1f} | {r['delivered']:,} | {r['behind']:,} |")
    return out


def summary(res: dict[str, Any]) -> list[str]:
    v, ob = res["verdict"], res["outbox"]
    return [
        f"RSS: {res['rss_start_mb']:.1f} MB idle before load, {res['intervals'][0]['rss_mb']:.1f}"
        f" MB after the first interval, {res['intervals'][-1]['rss_mb']:.1f} MB at the end, "
        f"{res['rss_after_drain_mb']:.1f} MB after the drain -> "
        f"{'flat' if v['rss_flat'] else 'GROWING'} ({v['rss_growth_pct']:+.1f} % since the "
        "first interval; flat means within 10 %)",
        f"errors: {v['errors']} (non-2xx, timeouts, connection errors); "
        f"duplicates: {sum(r['duplicates'] for r in res['intervals'])}",
        f"p99: worst interval {v['p99_max_over_median']:.2f}x the median interval -> "
        f"{'stable' if v['p99_stable'] else 'UNSTABLE'} (stable means within 2x)",
        f"delivery: {v['acked']:,} acknowledged, {ob['inbox']:,} inbox rows, {ob['events']:,} "
        f"events, {ob['delivered']:,} delivered, {ob['pending']} pending, {ob['dead']} dead; "
        f"receiver got {res['received_total']:,} after a {res['drain_s']:.1f} s drain -> "
        + ("everything acknowledged was delivered"
           if v["all_acked_stored"] and v["all_delivered"] else "NOT ALL DELIVERED"),
    ]


def write_md(res: dict[str, Any], path: Path) -> None:
    m = res["machine"]
    mx = res["max"]
    how = (f"measured: {mx['accepted_per_s']:,.0f} accepted/s for {res['measure_s']:g} s with "
           f"{mx['tool']}, 64 connections, downstream flowing" if mx else "given with --rate")
    lines = [
        "# Soak results", "",
        "Produced by `bench/soak.py`; do not edit by hand. A real `relay serve` (SQLite WAL, "
        "synchronous=FULL) takes signed, unique Attesto deliveries over 127.0.0.1 at half its "
        "maximum ingest rate from an open-loop generator (request i is sent at t0 + i/rate; "
        "latency counts from that time), while the outbox delivers every event to a loopback "
        "receiver.", "",
        "## Machine", "", "| | |", "|---|---|",
        *(f"| {k} | {v} |" for k, v in m.items()), "",
        "## Settings", "", "| | |", "|---|---|",
        f"| maximum ingest rate | {how} |",
        f"| soak rate | {res['rate']:,.0f} deliveries/s |",
        f"| duration | {res['duration_s']:g} s, figures every {res['interval_s']:g} s |",
        "| downstream | one `[[downstream]]` at a loopback receiver (bench/relay.py's) |", "",
        "## Per interval", "",
        "RSS is relay's VmRSS at the end of the interval; latency covers the requests "
        "scheduled in it; delivered is what the receiver got during it; outbox behind is "
        "acknowledged so far minus received so far (approximate: requests still in flight).",
        "",
        *table(res), "",
        "## Verdict", "", *(f"- {line}" for line in summary(res)), ""]
    path.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of soak")
    parser.add_argument("--interval", type=float, default=60.0, help="seconds per table row")
    parser.add_argument("--rate", type=float, help="the maximum accepted/s (default: measure)")
    parser.add_argument("--measure", type=float, default=10.0, help="seconds to measure it")
    parser.add_argument("--drain", type=float, default=300.0, help="max seconds of drain")
    parser.add_argument("--log-level", default="info", help="relay's [log] level")
    parser.add_argument("--out", default=str(BENCH / "SOAK.md"), help="'' to skip")
    args = parser.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="relay-soak-"))
    receiver_proc, receiver = start_receiver()
    try:
        mx: dict[str, Any] = {}
        if args.rate is None:
            (tmp / "max").mkdir()
            mx = measure_max(tmp / "max", receiver, args.measure, args.log_level)
            max_rate = mx["accepted_per_s"]
        else:
            max_rate = args.rate
        rate = max_rate / 2
        print(f"soak: maximum {max_rate:,.0f} accepted/s -> {rate:,.0f}/s for "
              f"{args.duration:g} s; signing deliveries...", flush=True)
        soak_dir = tmp / "soak"
        soak_dir.mkdir()
        planned = time.time() + 10 + rate * args.duration / 15_000  # signing + startup
        sign(soak_dir / "requests", rate, args.duration, planned)
        proc, port = start_relay(soak_dir, receiver, args.log_level)
        try:
            received(receiver, reset=True)
            time.sleep(1)
            rss_start = rss_kb(proc.pid) / 1024
            print(f"soak: relay pid {proc.pid}, {rss_start:.1f} MB; started "
                  f"{time.time() - planned:+.0f} s from the signed schedule", flush=True)
            rows = asyncio.run(drive(f"http://127.0.0.1:{port}{ingest.WEBHOOK_PATH}",
                                     soak_dir / "requests", rate, args.duration,
                                     args.interval, proc.pid, receiver))
            counts, drain_s = drain(soak_dir / "relay.sqlite3", args.drain)
            rss_drained = rss_kb(proc.pid) / 1024
            received_total = received(receiver)
        finally:
            ingest.stop(proc)
        res: dict[str, Any] = {
            "machine": machine(), "max": mx, "measure_s": args.measure,
            "max_accepted_per_s": max_rate, "rate": rate, "duration_s": args.duration,
            "interval_s": args.interval, "intervals": rows, "rss_start_mb": rss_start,
            "rss_end_mb": rows[-1]["rss_mb"], "rss_after_drain_mb": rss_drained,
            "outbox": outbox_counts(soak_dir / "relay.sqlite3"), "drain_s": drain_s,
            "received_total": received_total}
        res["drain_counts"] = counts
        res["verdict"] = verdict(res)
        res["errors"] = res["verdict"]["errors"]
        print(f"soak: {rate:,.0f} deliveries/s for {args.duration:g} s")
        print("\n".join(table(res)))
        print("\n".join(summary(res)))
        if args.out:
            write_md(res, Path(args.out))
        return res
    finally:
        stop_receiver(receiver_proc)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
