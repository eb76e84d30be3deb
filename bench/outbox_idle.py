"""What the outbox's commit listener costs a write group when there is nothing to deliver.

    .venv/bin/python bench/outbox_idle.py [--writes 2000] [--rounds 7]

One process: relay's real app (no downstream endpoint) on a temporary SQLite file, driven
by sequential `store.write(lambda: None)` (one write group, one COMMIT each). Per round the
commit listener is, in rotated order, `outbox.wake` (main: a worker cycle per commit) and
`outbox.on_commit` (skips the idle cycle); CPU per write by the process clock and by the
loop thread's clock, round 0 discarded, medians and ranges printed.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if sys.path[:1] != [str(ROOT)]:
    sys.path.insert(0, str(ROOT))

from aiohttp.test_utils import TestClient, TestServer  # noqa: E402

from relay.web.app import create_app  # noqa: E402
from relay.web.appkeys import OUTBOX_KEY, STORE_KEY  # noqa: E402
from tests.conftest import make_config  # noqa: E402


async def main(writes: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory(prefix="relay-idle-") as tmp:
        app = create_app(make_config(Path(tmp), outbox={"sweep_s": 3600.0}))
        async with TestClient(TestServer(app)) as client:
            store, outbox = client.app[STORE_KEY], client.app[OUTBOX_KEY]
            listeners = store._commit_listeners
            index = listeners.index(outbox.on_commit)
            variants = {"wake": outbox.wake, "on_commit": outbox.on_commit}
            cpu: dict[str, list[float]] = {name: [] for name in variants}
            loop_cpu: dict[str, list[float]] = {name: [] for name in variants}
            for r in range(rounds):
                order = list(variants)[r % 2:] + list(variants)[:r % 2]
                for name in order:
                    listeners[index] = variants[name]
                    await outbox.poke()
                    p0, t0 = time.process_time(), time.thread_time()
                    for _ in range(writes):
                        await store.write(lambda: None)
                    await asyncio.sleep(0.01)  # a deferred cycle runs inside the round
                    p1, t1 = time.process_time(), time.thread_time()
                    if r:
                        cpu[name].append((p1 - p0) / writes * 1e6)
                        loop_cpu[name].append((t1 - t0) / writes * 1e6)
            listeners[index] = outbox.on_commit
    for name in variants:
        c, lc = cpu[name], loop_cpu[name]
        print(f"{name:10s} process µs/write {statistics.median(c):6.1f} "
              f"({min(c):.1f}-{max(c):.1f})  loop thread {statistics.median(lc):6.1f} "
              f"({min(lc):.1f}-{max(lc):.1f})")
    diffs = [a - b for a, b in zip(cpu["wake"], cpu["on_commit"], strict=True)]
    print(f"wake - on_commit per round (process µs/write): median "
          f"{statistics.median(diffs):.1f} ({min(diffs):.1f}..{max(diffs):.1f})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writes", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    asyncio.run(main(args.writes, args.rounds))
