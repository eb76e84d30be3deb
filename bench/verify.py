"""Verify through relay vs calling the fake Attesto directly, in the same run, on loopback.

    /tmp/v/bin/python bench/verify.py [--duration 5] [--concurrency 64] [--requests 1000]

Four processes: the fake Attesto (relay.attesto.simulator), relay (`relay.service.cli.serve`, real
SQLite file, production pragmas), this load generator (aiohttp) and, for latency only,
the floor: a bare aiohttp proxy to the fake that commits one row to SQLite with the
same pragmas before it answers (what any durable verify proxy on aiohttp costs here).
Every relay verify is a new Apple transaction, so each one writes a purchase row and its event.
Latency is measured with one request in flight (so it is relay's own cost, not
queueing), in blocks that alternate direct, floor and relay (a noisy neighbour slows all
three); throughput with `--concurrency` in flight for `--duration` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import itertools
import multiprocessing
import os
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if sys.path[:1] != [str(ROOT)]:  # ahead of bench/: bench/relay.py must not shadow relay
    sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402

sys.path.append(str(ROOT / "bench"))
from procstat import cpu_s  # noqa: E402

SERVICE_KEY = "bench-service-key"
API_KEY = "attesto_test_" + "B" * 43
# One service key drives the whole load: its [limits] budget is lifted, or the bench would
# measure the limiter (a real app backend stays far below the 500/s default).
BENCH_RATE = 1_000_000.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Transactions(dict):  # type: ignore[type-arg]
    """Every `t<n>` exists: an Apple subscription made a minute ago (made on first use)."""

    def get(self, key: Any, default: Any = None) -> Any:
        from relay.attesto.sim_records import AppleTransaction

        if key not in self and isinstance(key, str) and key[1:].isdigit():
            now = int(time.time() * 1000)
            self[key] = AppleTransaction(
                transaction_id=key, original_transaction_id=f"o{key[1:]}",
                product_id="premium.monthly", expires_ms=now + 30 * 86_400_000,
                purchase_ms=now - 60_000)
        return super().get(key, default)


class _NoList(list):  # type: ignore[type-arg]
    def append(self, item: Any) -> None:  # the bench needs no call log: keep memory flat
        pass


def _run_sim(port: int) -> None:
    from aiohttp import web

    from relay.attesto.simulator import AttestoSimulator

    sim = AttestoSimulator(api_key=API_KEY, apple=_Transactions(), calls=_NoList())
    web.run_app(sim.app(), host="127.0.0.1", port=port, print=None, access_log=None,
                handle_signals=True)


def _serve_workers(port: int, attesto_url: str, db_dir: str, workers: int) -> None:
    """`relay serve` with `[server] workers`, exec'd in place of this process (same pid)."""
    config = Path(db_dir) / "relay.toml"
    config.write_text(
        f'[server]\nport = {port}\nworkers = {workers}\n'
        f'[store]\npath = "{Path(db_dir) / "relay.sqlite3"}"\n'
        f'[attesto]\nbase_url = "{attesto_url}"\n[scheduler]\nenabled = false\n'
        f'[limits]\nservice_key_rate_per_s = {BENCH_RATE}\nservice_key_burst = {BENCH_RATE}\n'
        '[log]\nlevel = "error"\n[entitlements]\n"premium.monthly" = ["premium"]\n')
    os.environ.pop("CREDENTIALS_DIRECTORY", None)
    os.environ.update({
        "RELAY_CREDENTIAL_ATTESTO_API_KEY": API_KEY,
        "RELAY_CREDENTIAL_API_KEYS": f"bench:{hashlib.sha256(SERVICE_KEY.encode()).hexdigest()}",
        "PYTHONPATH": str(ROOT)})
    os.execv(sys.executable, [sys.executable, "-m", "relay", "serve", "--config", str(config)])


