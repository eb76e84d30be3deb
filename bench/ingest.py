"""Ingest benchmark: signed, unique Attesto deliveries at a real `relay serve`, side by side
with a bare aiohttp handler that only checks the HMAC and parses the JSON (the ceiling).

Run from the worktree root:  /tmp/v/bin/python bench/ingest.py [--duration 10]
`--store postgres [--instances 2] [--pg-url URL]` adds a run of N relay instances sharing
one PostgreSQL database (the load split evenly across them), against SQLite's run.
Both servers run as subprocesses on 127.0.0.1 with the same deliveries; the load comes
from wrk (64 connections; a Lua script feeds pre-signed requests from files), or from an
aiohttp load generator in a subprocess when wrk is not installed. Relay commits durably
(SQLite WAL, synchronous=FULL). Figures are printed as ratios to the ceiling.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if sys.path[:1] != [str(ROOT)]:  # ahead of bench/: bench/relay.py must not shadow relay
    sys.path.insert(0, str(ROOT))
if str(ROOT / "bench") not in sys.path:
    sys.path.append(str(ROOT / "bench"))

import wrk  # noqa: E402
from procstat import cpu_s  # noqa: E402

SECRET = "bench-secret-0123456789abcdefghijklmnopqrstuvwxyz"
WEBHOOK_PATH = "/v1/webhooks/attesto"
BENCH_DIR = Path(__file__).resolve().parent

LUA = wrk.SUMMARY_LUA + r"""
function init(args)
  file = assert(io.open(args[1] .. "." .. id, "r"))
  dup, non2xx, wrapped = 0, 0, 0
end
function request()
  local line = file:read("*l")
  if line == nil then
    wrapped = wrapped + 1
    file:seek("set", 0)
    line = file:read("*l")
  end
  local eid, ev, ts, sig, body = line:match("^([^\t]*)\t([^\t]*)\t([^\t]*)\t([^\t]*)\t(.*)$")
  return wrk.format("POST", nil, {["Content-Type"] = "application/json",
    ["X-Attesto-Event"] = ev, ["X-Attesto-Event-Id"] = eid,
    ["X-Attesto-Timestamp"] = ts, ["X-Attesto-Signature"] = sig}, body)
end
function response(status, headers, body)
  if status ~= 200 then non2xx = non2xx + 1
  elseif body:find("duplicate", 1, true) then dup = dup + 1 end
