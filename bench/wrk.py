"""wrk, the C load generator the benches prefer: its common Lua and how it is run.

A bench script's Lua defines `init`, `request` and `response` and keeps per-thread
counters `dup`, `non2xx` and `wrapped`; `SUMMARY_LUA` registers the threads and prints
one `WRK_JSON {...}` line with the totals and latency percentiles, read by `run`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

SUMMARY_LUA = r"""
local threads, counter = {}, 0
function setup(thread)
  thread:set("id", counter)
  table.insert(threads, thread)
  counter = counter + 1
end
function done(summary, latency, requests)
  local d, n, w = 0, 0, 0
  for _, t in ipairs(threads) do
    d = d + t:get("dup"); n = n + t:get("non2xx"); w = w + t:get("wrapped")
  end
  local e = summary.errors
  io.write(string.format('WRK_JSON {"requests":%d,"duration_us":%d,"p50_us":%d,' ..
    '"p90_us":%d,"p99_us":%d,"p999_us":%d,"max_us":%d,"non2xx":%d,"duplicates":%d,' ..
    '"wrapped":%d,"socket_errors":%d}\n', summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, n, d, w,
    e.connect + e.read + e.write + e.timeout))
end
"""


def available() -> bool:
    return shutil.which("wrk") is not None


def run(url: str, script: Path, threads: int, connections: int, duration_s: float,
        *script_args: str, prefix: Sequence[str] = ()) -> dict[str, Any]:
    """Run wrk with `script` (which must include SUMMARY_LUA); return its WRK_JSON figures.

    `prefix` goes before the command (`taskset -c 1` to pin wrk to a core)."""
    out = subprocess.run(
        [*prefix, "wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(duration_s))}s",
         "--timeout", "10s", "-s", str(script), url, "--", *script_args],
        capture_output=True, text=True, timeout=duration_s + 60, check=True)
    for line in out.stdout.splitlines():
        if line.startswith("WRK_JSON "):
            result: dict[str, Any] = json.loads(line[len("WRK_JSON "):])
            return result
    raise RuntimeError(f"no figures from wrk: {out.stdout[-400:]} {out.stderr[-400:]}")
