"""CPU time of a process tree from Linux /proc: a server's cost per request, which a busy
host skews far less than its rate."""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) `pid` and its live descendants (relay's worker
    processes) have used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    return own + sum(cpu_s(int(child)) for child in children)


def host_load() -> dict[str, float]:
    """How busy the host is now: the 1-minute load average; where the kernel has PSI, the
    share of the last 10 s some task waited for a CPU (%); and `calib_ns`, the CPU time
    of one step of a fixed Python loop (median of 7). A VM reports no steal time here, so
    when the machine under it is busy every server's CPU per request rises (up to +40 %
    seen); calib_ns rises with it and is the figure to normalise by across runs."""
    out = {"loadavg_1m": round(os.getloadavg()[0], 2)}
    try:
        some = Path("/proc/pressure/cpu").read_text().splitlines()[0].split()
        out["cpu_pressure_avg10"] = float(some[1].split("=")[1])
    except (OSError, IndexError, ValueError):
        pass
    out["calib_ns"] = round(_calibrate(), 1)
    return out


def _calibrate(steps: int = 200_000) -> float:
    times = []
    for _ in range(7):
        start = time.thread_time_ns()
        x = 0
        for i in range(steps):
            x += i * i % 7
        times.append((time.thread_time_ns() - start) / steps)
    return statistics.median(times)