end
"""


# ---- deliveries -------------------------------------------------------------------------

def _make_chunk(args: tuple[int, int, int, int, int]) -> list[str]:
    """Signed deliveries [start, stop) as request-file lines: id, event, t, signature, body.

    Each subject gets about four deliveries: a purchase, then renewals; one in five is a
    Google subscription (which also marks a re-verify), the rest Apple.
    """
    from relay.attesto.simulator import AttestoSimulator

    start, stop, subjects, t, offset = args
    sim = AttestoSimulator(webhook_secret=SECRET)
    base_ms = t * 1000 - 3_600_000
    lines = []
    for i in range(start, stop):
        k = offset + i % subjects
        n = offset + i
        if k % 5 == 4:
            p = sim.add_google(token=f"bench-token-{n}", product_id="premium_monthly")
            body = sim.google_webhook(2 if i >= subjects else 4, p, event_time_ms=base_ms + i,
                                      root_token=f"root-{k}")
        else:
            txn = sim.add_apple(transaction_id=str(3_000_000_000_000_000 + n),
                                original_transaction_id=str(2_000_000_000_000_000 + k),
                                product_id="com.example.premium",
                                expires_ms=base_ms + 30 * 86_400_000 + i,
                                purchase_ms=base_ms, environment="production")
            body = sim.apple_webhook("DID_RENEW" if i >= subjects else "SUBSCRIBED", txn,
                                     signed_ms=base_ms + i, auto_renew=True)
        sim.apple.clear()
        sim.google.clear()
        h = sim.headers_for(body, t=t)
        lines.append("\t".join((h["X-Attesto-Event-Id"], h["X-Attesto-Event"],
                                h["X-Attesto-Timestamp"], h["X-Attesto-Signature"],
                                body.decode())))
    return lines


def make_request_files(prefix: Path, count: int, threads: int, offset: int = 0) -> None:
    """Write `count` unique signed deliveries, split round-robin into `threads` files."""
    t = int(time.time())
    subjects = max(count // 4, 1)
    step = 5000
    chunks = [(s, min(s + step, count), subjects, t, offset) for s in range(0, count, step)]
    with multiprocessing.get_context("spawn").Pool(min(2, os.cpu_count() or 1)) as pool:
        parts = pool.map(_make_chunk, chunks)
    files = [open(f"{prefix}.{n}", "w", encoding="utf-8") for n in range(threads)]  # noqa: SIM115
    try:
        i = 0
        for part in parts:
            for line in part:
                files[i % threads].write(line + "\n")
                i += 1
    finally:
        for f in files:
            f.close()


# ---- servers ----------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_ready(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("server did not become ready")


def serve_ceiling(port: int) -> None:
    """The ceiling: aiohttp, read the body, verify the HMAC, parse JSON, answer. Nothing else."""
    from aiohttp import web

    from relay.attesto.signature import AttestoSignatureError, verify_attesto

    accepted = json.dumps({"status": "accepted"}).encode()

    async def handle(request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            verify_attesto(request.headers.get("X-Attesto-Signature"), raw, [SECRET],
                           int(time.time()))
        except AttestoSignatureError:
            return web.Response(status=401)
        json.loads(raw)
        return web.Response(body=accepted, content_type="application/json")

    async def health(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application(client_max_size=262_144)
    app.router.add_post(WEBHOOK_PATH, handle)
    app.router.add_get("/healthz", health)
    # SO_REUSEPORT: with --workers N, N of these share the port, as relay's workers do.
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None,
                reuse_port=True)


class Ceiling:
    """`processes` ceiling servers on one port (one per relay worker: same footing)."""

    def __init__(self, port: int, log: Path, processes: int = 1) -> None:
        with open(log, "wb") as out:
            self.procs = [subprocess.Popen([sys.executable, str(Path(__file__).resolve()),
                                            "--serve-ceiling", str(port)],
                                           stdout=out, stderr=out)
                          for _ in range(processes)]
        self.pid = self.procs[0].pid

    def wait_ready(self, port: int) -> None:
        for proc in self.procs:
            wait_ready(port, proc)

    def stop(self) -> None:
        for proc in self.procs:
            stop(proc)


# A configured endpoint, held, so every event also writes its outbox row.
HELD_DOWNSTREAM = ('[[downstream]]\nname = "billing"\nurl = "https://billing.example/hook"\n'
                   "enabled = false\n")


def start_relay(port: int, tmp: Path, log_level: str, store: str = "", name: str = "relay",
                downstream: str = HELD_DOWNSTREAM,
                env_extra: dict[str, str] | None = None,
                workers: int = 1, entry: tuple[str, ...] = ("-m", "relay"),
                ingest_writer: bool = False) -> subprocess.Popen[bytes]:
    """`relay serve` on 127.0.0.1:`port` with its config (and SQLite file) in `tmp`.

    `store` is the `[store]` body (default: a SQLite file in `tmp`); `downstream` is TOML
    appended to the config (the `[[downstream]]` tables, and any `[outbox]` they need);
    `env_extra` adds environment (their RELAY_CREDENTIAL_* secrets); `workers` is
    `[server] workers`, `ingest_writer` `[server] ingest_writer`; `entry` what Python runs
    (bench/relay_no_store.py for the store-bypassed row).
    """
    config = tmp / f"{name}.toml"
    store = store or f'path = "{tmp / "relay.sqlite3"}"'
    config.write_text(
        f'[server]\nport = {port}\nworkers = {workers}\n'
        f'ingest_writer = {str(ingest_writer).lower()}\n[store]\n{store}\n'
        f'[scheduler]\nenabled = false\n[log]\nlevel = "{log_level}"\n'
        '[entitlements]\n"com.example.premium" = ["premium"]\n"premium_monthly" = ["premium"]\n'
        + downstream)
    env = {**os.environ, "RELAY_CREDENTIAL_ATTESTO_WEBHOOK_SECRET": SECRET,
           "PYTHONPATH": str(ROOT), **(env_extra or {})}
    env.pop("CREDENTIALS_DIRECTORY", None)
    with open(tmp / f"{name}.log", "wb") as out:
        return subprocess.Popen([sys.executable, *entry, "serve", "--config", str(config)],
                                stdout=out, stderr=out, env=env, cwd=tmp)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# ---- load -------------------------------------------------------------------------------

def run_wrk(url: str, script: Path, prefix: Path, threads: int, connections: int,
            duration_s: float) -> dict[str, Any]:
    return wrk.run(url, script, threads, connections, duration_s, str(prefix))


def run_python_load(url: str, script: Path, prefix: Path, threads: int, connections: int,
                    duration_s: float) -> dict[str, Any]:
    """Fallback load generator (no wrk): closed-loop aiohttp clients in a subprocess."""
    out = subprocess.run(
        [sys.executable, str(BENCH_DIR / "loadgen.py"), url, str(prefix), str(threads),
         str(connections), str(duration_s)],
        capture_output=True, text=True, timeout=duration_s + 60, check=True)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def figures(raw: dict[str, Any]) -> dict[str, Any]:
    seconds = raw["duration_us"] / 1e6
    accepted = raw["requests"] - raw["non2xx"] - raw["duplicates"]
    return {"accepted_per_s": accepted / seconds, "requests": raw["requests"],
            "accepted": accepted, "p50_ms": raw["p50_us"] / 1000,
            "p99_ms": raw["p99_us"] / 1000, "p999_ms": raw["p999_us"] / 1000,
            "max_ms": raw["max_us"] / 1000, "non2xx": raw["non2xx"],
            "duplicates": raw["duplicates"], "socket_errors": raw["socket_errors"]}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per run")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before each run")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2, help="load generator threads")
    parser.add_argument("--log-level", default="info", help="relay's [log] level")
    parser.add_argument("--loadgen", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument("--ceiling-pool", type=int, default=20_000,
                        help="signed deliveries for the ceiling run (it may reuse them)")
    parser.add_argument("--serve-ceiling", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--store", choices=("sqlite", "postgres"), default="sqlite",
                        help="postgres: also run --instances relays on one PostgreSQL")
    parser.add_argument("--instances", type=int, default=2)
    parser.add_argument("--workers", type=int, default=1,
                        help="relay's [server] workers; the ceiling runs as many processes")
    parser.add_argument("--ingest-writer", action="store_true",
                        help="relay's [server] ingest_writer: webhooks stored by a writer "
                             "process")
    parser.add_argument("--pg-url", default=os.environ.get(
        "RELAY_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"))
    args = parser.parse_args(argv)
    if args.serve_ceiling:
        serve_ceiling(args.serve_ceiling)
        return {}
    use_wrk = args.loadgen == "wrk" or (args.loadgen == "auto" and shutil.which("wrk"))
    load = run_wrk if use_wrk else run_python_load
    tool = "wrk" if use_wrk else "aiohttp load generator"

    tmp = Path(tempfile.mkdtemp(prefix="relay-bench-"))
    try:
        script = tmp / "deliver.lua"
        script.write_text(LUA)
        results: dict[str, Any] = {"tool": tool, "connections": args.connections,
                                   "workers": args.workers,
                                   "ingest_writer": args.ingest_writer,
                                   "duration_s": args.duration}

        # 1. The ceiling. It does not dedupe, so a smaller pool may wrap around.
        make_request_files(tmp / "ceiling", args.ceiling_pool, args.threads)
        port = free_port()
        ceiling = Ceiling(port, tmp / "ceiling.log", args.workers)
        try:
            ceiling.wait_ready(port)
            url = f"http://127.0.0.1:{port}{WEBHOOK_PATH}"
            load(url, script, tmp / "ceiling", args.threads, args.connections, args.warmup)
            results["ceiling"] = figures(load(url, script, tmp / "ceiling", args.threads,
                                              args.connections, args.duration))
        finally:
            ceiling.stop()

        # 2. relay, with unique deliveries only: enough for the ceiling's rate, +20 %.
        need = int(results["ceiling"]["accepted_per_s"] * 1.2)
        make_request_files(tmp / "warm", max(int(need * args.warmup), 1000), args.threads,
                           offset=10_000_000)
        make_request_files(tmp / "relay", max(int(need * args.duration), 1000), args.threads)
        port = free_port()
        proc = start_relay(port, tmp, args.log_level, workers=args.workers,
                           ingest_writer=args.ingest_writer)
        try:
            wait_ready(port, proc)
            url = f"http://127.0.0.1:{port}{WEBHOOK_PATH}"
            warm = figures(load(url, script, tmp / "warm", args.threads, args.connections,
                                args.warmup))
            cpu0 = cpu_s(proc.pid)
            results["relay"] = figures(load(url, script, tmp / "relay", args.threads,
                                            args.connections, args.duration))
            # CPU per delivery: a figure a busy host skews far less than the rate.
            results["relay"]["cpu_us_per_delivery"] = (
                (cpu_s(proc.pid) - cpu0) / max(results["relay"]["accepted"], 1) * 1e6)
        finally:
            stop(proc)
        with sqlite3.connect(tmp / "relay.sqlite3") as db:
            stored = db.execute("SELECT count(*) FROM inbox").fetchone()[0]
            events = db.execute("SELECT count(*) FROM event").fetchone()[0]
        # wrk stops with requests in flight: relay still commits those (a 2xx nobody read),
        # so the inbox may hold up to one extra row per connection and run, never fewer.
        answered = warm["accepted"] + results["relay"]["accepted"]
        results["relay"].update(stored=stored, events=events,
                                stored_ok=0 <= stored - answered <= 2 * args.connections)

        # 3. The same relay with the store answering at once: what the front alone costs
        # (one process: worker processes are started as `relay serve`, unpatched).
        if args.workers == 1 and not args.ingest_writer:
            results["bypassed"] = _bypassed(args, tmp, script, load)

        c, r = results["ceiling"], results["relay"]
        results["ratio"] = {"accepted_per_s": r["accepted_per_s"] / c["accepted_per_s"],
                            "p50": r["p50_ms"] / c["p50_ms"], "p99": r["p99_ms"] / c["p99_ms"]}
        _print(results)
        if args.store == "postgres":
            import importlib.util  # a sibling file; bench/ is not on sys.path (relay.py)

            spec = importlib.util.spec_from_file_location("ingest_pg", BENCH_DIR / "ingest_pg.py")
            assert spec is not None and spec.loader is not None
            ingest_pg = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(ingest_pg)
            run_postgres = ingest_pg.run_postgres

            args.sqlite_figures = results["relay"]
            results["postgres"] = run_postgres(sys.modules[__name__], args, tmp, script, load,
                                               need)
            results["ratio"]["postgres_vs_sqlite"] = (results["postgres"]["accepted_per_s"]
                                                      / r["accepted_per_s"])
        return results
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _bypassed(args: argparse.Namespace, tmp: Path, script: Path,
              load: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    """relay (bench/relay_no_store.py) on the same deliveries, nothing stored."""
    port = free_port()
    proc = start_relay(port, tmp, args.log_level, name="bypassed",
                       entry=(str(BENCH_DIR / "relay_no_store.py"),))
    try:
        wait_ready(port, proc)
        url = f"http://127.0.0.1:{port}{WEBHOOK_PATH}"
        load(url, script, tmp / "warm", args.threads, args.connections, args.warmup)
        cpu0 = cpu_s(proc.pid)
        out = figures(load(url, script, tmp / "relay", args.threads, args.connections,
                           args.duration))
        out["cpu_us_per_delivery"] = (cpu_s(proc.pid) - cpu0) / max(out["accepted"], 1) * 1e6
        return out
    finally:
        stop(proc)


def _print(res: dict[str, Any]) -> None:
    c, r, q = res["ceiling"], res["relay"], res["ratio"]
    print(f"ingest: {res['connections']} connections, {res['duration_s']:.0f} s each, "
          f"{res['tool']}, {os.cpu_count()} CPUs; relay commits durably (WAL, synchronous=FULL)")
    print(f"{'':32}{'accepted/s':>12}{'p50 ms':>9}{'p99 ms':>9}{'p99.9 ms':>10}")
    print(f"{'ceiling (aiohttp HMAC + JSON)':32}{c['accepted_per_s']:>12,.0f}"
          f"{c['p50_ms']:>9.2f}{c['p99_ms']:>9.2f}{c['p999_ms']:>10.2f}")
    print(f"{'relay serve':32}{r['accepted_per_s']:>12,.0f}"
          f"{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}{r['p999_ms']:>10.2f}")
    b = res.get("bypassed")
    if b:
        print(f"{'relay, store bypassed':32}{b['accepted_per_s']:>12,.0f}"
              f"{b['p50_ms']:>9.2f}{b['p99_ms']:>9.2f}{b['p999_ms']:>10.2f}")
    print(f"{'relay / ceiling':32}{q['accepted_per_s']:>12.2f}{q['p50']:>9.2f}{q['p99']:>9.2f}")
    print(f"relay: {r['accepted']:,} accepted, {r['non2xx']} non-2xx, {r['duplicates']} "
          f"duplicates, {r['socket_errors']} socket errors; every 2xx has its inbox row: "
          f"{r['stored_ok']} ({r['stored']:,} rows, {r['events']:,} events, warm-up included)")
    print(f"relay CPU: {r['cpu_us_per_delivery']:.0f} µs per accepted delivery (its process, "
          f"every thread)")
    if b:
        print(f"  with the store bypassed: {b['cpu_us_per_delivery']:.0f} µs (HTTP, signature, "
              f"normalization, logs); the store's share: "
              f"{r['cpu_us_per_delivery'] - b['cpu_us_per_delivery']:.0f} µs")


if __name__ == "__main__":
    main()
