"""The `--workers N` run of bench/relay.py: `relay serve` with `[server] workers = N` drains
the queued events from one SQLite file, against the same with one process, and against N bare
aiohttp client processes posting the same bodies (the ceiling on the same footing), in
interleaved rounds to the same receiver process; the fastest of each counts.

Relay's drains are bench/relay_pg.py's `drain` (duplicates, per-subject order and misses
checked from the receiver's arrival log); with workers the rows are released before relay
starts and the clock runs from the first delivery to the last. The ceiling's processes
start together at an agreed instant; its time is first start to last finish.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

BENCH = Path(__file__).resolve().parent


def _ceiling_part(url: str, bodies_file: str, concurrency: int, start_at: float) -> None:
    """`--ceiling-part`: one ceiling process; prints {"start": t, "end": t}."""
    bodies = [line.encode() for line in Path(bodies_file).read_text().splitlines()]
    sys.path.insert(0, str(BENCH.parent))  # ahead of bench/: `relay` is the app
    import relay_pg

    bench = relay_pg._sibling("relay")
    time.sleep(max(0.0, start_at - time.time()))
    start = time.time()
    asyncio.run(bench.ceiling(url, bodies, concurrency))
    print(json.dumps({"start": start, "end": time.time()}))


def ceiling_processes(url: str, bodies: list[bytes], concurrency: int, processes: int,
                      tmp: Path) -> float:
    """Wall seconds for `processes` bare clients to post `bodies` (split evenly), with
    `concurrency` connections in all."""
    files = []
    for i in range(processes):
        f = tmp / f"ceiling-{i}.jsonl"
        f.write_bytes(b"\n".join(bodies[i::processes]))
        files.append(f)
    start_at = time.time() + 1.5  # after every interpreter is up
    procs = [subprocess.Popen([sys.executable, __file__, "--ceiling-part", url, str(f),
                               str(max(1, concurrency // processes)), repr(start_at)],
                              stdout=subprocess.PIPE, text=True) for f in files]
    spans = []
    for proc in procs:
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out
        spans.append(json.loads(out.strip().splitlines()[-1]))
    return float(max(s["end"] for s in spans) - min(s["start"] for s in spans))


async def compare(bench: ModuleType, args: argparse.Namespace) -> dict[str, Any]:
    import relay_pg  # bench/ is on sys.path (bench/relay.py put it there)

    ingest = relay_pg._sibling("ingest")
    common = {"events": args.events, "per_subject": args.per_subject,
              "concurrency": args.concurrency, "timeout_s": args.timeout, "instances": 1}
    runs: dict[str, list[dict[str, Any]]] = {"x1": [], "xn": []}
    ceilings: list[float] = []
    bodies: list[bytes] = []
    async with bench.receiver() as base:
        for _ in range(args.rounds):
            for key, workers in (("x1", 1), ("xn", args.workers)):
                with tempfile.TemporaryDirectory(prefix="relay-bench-workers-") as tmp:
                    runs[key].append(await relay_pg.drain(
                        bench, ingest, base, store=str(Path(tmp) / "relay.sqlite3"),
                        tmp=Path(tmp), workers=workers, **common))
                    if not bodies:
                        bodies = await asyncio.to_thread(_bodies, Path(tmp) / "relay.sqlite3")
            with tempfile.TemporaryDirectory(prefix="relay-bench-ceiling-") as tmp:
                ceilings.append(await asyncio.to_thread(
                    ceiling_processes, f"{base}/bare", bodies, args.concurrency, args.workers,
                    Path(tmp)))
    best = {k: max(v, key=lambda r: r["deliveries_per_s"]) for k, v in runs.items()}
    ceiling_rate = round(args.events / min(ceilings))
    every = runs["x1"] + runs["xn"]
    out = {"workers": args.workers, "rounds": args.rounds,
           "workers_deliveries_per_s": best["xn"]["deliveries_per_s"],
           "one_process_deliveries_per_s": best["x1"]["deliveries_per_s"],
           "ceiling_processes": args.workers, "ceiling_posts_per_s": ceiling_rate,
           "ratio_to_ceiling": round(best["xn"]["deliveries_per_s"] / ceiling_rate, 3),
           "ratio_to_one_process": round(best["xn"]["deliveries_per_s"]
                                         / best["x1"]["deliveries_per_s"], 3),
           # /metrics of the service (summed over its workers): deliveries it counted.
           "metrics_delivered": best["xn"]["per_instance"],
           "signatures_verified": sum(r["signatures_verified"] for r in runs["xn"]),
           "verified_with": best["xn"]["verified_with"],
           "duplicates": sum(r["duplicates"] for r in every),
           "order_violations": sum(r["order_violations"] for r in every),
           "all_delivered": all(r["all_delivered"] for r in every)}
    print(f"{'':40}{'deliveries/s':>13}{'duplicates':>11}{'misordered':>11}")
    for name, r in ((f"relay serve, workers = {args.workers}", best["xn"]),
                    ("relay serve, one process", best["x1"])):
        print(f"{name:40}{r['deliveries_per_s']:>13,}{r['duplicates']:>11}"
              f"{r['order_violations']:>11}")
    print(f"{f'bare client x{args.workers} processes (ceiling)':40}{ceiling_rate:>13,}")
    print(f"{f'workers = {args.workers} / ceiling':40}{out['ratio_to_ceiling']:>13.2f}")
    return out


def _bodies(store: Path) -> list[bytes]:
    import sqlite3

    with sqlite3.connect(store) as db:
        return [r[0].encode() for r in db.execute("SELECT body FROM event ORDER BY cursor")]


if __name__ == "__main__":
    if sys.argv[1:2] == ["--ceiling-part"]:
        _ceiling_part(sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5]))
