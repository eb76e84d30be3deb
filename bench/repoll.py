"""Re-poll at scale: 1,000,000 purchase rows, due selection, polls/s, memory while sweeping.

    /tmp/v/bin/python bench/repoll.py [--rows 1000000] [--polls 20000] [--concurrency 64]

1. Fills a SQLite store (real schema, migrations) with `--rows` purchases in mixed
   states and due times (10 % due now).
2. Due selection: relay's claim of 500 due rows oldest first (this process owns the
   file: in memory, a read that skips the rows already held) timed over 50 batches,
   interleaved with the durable claim of a shared file or PostgreSQL (select them and
   push them out of the window, one transaction), against the bare indexed SELECT in
   raw sqlite3 on the same file (the baseline).
3. Polls/s: relay's Poller (unlimited rate) sweeping `--polls` due Apple rows through
   the fake Attesto in another process, against calling the fake directly with the
   same concurrency and bodies in the same run (the ceiling).
   The CPU time of this process (the loop and the database thread) per poll and per
   direct call is printed beside the rates: steadier than the rates on a busy host.
4. Memory: the RSS of the process that runs steps 1-3 (a fresh one, spawned for them, so
   that what bench/run.py loaded before does not count) before the sweep and its peak
   during it.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import resource
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if sys.path[:1] != [str(ROOT)]:  # ahead of bench/: bench/relay.py must not shadow relay
    sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402

from bench.verify import API_KEY, _free_port, _run_sim, _wait_up  # noqa: E402

DAY = 86_400_000
STATES = ("active", "active", "active", "expired", "grace", "billing_retry", "refunded")


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _fill(path: Path, rows: int, now_ms: int) -> None:
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=wal")
    db.execute("PRAGMA synchronous=off")  # the fill is set-up, not what is measured
    due_every = 10

    def gen() -> Any:
        for i in range(rows):
            state = STATES[i % len(STATES)]
            due = now_ms - (i % 1000) * 1000 if i % due_every == 0 else now_ms + (i % 97) * DAY
            yield ("apple", f"o{i}", "subscription", f"u{i % 50000}", "premium.monthly",
                   state, "sandbox", now_ms + 30 * DAY, 1, f"t{i}", now_ms - DAY, 1,
                   now_ms - DAY, now_ms - DAY, None if state == "refunded" else due, 0)

    db.executemany(
        "INSERT INTO purchase (platform, subject_key, kind, user_id, product_id, state, "
        "environment, expires_ms, auto_renew, latest_ref, store_time_ms, sequence, "
        "created_ms, updated_ms, next_poll_ms, poll_failures) "
        "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", gen())
    db.commit()
    db.close()


async def _bench(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from relay.attesto.client import AttestoClient
    from relay.config import Secret, StoreConfig, load_config
    from relay.runtime import Runtime
    from relay.scheduler.claims import Claims, claim_due
    from relay.scheduler.ratelimit import TokenBucket
    from relay.scheduler.repoll import Poller, attesto_fetcher
    from relay.store.database import Store

    db_path = work / "repoll.sqlite3"
    store = Store(StoreConfig(path=str(db_path)))
    await store.open()
    await store.close()
    now = int(time.time() * 1000)
    t0 = time.perf_counter()
    _fill(db_path, args.rows, now)
    fill_s = time.perf_counter() - t0

    raw = sqlite3.connect(db_path)
    base_times = []
    for i in range(50):
        t = time.perf_counter()
        raw.execute("SELECT * FROM purchase WHERE next_poll_ms <= ? ORDER BY next_poll_ms "
                    "LIMIT 500 OFFSET ?", (now, i * 500)).fetchall()
        base_times.append((time.perf_counter() - t) * 1000)
    raw.close()

    store = Store(StoreConfig(path=str(db_path)))
    await store.open()
    # relay's claim (this process owns the file: in memory, none released in between,
    # so the 50th skips 24,500 held rows) interleaved with the durable claim of a shared
    # file or PostgreSQL (an UPDATE + COMMIT).
    claims = Claims(store)
    claim_times, durable_times = [], []
    for _ in range(50):
        t = time.perf_counter()
        claimed = await claims.take(now, 500)
        claim_times.append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        durable = await store.write(lambda: claim_due(now, 500))
        durable_times.append((time.perf_counter() - t) * 1000)
        if min(len(claimed), len(durable)) < 500:
            raise SystemExit("too few due rows for the claim timing: raise --rows")

    claim_in_memory = claims.in_memory
    del claims, claimed, durable  # the 25,000 views held by the timing claims
    port = _free_port()
    sim = multiprocessing.Process(target=_run_sim, args=(port,), daemon=True)
    sim.start()
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=args.concurrency)) as session:
            await _wait_up(session, url + "/health")
            # Ceiling: the fake directly, same bodies, same concurrency.
            sem = asyncio.Semaphore(args.concurrency)

            async def direct(i: int) -> None:
                async with sem, session.post(url + "/v1/apple/verify",
                                             json={"transactionId": f"t{i}"},
                                             headers={"Authorization": f"Bearer {API_KEY}"}
                                             ) as resp:
                    await resp.read()

            t, cpu = time.perf_counter(), time.process_time()
            await asyncio.gather(*(direct(i) for i in range(args.polls)))
            direct_rate = args.polls / (time.perf_counter() - t)
            direct_cpu = (time.process_time() - cpu) / args.polls

            base = load_config(None, environ={})
            import dataclasses

            cfg = dataclasses.replace(
                base, attesto=dataclasses.replace(base.attesto, base_url=url,
                                                  max_concurrency=args.concurrency),
                scheduler=dataclasses.replace(base.scheduler,
                                              max_concurrent_polls=args.concurrency),
                credentials=dataclasses.replace(base.credentials,
                                                attesto_api_key=Secret(API_KEY)))
            runtime = Runtime(cfg)
            attesto = AttestoClient(session, cfg.attesto, cfg.credentials.attesto_api_key)
            poller = Poller(store, runtime, attesto_fetcher(attesto, runtime),
                            TokenBucket(1e9, 1e9))
            rss_before = _rss_mb()
            peak = rss_before
            done = 0
            db_cpu = await store.read(time.thread_time)  # the database thread's own
            groups = store.groups_committed
            t, cpu, loop_cpu = time.perf_counter(), time.process_time(), time.thread_time()
            while done < args.polls:
                views = await poller.claim(runtime.now_ms(), 500)
                if not views:
                    break
                await asyncio.gather(*(poller.poll_one(v) for v in views))
                done += len(views)
                peak = max(peak, _rss_mb())
            poll_rate = done / (time.perf_counter() - t)
            poll_cpu = (time.process_time() - cpu) / max(done, 1)
            loop_cpu = (time.thread_time() - loop_cpu) / max(done, 1)
            groups = store.groups_committed - groups
            db_cpu = (await store.read(time.thread_time) - db_cpu) / max(done, 1)
    finally:
        sim.terminate()
        sim.join()
        await store.close()
    return {
        "rows": args.rows, "fill_s": round(fill_s, 1),
        "claim_500_p50_ms": round(statistics.median(claim_times), 2),
        "claim_500_max_ms": round(max(claim_times), 2),
        "claim_in_memory": claim_in_memory,
        "durable_claim_500_p50_ms": round(statistics.median(durable_times), 2),
        "durable_claim_500_max_ms": round(max(durable_times), 2),
        "select_500_p50_ms": round(statistics.median(base_times), 2),
        "claim_vs_select": round(statistics.median(claim_times)
                                 / max(statistics.median(base_times), 1e-9), 2),
        "polls": done, "polls_per_s": round(poll_rate), "direct_per_s": round(direct_rate),
        "polls_vs_direct": round(poll_rate / direct_rate, 2),
        "poll_cpu_us": round(poll_cpu * 1e6), "direct_cpu_us": round(direct_cpu * 1e6),
        "poll_loop_cpu_us": round(loop_cpu * 1e6), "poll_db_cpu_us": round(db_cpu * 1e6),
        "polls_per_commit": round(done / max(groups, 1), 1),
        "rss_before_mb": round(rss_before, 1), "rss_peak_sweep_mb": round(peak, 1),
        "maxrss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def _in_child(args: dict[str, Any], send: Any) -> None:
    """Run the bench in this (fresh) process; send its figures, or its error, back."""
    try:
        with tempfile.TemporaryDirectory() as d:
            send.send(asyncio.run(_bench(argparse.Namespace(**args), Path(d))))
    except BaseException as exc:  # SystemExit too ("raise --rows")
        send.send({"error": f"{type(exc).__name__}: {exc}"})
    finally:
        send.close()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--polls", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args(argv)
    ctx = multiprocessing.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    # Not a Pool: its workers are daemons, and _bench starts the fake Attesto process.
    child = ctx.Process(target=_in_child, args=(vars(args), send))
    child.start()
    send.close()
    try:
        r: dict[str, Any] = receive.recv()
    except EOFError:
        raise RuntimeError(f"the repoll bench process died (exit {child.exitcode})") from None
    finally:
        child.join()
    if "error" in r:
        raise RuntimeError(r["error"])
    print(f"repoll bench: {r['rows']:,} rows (filled in {r['fill_s']} s)")
    print(f"  due selection, 500/batch   relay claim p50 {r['claim_500_p50_ms']} ms "
          f"(max {r['claim_500_max_ms']} ms) | bare SELECT p50 {r['select_500_p50_ms']} ms "
          f"(claim/select x{r['claim_vs_select']})")
    print(f"  durable claim (shared/PG)  p50 {r['durable_claim_500_p50_ms']} ms "
          f"(max {r['durable_claim_500_max_ms']} ms), interleaved with relay's "
          f"({'in memory' if r['claim_in_memory'] else 'durable'})")
    print(f"  polls through relay        {r['polls_per_s']}/s over {r['polls']} polls | "
          f"fake Attesto directly {r['direct_per_s']}/s (relay/direct x{r['polls_vs_direct']})")
    print(f"  CPU of this process        {r['poll_cpu_us']} µs per poll through relay (event "
          f"loop {r['poll_loop_cpu_us']}, database thread {r['poll_db_cpu_us']}) | "
          f"{r['direct_cpu_us']} µs per direct call (the fake's own CPU not counted); "
          f"{r['polls_per_commit']} polls per COMMIT")
    print(f"  memory while sweeping      RSS {r['rss_before_mb']} MB before, peak "
          f"{r['rss_peak_sweep_mb']} MB during (ru_maxrss {r['maxrss_mb']} MB, incl. fill)")
    return r


if __name__ == "__main__":
    main()
