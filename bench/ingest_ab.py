"""Paired A/B of two (or more) relay code trees on the webhook ingest path, same run.

    .venv/bin/python bench/ingest_ab.py --pairs 3 --duration 6 \\
        base=/path/to/main/checkout candidate=/path/to/your/worktree

Each NAME=ROOT runs `relay serve` (default config, SQLite, durable) with ROOT on
PYTHONPATH, ahead of the installed package, so two checkouts (or a copy of the package
with a prototype patch) compare in one process tree. Every pair starts each variant
fresh (new database) on the same signed deliveries, in alternating order; with --pin
(default 0:1) relay runs on core 0 and wrk on core 1, as bench/ingest.py --pin does.
Printed per variant: accepted/s, CPU µs per accepted delivery and p99, and for each
variant after the first its per-pair ratios to the first. On a shared machine the CPU
ratio is the figure to trust; the rate moves with the neighbours.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if sys.path[:1] != [str(ROOT)]:  # ahead of bench/: bench/relay.py must not shadow relay
    sys.path.insert(0, str(ROOT))
if str(ROOT / "bench") not in sys.path:
    sys.path.append(str(ROOT / "bench"))

import ingest  # noqa: E402
import wrk  # noqa: E402
from procstat import cpu_s, host_load  # noqa: E402


def _one(root: str, work: Path, files: Path, args: argparse.Namespace) -> dict[str, Any]:
    server, load_cpus = args.pin.split(":", 1) if args.pin else (None, None)
    load = ingest.run_wrk if wrk.available() else ingest.run_python_load
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    port = ingest.free_port()
    proc = ingest.start_relay(port, work, "info", prefix=ingest.taskset(server),
                              env_extra={"PYTHONPATH": root})
    try:
        ingest.wait_ready(port, proc)
        url = f"http://127.0.0.1:{port}{ingest.WEBHOOK_PATH}"
        load(url, files / "d.lua", files / "warm", 1, args.connections, args.warmup, load_cpus)
        cpu0 = cpu_s(proc.pid)
        out = ingest.figures(load(url, files / "d.lua", files / "run", 1, args.connections,
                                  args.duration, load_cpus))
        out["cpu_us_per_delivery"] = (cpu_s(proc.pid) - cpu0) / max(out["accepted"], 1) * 1e6
        return out
    finally:
        ingest.stop(proc)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="+", metavar="NAME=ROOT")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--duration", type=float, default=6.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--rate", type=int, default=8000,
                        help="unique deliveries signed per second of --duration")
    parser.add_argument("--pin", default="0:1", help="SERVER:LOAD cores; '' for none")
    args = parser.parse_args(argv)
    variants = [tuple(v.split("=", 1)) for v in args.variants]
    if any(len(v) != 2 for v in variants):
        parser.error("variants are NAME=ROOT")
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in variants}
    loads = []
    with tempfile.TemporaryDirectory(prefix="relay-ab-") as d:
        tmp = Path(d)
        for pair in range(args.pairs):
            files = tmp / f"pair{pair}"
            files.mkdir()
            (files / "d.lua").write_text(ingest.LUA)
            ingest.make_request_files(files / "warm", max(int(args.rate * args.warmup), 1000),
                                      1, offset=10_000_000)
            ingest.make_request_files(files / "run", max(int(args.rate * args.duration), 1000),
                                      1)
            for name, root in (variants if pair % 2 == 0 else variants[::-1]):
                runs[name].append(_one(root, tmp / name, files, args))
            loads.append(host_load())
            shutil.rmtree(files)
    _print(runs, loads)
    return {"runs": runs, "host_load": loads}


def _print(runs: dict[str, list[dict[str, Any]]], loads: list[dict[str, float]]) -> None:
    print(f"host load after each pair: {loads}")
    first = next(iter(runs))
    for name, rs in runs.items():
        rate = [r["accepted_per_s"] for r in rs]
        cpu = [r["cpu_us_per_delivery"] for r in rs]
        line = (f"{name:16} accepted/s {statistics.median(rate):>7,.0f} "
                f"{[round(x) for x in rate]}  CPU µs {statistics.median(cpu):>4.0f} "
                f"{[round(x) for x in cpu]}  p99 {statistics.median(r['p99_ms'] for r in rs):.1f}"
                " ms")
        if name != first:
            base = runs[first]
            rr = [r["accepted_per_s"] / b["accepted_per_s"] for r, b in zip(rs, base, strict=True)]
            cr = [r["cpu_us_per_delivery"] / b["cpu_us_per_delivery"]
                  for r, b in zip(rs, base, strict=True)]
            line += (f"\n{'':16} vs {first}: accepted/s x{statistics.median(rr):.3f} "
                     f"{[round(x, 2) for x in rr]}, CPU x{statistics.median(cr):.3f} "
                     f"{[round(x, 2) for x in cr]}")
        if any(r["wrapped"] for r in rs):
            line += "\n" + " " * 16 + " ran out of unique deliveries: raise --rate"
        print(line)


if __name__ == "__main__":
    main()
