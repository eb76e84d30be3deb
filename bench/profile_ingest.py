"""Where relay's CPU per webhook delivery goes: a profile of `relay serve` under wrk.

    .venv/bin/pip install py-spy        # not a dependency of relay; perf from the OS
    .venv/bin/python bench/profile_ingest.py [--seconds 20] [--tools pyspy,perf]

relay (default config, SQLite, durable) runs pinned to core 0 with wrk on core 1, as
bench/ingest.py --pin does; after a warm-up both profilers attach for --seconds:
- py-spy `--gil --nonblocking`: only the thread holding the GIL is sampled, so the
  samples are Python's own time (C extensions called with the GIL held included), split
  into the categories of CATEGORIES (leaf-most match wins, specific rules first);
- `perf record -e cpu-clock -g`: every thread's native time by library, the kernel's
  by system call (WAL writes, fsync, socket sends), GIL and futex waits.
Printed as % of relay's CPU and µs per accepted delivery, with the run's own
accepted/s and CPU per delivery (both profilers cost a few % of it). Samples are
noisy (±15 % per row on this 2-core VM): compare categories, not decimals.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if sys.path[:1] != [str(ROOT)]:  # ahead of bench/: bench/relay.py must not shadow relay
    sys.path.insert(0, str(ROOT))
if str(ROOT / "bench") not in sys.path:
    sys.path.append(str(ROOT / "bench"))

import ingest  # noqa: E402
from procstat import cpu_s, host_load  # noqa: E402

Rule = tuple[Callable[[str], bool], str]


def _has(*parts: str) -> Callable[[str], bool]:
    return lambda frame: any(p in frame for p in parts)


HTTP = "aiohttp HTTP (parse, body, response, transport)"
# Tier 1 wins wherever it is in the stack; then tier 2 (relay modules), then tier 3
# (libraries, and the leaf-only stacks py-spy returns when it samples without pausing).
# Paths match the package layout and, where they differ, the flat one before it.
CATEGORIES: tuple[tuple[Rule, ...], ...] = (
    ((_has("AccessLogger", "log_access"), "access log line"),
     (_has("attesto/signature.py", "attesto_signature.py", "hmac.py"), "signature (HMAC)"),
     (_has("event_body", "iso (relay/core/domain", "iso (relay/domain"),
      "event body (json + iso)"),
     (_has("routes_for", "Route.matches"), "routing (fnmatch)"),
     (_has("Database.commit", "_transaction.commit"), "COMMIT"),
     (_has("parse_json_object"), "JSON parse of the body"),
     (_has("read_capped"), HTTP),
     (_has("normalizer.py", "transitions.py"), "normalization (Snapshot, JWS decode)"),
     (_has("prometheus_client"), "metrics"),
     (_has("settle_all", "settle (relay/store", "_settle ("),
      "store hand-off, loop side (settle)"),
     (_has("Store._submit", "Store.write_many"), "store hand-off, loop side (submit)"),
     (_has("LogWriter"), "log writer thread")),
    ((_has("statements.py", "peewee.py"), "SQL glue (statements, peewee execute_sql)"),
     (_has("input_log.py"), "input log row"),
     (_has("pipeline.py", "core/decide.py", "core/relayed.py"), "pipeline decide/apply"),
     (_has("inbox.py"), "inbox.ingest_many glue"),
     (_has("relay/store/", "relay/store.py"), "store thread plumbing"),
     (_has("middlewares.py"), "middlewares (request id, errors)"),
     (_has("handle_attesto"), "handler glue (kept headers JSON, Inbound, answer)"),
     (_has("relay/outbox", "outbox.py"), "outbox wake-up")),
    ((_has("logging/"), "logging (other)"),
     (_has("json/decoder", "loads (json", "detect_encoding"), "JSON parse of the body"),
     (_has("json/encoder"), "event body (json + iso)"),
     (_has("base64.py"), "normalization (Snapshot, JWS decode)"),
     (_has("__create_fn__"), "dataclass __init__ (leaf only)"),
     (_has("aiohttp/"), HTTP),
     (_has("asyncio/", "selectors.py"), "event loop (epoll, callbacks, tasks)"),
     (_has("relay/core/ids.py", "relay/ids.py"), "ids (ulid)")),
)


def classify(frames: list[str]) -> str:
    """The category of one py-spy stack (root first)."""
    for tier in CATEGORIES:
        for frame in reversed(frames):
            for match, name in tier:
                if match(frame):
                    return name
    return "other: " + (frames[-1][:70] if frames else "?")


def pyspy_shares(lines: Iterable[str]) -> Counter[str]:
    """py-spy raw output (`thread; frame; ... count` lines) -> samples per category."""
    out: Counter[str] = Counter()
    for line in lines:
        stack, _, n = line.rstrip("\n").rpartition(" ")
        if stack and n.isdigit():
            out[classify(stack.split(";")[1:])] += int(n)
    return out


_SYSCALL = re.compile(r"__(?:x64|do)_sys_(\w+)")


def perf_shares(script_output: str) -> dict[str, Counter[str]]:
    """`perf script -F tid,ip,sym,dso` output -> per thread id, samples per native bucket."""
    out: dict[str, Counter[str]] = defaultdict(Counter)
    tid, frames = "", []

    def flush() -> None:
        if tid and frames:
            out[tid][_bucket(frames)] += 1

    for line in script_output.splitlines():
        if not line.strip():
            flush()
            tid, frames = "", []
        elif not line.startswith("\t"):
            flush()
            tid, frames = line.split()[0], []
        else:
            parts = line.split()
            frames.append((" ".join(parts[1:-1]), parts[-1].strip("()").split("/")[-1]))
    flush()
    return out


def _bucket(frames: list[tuple[str, str]]) -> str:
    sym, dso = frames[0]
    if dso.startswith("[kernel"):
        for s, _ in frames:
            m = _SYSCALL.match(s)
            if m:
                return f"kernel: {m.group(1)}"
        return "kernel: interrupts, context switches"
    if dso.startswith("libc") and ("pthread" in sym or "futex" in sym):
        return "libc: pthread/futex (GIL, queues)"
    if dso.startswith("libpython") and ("gc_collect" in sym or sym.startswith("visit_")):
        return "libpython: cyclic GC"
    return dso


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--tools", default="pyspy,perf")
    parser.add_argument("--keep-pyspy", metavar="PATH",
                        help="copy py-spy's raw stacks there (for `--leaves PATH`)")
    parser.add_argument("--leaves", metavar="PATH", help="no run: the leaf-most relay "
                        "frames of each category in a kept py-spy file, and exit")
    parser.add_argument("--pin", default="0:1", help="SERVER:LOAD cores")
    parser.add_argument("--rate", type=int, default=6000,
                        help="unique deliveries signed per second of the run")
    args = parser.parse_args(argv)
    if args.leaves:
        with open(args.leaves, encoding="utf-8") as fh:
            _print_leaves(fh)
        return {}
    tools = set(args.tools.split(","))
    server, load_cpus = args.pin.split(":", 1)
    with tempfile.TemporaryDirectory(prefix="relay-profile-") as d:
        tmp = Path(d)
        (tmp / "d.lua").write_text(ingest.LUA)
        ingest.make_request_files(tmp / "warm", args.rate * 3, 1, offset=10_000_000)
        ingest.make_request_files(tmp / "run", args.rate * (args.seconds + 2), 1)
        port = ingest.free_port()
        proc = ingest.start_relay(port, tmp, "info", prefix=ingest.taskset(server))
        try:
            ingest.wait_ready(port, proc)
            url = f"http://127.0.0.1:{port}{ingest.WEBHOOK_PATH}"
            ingest.run_wrk(url, tmp / "d.lua", tmp / "warm", 1, 64, 3, load_cpus)
            profilers = _attach(proc.pid, tools, args.seconds, tmp, load_cpus)
            time.sleep(0.5)
            cpu0 = cpu_s(proc.pid)
            fig = ingest.figures(ingest.run_wrk(url, tmp / "d.lua", tmp / "run", 1, 64,
                                                args.seconds, load_cpus))
            fig["cpu_us_per_delivery"] = (cpu_s(proc.pid) - cpu0) / max(fig["accepted"], 1) * 1e6
            for p in profilers:
                p.wait(timeout=args.seconds + 120)
        finally:
            ingest.stop(proc)
        fig["host_load"] = host_load()
        per_delivery = fig["cpu_us_per_delivery"]
        print(f"relay pinned to CPU {server}: {fig['accepted_per_s']:,.0f} accepted/s, "
              f"{per_delivery:.0f} µs CPU per delivery, p99 {fig['p99_ms']:.1f} ms; "
              f"host {fig['host_load']}")
        out: dict[str, Any] = {"figures": fig}
        if (tmp / "perf.data").exists():
            text = subprocess.run(["perf", "script", "-i", str(tmp / "perf.data"), "-F",
                                   "tid,ip,sym,dso"], capture_output=True, text=True).stdout
            out["perf"] = _print_perf(perf_shares(text), per_delivery)
        if (tmp / "pyspy.txt").exists():
            # Python's share of the CPU (perf's libpython and extension modules) turns the
            # GIL-time shares into µs per delivery; without perf, only the shares print.
            python = sum(v for t in out.get("perf", {}).values() for k, v in t.items()
                         if k.startswith("libpython") or ".cpython-" in k)
            with open(tmp / "pyspy.txt", encoding="utf-8") as fh:
                out["pyspy"] = _print_pyspy(pyspy_shares(fh), per_delivery * python)
            if args.keep_pyspy:
                shutil.copy(tmp / "pyspy.txt", args.keep_pyspy)
        return out


def _print_leaves(lines: Iterable[str], top: int = 8) -> None:
    """Per category, the frames that hold most of its samples: the leaf-most relay frame
    and the leaf itself."""
    per: dict[str, Counter[str]] = defaultdict(Counter)
    for line in lines:
        stack, _, n = line.rstrip("\n").rpartition(" ")
        if not (stack and n.isdigit()):
            continue
        frames = stack.split(";")[1:]
        mine = [f for f in frames if "relay/" in f and "site-packages" not in f]
        where = f"{mine[-1] if mine else '-'} <- {frames[-1] if frames else '?'}"
        per[classify(frames)][where] += int(n)
    total = sum(sum(c.values()) for c in per.values())
    for name, counts in sorted(per.items(), key=lambda kv: -sum(kv[1].values())):
        print(f"{100 * sum(counts.values()) / total:5.1f}% {name}")
        for where, n in counts.most_common(top):
            print(f"       {100 * n / total:5.1f}% {where[:150]}")


def _attach(pid: int, tools: set[str], seconds: int, tmp: Path,
            load_cpus: str) -> list[subprocess.Popen[bytes]]:
    started = []
    pin = ingest.taskset(load_cpus)
    if "pyspy" in tools:
        pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        started.append(subprocess.Popen(
            [*pin, pyspy, "record", "-p", str(pid), "-d", str(seconds), "-r", "250", "--gil",
             "--nonblocking", "--threads", "-f", "raw", "-o", str(tmp / "pyspy.txt")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    if "perf" in tools and shutil.which("perf"):
        started.append(subprocess.Popen(
            [*pin, "perf", "record", "-e", "cpu-clock", "-g", "-F", "999", "-p", str(pid),
             "-o", str(tmp / "perf.data"), "--", "sleep", str(seconds)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    return started


def _print_perf(by_tid: dict[str, Counter[str]], per_delivery: float) -> dict[str, Any]:
    total = sum(sum(c.values()) for c in by_tid.values()) or 1
    print("\nperf (every thread, native): % of relay's CPU, µs per delivery")
    out = {}
    for tid, c in sorted(by_tid.items(), key=lambda kv: -sum(kv[1].values())):
        share = sum(c.values()) / total
        print(f"  thread {tid}: {share:.1%}")
        for bucket, n in c.most_common(12):
            print(f"    {n / total:6.1%} {n / total * per_delivery:6.1f} µs  {bucket}")
        out[tid] = {k: n / total for k, n in c.items()}
    return out


def _print_pyspy(shares: Counter[str], python_us: float) -> dict[str, float]:
    total = sum(shares.values()) or 1
    print(f"\npy-spy --gil ({total} samples): share of the GIL-held time"
          + (f", µs of the {python_us:.0f} µs Python spends per delivery" if python_us else ""))
    for name, n in shares.most_common(28):
        us = f"{n / total * python_us:6.1f} µs  " if python_us else ""
        print(f"  {n / total:6.1%} {us}{name}")
    return {k: n / total for k, n in shares.items()}


if __name__ == "__main__":
    main()