def _run_relay(port: int, attesto_url: str, db_dir: str, synchronous: str,
               workers: int = 1) -> None:
    if workers > 1:
        _serve_workers(port, attesto_url, db_dir, workers)
    from aiohttp import web

    from relay.config import Credentials, Secret, load_config
    from relay.log import AccessLogger, configure_logging
    from relay.web.app import create_app

    base = load_config(None, environ={})
    config = dataclasses.replace(
        base,
        server=dataclasses.replace(base.server, port=port),
        store=dataclasses.replace(base.store, path=str(Path(db_dir) / "relay.sqlite3")),
        attesto=dataclasses.replace(base.attesto, base_url=attesto_url),
        scheduler=dataclasses.replace(base.scheduler, enabled=False),
        limits=dataclasses.replace(base.limits, service_key_rate_per_s=BENCH_RATE,
                                   service_key_burst=BENCH_RATE),
        entitlements={"premium.monthly": ("premium",)},
        credentials=Credentials(
            attesto_api_key=Secret(API_KEY),
            api_keys=(("bench", hashlib.sha256(SERVICE_KEY.encode()).hexdigest()),)))
    configure_logging("error")

    async def serve() -> None:  # as `relay serve` does, with the store pragma under test
        runner = web.AppRunner(create_app(config, store_pragmas={"synchronous": synchronous}),
                               access_log_class=AccessLogger)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        await asyncio.Event().wait()  # until the bench terminates this process

    asyncio.run(serve())


def _run_floor(port: int, attesto_url: str, db_dir: str, synchronous: str) -> None:
    """The floor under relay's added latency: a bare aiohttp proxy to the fake Attesto
    that commits one row durably (same pragmas, one store thread) before it answers."""
    import concurrent.futures
    import sqlite3

    from aiohttp import web

    db = sqlite3.connect(str(Path(db_dir) / "floor.sqlite3"), isolation_level=None,
                         check_same_thread=False)
    db.execute("PRAGMA journal_mode=wal")
    db.execute(f"PRAGMA synchronous={synchronous}")
    db.execute("CREATE TABLE row (id INTEGER PRIMARY KEY, body TEXT)")
    writer = concurrent.futures.ThreadPoolExecutor(1)

    def commit(body: bytes) -> None:
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO row (body) VALUES (?)", (body.decode(),))
        db.execute("COMMIT")

    async def serve() -> None:
        session = aiohttp.ClientSession()

        async def proxy(request: web.Request) -> web.Response:
            async with session.post(f"{attesto_url}/v1/apple/verify", data=await request.read(),
                                    headers={"Authorization": f"Bearer {API_KEY}",
                                             "Content-Type": "application/json"}) as resp:
                body = await resp.read()
            await asyncio.get_running_loop().run_in_executor(writer, commit, body)
            return web.Response(body=body, content_type="application/json")

        app = web.Application()
        app.router.add_post("/v1/apple/verify", proxy)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        await asyncio.Event().wait()

    asyncio.run(serve())


def _fsync_ms(directory: str, n: int = 50) -> float:
    """Median time of one fsync on the disk the database lives on (the commit floor)."""
    path = Path(directory) / "fsync-probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        times = []
        for _ in range(n):
            os.write(fd, b"x" * 4096)
            t0 = time.perf_counter()
            os.fsync(fd)
            times.append(time.perf_counter() - t0)
    finally:
        os.close(fd)
        path.unlink()
    return statistics.median(times) * 1000


