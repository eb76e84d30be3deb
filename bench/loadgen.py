"""Fallback load generator for bench/ingest.py when wrk is not installed.

Closed loop: `connections` aiohttp workers (split over `threads` processes) each POST the
next pre-signed request from their file and wait for the answer. Prints one JSON line
with the same fields as the wrk script. Slower than wrk: its ceiling is lower.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import sys
import time
from typing import Any

import aiohttp


def _read(path: str) -> list[tuple[dict[str, str], bytes]]:
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            eid, ev, ts, sig, body = line.rstrip("\n").split("\t", 4)
            out.append(({"Content-Type": "application/json", "X-Attesto-Event": ev,
                         "X-Attesto-Event-Id": eid, "X-Attesto-Timestamp": ts,
                         "X-Attesto-Signature": sig}, body.encode()))
    return out


async def _run(url: str, requests: list[tuple[dict[str, str], bytes]], connections: int,
               duration_s: float) -> dict[str, Any]:
    latencies: list[float] = []
    counts = {"non2xx": 0, "duplicates": 0, "wrapped": 0, "socket_errors": 0}
    position = 0
    deadline = time.perf_counter() + duration_s

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal position
        while time.perf_counter() < deadline:
            if position >= len(requests):
                position, counts["wrapped"] = 0, counts["wrapped"] + 1
            headers, body = requests[position]
            position += 1
            start = time.perf_counter()
            try:
                async with session.post(url, data=body, headers=headers) as resp:
                    text = await resp.read()
            except aiohttp.ClientError:
                counts["socket_errors"] += 1
                continue
            latencies.append(time.perf_counter() - start)
            if resp.status != 200:
                counts["non2xx"] += 1
            elif b"duplicate" in text:
                counts["duplicates"] += 1

    started = time.perf_counter()
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(worker(session) for _ in range(connections)))
    return {"duration_us": (time.perf_counter() - started) * 1e6,
            "latencies_us": [x * 1e6 for x in latencies], **counts}


def _child(args: tuple[str, str, int, float]) -> dict[str, Any]:
    url, path, connections, duration_s = args
    return asyncio.run(_run(url, _read(path), connections, duration_s))


def main(argv: list[str]) -> dict[str, Any]:
    url, prefix, threads, connections, duration_s = (argv[0], argv[1], int(argv[2]),
                                                      int(argv[3]), float(argv[4]))
    jobs = [(url, f"{prefix}.{n}", connections // threads, duration_s) for n in range(threads)]
    with multiprocessing.get_context("spawn").Pool(threads) as pool:
        parts = pool.map(_child, jobs)
    lat = sorted(x for p in parts for x in p["latencies_us"])

    def pct(q: float) -> int:
        return int(lat[min(len(lat) - 1, int(len(lat) * q / 100))]) if lat else 0

    result = {"requests": len(lat), "duration_us": int(max(p["duration_us"] for p in parts)),
              "p50_us": pct(50), "p90_us": pct(90), "p99_us": pct(99), "p999_us": pct(99.9),
              "max_us": int(lat[-1]) if lat else 0,
              **{k: sum(p[k] for p in parts) for k in ("non2xx", "duplicates", "wrapped",
                                                        "socket_errors")}}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
