"""Where an outbox drain's CPU goes: per thread (event loop, store thread, receiver process)
and, with `--statements`, per SQL statement on the store thread; cycles and their sizes.

Run from a tree's root:  .venv/bin/python bench/outbox_split.py [--events 20000] [--rounds 3]
It drains the events as bench/relay.py does (same config, same receiver, no ceiling) with
the `relay` package of the tree it sits in, so two trees compare by running each one's copy.
`--statements` wraps peewee's execute_sql and commit with the store thread's CPU clock (a
few µs of overhead per statement); `--max-depth N` overrides the outbox's MAX_DEPTH.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import importlib.util
import logging
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import peewee
from aiohttp import web

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))  # this tree's relay package, ahead of an installed one
_spec = importlib.util.spec_from_file_location("relay_bench", BENCH / "relay.py")
assert _spec is not None and _spec.loader is not None
relay_bench: Any = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(relay_bench)  # bench/relay.py: its receiver, config and enqueue

TCK = os.sysconf("SC_CLK_TCK")


def _cpu(stat: str) -> float:
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / TCK


def thread_cpu() -> dict[str, float]:
    """CPU seconds so far of this process's threads (by Python name) and its children."""
    names = {str(t.native_id): t.name for t in threading.enumerate()}
    out: collections.Counter[str] = collections.Counter()
    for tid in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{tid}/stat") as f:
            out[names.get(tid, "other")] += _cpu(f.read())
        with open(f"/proc/self/task/{tid}/children") as f:
            for pid in f.read().split():
                with open(f"/proc/{pid}/stat") as child:
                    out["receiver"] += _cpu(child.read())
    return dict(out)


def switches() -> dict[str, tuple[int, int]]:
    """Context switches so far of this process's threads: (voluntary, involuntary) by name."""
    names = {str(t.native_id): t.name for t in threading.enumerate()}
    out: dict[str, tuple[int, int]] = {}
    for tid in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{tid}/status") as f:
            fields = dict(line.split(":", 1) for line in f if "ctxt_switches" in line)
        name = names.get(tid, "other")
        v, n = out.get(name, (0, 0))
        out[name] = (v + int(fields["voluntary_ctxt_switches"]),
                     n + int(fields["nonvoluntary_ctxt_switches"]))
    return out


def count_statements(acc: collections.Counter[str], calls: collections.Counter[str]) -> None:
    """Charge the store thread's CPU per statement (its first 60 characters) and COMMIT."""
    execute, commit = peewee.Database.execute_sql, peewee.Database.commit

    def timed_execute(self: Any, sql: str, params: Any = None, *args: Any) -> Any:
        t = time.thread_time()
        try:
            return execute(self, sql, params, *args)
        finally:
            key = " ".join(sql.split())[:60]
            acc[key] += time.thread_time() - t
            calls[key] += 1

    def timed_commit(self: Any) -> Any:
        t = time.thread_time()
        try:
            return commit(self)
        finally:
            acc["COMMIT"] += time.thread_time() - t
            calls["COMMIT"] += 1

    peewee.Database.execute_sql = timed_execute  # type: ignore[method-assign]
    peewee.Database.commit = timed_commit  # type: ignore[method-assign]


def time_cycles(outbox: Any, sizes: list[int], durations: list[float]) -> None:
    cycle: Callable[[], Awaitable[bool]] = outbox._cycle

    async def timed() -> bool:
        t, n = time.perf_counter(), len(outbox._done)
        try:
            return await cycle()
        finally:
            durations.append(time.perf_counter() - t)
            sizes.append(n)

    outbox._cycle = timed


async def drain(events: int, rounds: int, statements: bool) -> None:
    acc: collections.Counter[str] = collections.Counter()
    calls: collections.Counter[str] = collections.Counter()
    sizes: list[int] = []
    durations: list[float] = []
    async with relay_bench.receiver() as base:
        secret = relay_bench.generate_secret()
        with tempfile.TemporaryDirectory(prefix="relay-split-") as state:
            app = relay_bench.create_app(relay_bench._config(Path(state), f"{base}/hook",
                                                             secret, 32))
            runner = web.AppRunner(app)
            await runner.setup()
            try:
                outbox, store = app[relay_bench.OUTBOX_KEY], app[relay_bench.STORE_KEY]
                await outbox.pause("bench")
                for start in range(0, events, 500):
                    n = min(500, events - start)
                    await store.write(lambda s=start, n=n: relay_bench._enqueue(app, s, n, 4))
                time_cycles(outbox, sizes, durations)
                if statements:
                    count_statements(acc, calls)
                for round_ in range(rounds):
                    if round_:
                        await outbox.pause("bench")
                        assert await relay_bench._rearm(app) == events
                    sizes.clear()
                    durations.clear()
                    sw0, before, t0 = switches(), thread_cpu(), time.perf_counter()
                    await outbox.resume("bench")
                    await outbox.settle()
                    wall, after, sw1 = time.perf_counter() - t0, thread_cpu(), switches()
                    used = {name: after[name] - before.get(name, 0) for name in sorted(after)}
                    split = " ".join(f"{name}={cpu / events * 1e6:.0f}"
                                     for name, cpu in used.items() if cpu > 0)
                    ms = sorted(d * 1000 for d in durations)
                    print(f"round {round_}: {events / wall:,.0f}/s; CPU µs per delivery: {split}; "
                          f"{len(ms)} cycles, {statistics.mean(sizes or [0]):.0f} outcomes each, "
                          f"p50 {ms[len(ms) // 2]:.1f} ms, p90 {ms[int(len(ms) * 0.9)]:.1f} ms",
                          flush=True)
                    print("  context switches per delivery (voluntary/involuntary): " + " ".join(
                        f"{name}={(v - sw0.get(name, (0, 0))[0]) / events:.2f}/"
                        f"{(n - sw0.get(name, (0, 0))[1]) / events:.2f}"
                        for name, (v, n) in sorted(sw1.items()) if name in sw0), flush=True)
            finally:
                await runner.cleanup()
    for key, seconds in acc.most_common(12):
        print(f"{seconds / (events * rounds) * 1e6:7.2f} µs per delivery  {calls[key]:6d} x  {key}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--statements", action="store_true")
    parser.add_argument("--max-depth", type=int, default=0)
    args = parser.parse_args()
    if args.max_depth:
        import relay.outbox.worker as worker
        worker.MAX_DEPTH = args.max_depth
    logging.basicConfig(level=logging.ERROR)
    asyncio.run(drain(args.events, args.rounds, args.statements))


if __name__ == "__main__":
    sys.exit(main())