async def _wait_up(session: aiohttp.ClientSession, url: str, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            async with session.get(url) as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not come up")
        await asyncio.sleep(0.05)


Body = Callable[[int], dict[str, Any]]


async def _one(session: aiohttp.ClientSession, url: str, body: dict[str, Any],
               headers: dict[str, str]) -> bool:
    async with session.post(url, json=body, headers=headers) as resp:
        doc = await resp.json()
        return resp.status == 200 and doc.get("valid") is True


async def _sequential(session: aiohttp.ClientSession, url: str, body: Body,
                      headers: dict[str, str], ids: itertools.count[int],
                      n: int) -> tuple[list[float], int]:
    latencies, errors = [], 0
    for _ in range(n):
        t0 = time.perf_counter()
        ok = await _one(session, url, body(next(ids)), headers)
        latencies.append(time.perf_counter() - t0)
        errors += not ok
    return latencies, errors


async def _closed_loop(session: aiohttp.ClientSession, url: str, body: Body,
                       headers: dict[str, str], ids: itertools.count[int], duration_s: float,
                       concurrency: int) -> tuple[int, float, list[float], int]:
    done, errors, latencies = 0, 0, []
    deadline = time.perf_counter() + duration_s

    async def worker() -> None:
        nonlocal done, errors
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            ok = await _one(session, url, body(next(ids)), headers)
            latencies.append(time.perf_counter() - t0)
            done += 1
            errors += not ok

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done, time.perf_counter() - t0, latencies, errors


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def _measure(sim_url: str, relay_url: str, floor_url: str, args: argparse.Namespace,
                   relay_pid: int) -> dict[str, Any]:
    ids = itertools.count()
    direct = (f"{sim_url}/v1/apple/verify", {"Authorization": f"Bearer {API_KEY}"},
              lambda i: {"transactionId": f"t{i}"})
    floor = (f"{floor_url}/v1/apple/verify", {}, direct[2])
    relayed = (f"{relay_url}/v1/verify/apple", {"Authorization": f"Bearer {SERVICE_KEY}"},
               lambda i: {"user_id": f"user-{i}", "transaction_id": f"t{i}"})
    connector = aiohttp.TCPConnector(limit=args.concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        await _wait_up(session, f"{sim_url}/health")
        await _wait_up(session, f"{relay_url}/healthz")
        out: dict[str, Any] = {}
        sides = (("direct", direct), ("floor", floor), ("relay", relayed))
        for _, (url, headers, body) in sides:
            await _sequential(session, url, body, headers, ids, 200)  # warm up
        # Interleaved blocks: a neighbour's burst slows all three sides, not one of them.
        blocks = max(1, min(10, args.requests // 50))
        lats: dict[str, list[float]] = {name: [] for name, _ in sides}
        errs = dict.fromkeys(lats, 0)
        for block in range(blocks):
            n = args.requests // blocks + (block < args.requests % blocks)
            for name, (url, headers, body) in sides:
                lat, err = await _sequential(session, url, body, headers, ids, n)
                lats[name] += lat
                errs[name] += err
        for name, lat in lats.items():
            out[name] = {"p50_ms": _pct(lat, 0.50), "p99_ms": _pct(lat, 0.99),
                         "mean_ms": statistics.fmean(lat) * 1000, "errors": errs[name]}
        for name, (url, headers, body) in (("direct", direct), ("relay", relayed)):
            cpu0 = cpu_s(relay_pid)
            n, elapsed, lat, err = await _closed_loop(session, url, body, headers, ids,
                                                      args.duration, args.concurrency)
            out[name].update(rps=n / elapsed, loaded_p50_ms=_pct(lat, 0.5),
                             loaded_p99_ms=_pct(lat, 0.99), errors=out[name]["errors"] + err)
            if name == "relay":  # robust to a busy machine, unlike the rate
                out[name]["cpu_us_per_verify"] = (cpu_s(relay_pid) - cpu0) / n * 1e6
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the bench; print and return its figures (relay against direct, same run)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per load phase")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--requests", type=int, default=1000,
                        help="sequential requests per latency phase")
    parser.add_argument("--synchronous", choices=("full", "normal"), default="full",
                        help="SQLite synchronous pragma (relay's default: full, one fsync "
                             "per group commit)")
    parser.add_argument("--workers", type=int, default=1,
                        help="relay's [server] workers (with more than one, `relay serve` "
                             "runs as configured, synchronous=full)")
    args = parser.parse_args(argv)
    if args.workers > 1 and args.synchronous != "full":
        parser.error("--synchronous normal needs --workers 1 (workers run relay.toml as is)")
    ctx = multiprocessing.get_context("spawn")
    sim_port, relay_port, floor_port = _free_port(), _free_port(), _free_port()
    sim_url, relay_url = f"http://127.0.0.1:{sim_port}", f"http://127.0.0.1:{relay_port}"
    floor_url = f"http://127.0.0.1:{floor_port}"
    with tempfile.TemporaryDirectory(prefix="relay-bench-") as db_dir:
        fsync_ms = _fsync_ms(db_dir)
        procs = [ctx.Process(target=_run_sim, args=(sim_port,), daemon=True),
                 ctx.Process(target=_run_relay, daemon=True,
                             args=(relay_port, sim_url, db_dir, args.synchronous,
                                   args.workers)),
                 ctx.Process(target=_run_floor, daemon=True,
                             args=(floor_port, sim_url, db_dir, args.synchronous))]
        for p in procs:
            p.start()
        try:
            assert procs[1].pid is not None
            figures = asyncio.run(_measure(sim_url, relay_url, floor_url, args,
                                           procs[1].pid))
        finally:
            for p in procs:
                p.terminate()
                p.join(10)
    d, r, f = figures["direct"], figures["relay"], figures["floor"]
    result = {
        "cpus": os.cpu_count(), "workers": args.workers, "concurrency": args.concurrency,
        "duration_s": args.duration,
        "synchronous": args.synchronous, "fsync_ms": fsync_ms,
        "direct": d, "relay": r, "floor": f,
        "added_p50_ms": r["p50_ms"] - d["p50_ms"], "added_p99_ms": r["p99_ms"] - d["p99_ms"],
        "floor_added_p50_ms": f["p50_ms"] - d["p50_ms"],
        "latency_ratio_p50": r["p50_ms"] / d["p50_ms"],
        "throughput_ratio": r["rps"] / d["rps"],
    }
    print(f"verify bench: {result['cpus']} CPUs, relay workers={args.workers}, "
          f"SQLite synchronous={args.synchronous} "
          f"(one fsync here: {fsync_ms:.2f} ms), {args.requests} sequential requests, "
          f"{args.concurrency} in flight for {args.duration:g} s")
    print(f"  latency, 1 in flight   direct p50 {d['p50_ms']:.2f} ms  p99 {d['p99_ms']:.2f} ms"
          f" | relay p50 {r['p50_ms']:.2f} ms  p99 {r['p99_ms']:.2f} ms")
    print(f"  relay adds             p50 {result['added_p50_ms']:+.2f} ms  "
          f"p99 {result['added_p99_ms']:+.2f} ms  (relay/direct p50 x"
          f"{result['latency_ratio_p50']:.2f})")
    print(f"  floor adds             p50 {result['floor_added_p50_ms']:+.2f} ms  (a bare "
          f"aiohttp proxy with one durable SQLite insert; relay/floor p50 x"
          f"{r['p50_ms'] / f['p50_ms']:.2f})")
    print(f"  throughput             direct {d['rps']:.0f} req/s | relay {r['rps']:.0f} "
          f"verifies/s  (relay/direct x{result['throughput_ratio']:.2f})")
    print(f"  relay CPU              {r['cpu_us_per_verify']:.0f} µs per verify "
          f"(its process, every thread)")
    print(f"  loaded latency         direct p50 {d['loaded_p50_ms']:.1f} ms | relay p50 "
          f"{r['loaded_p50_ms']:.1f} ms  p99 {r['loaded_p99_ms']:.1f} ms")
    print(f"  errors                 direct {d['errors']} | relay {r['errors']}")
    return result


if __name__ == "__main__":
    main()
