"""Thread CPU per webhook delivery of the event loop's own relay code, in process.

    .venv/bin/python bench/front_split.py [--rounds 5] [--count 4000] [TREE ...]

Per delivery, as `handle_attesto` runs them with the default config (no HTTP, no store):
the signature check, the JSON parse, `normalize`, the kept-headers JSON and the `Inbound`,
the accepted count.
With TREE arguments (source trees, e.g. an archive of main and this worktree), each round
runs every tree in a child process, in alternating order, and prints the per-tree medians,
ranges and the per-round ratio to the first tree.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if sys.path and Path(sys.path[0]).resolve() == ROOT / "bench":  # bench/relay.py is not relay
    del sys.path[0]


def measure(count: int, repeat: int) -> dict[str, float]:
    """µs of thread CPU per delivery for each step, best of `repeat` passes."""
    # relay first, from PYTHONPATH (the tree measured): bench/ingest.py puts this
    # script's tree ahead of it on sys.path.
    from multidict import CIMultiDict, CIMultiDictProxy

    from relay.attesto.signature import verify_attesto
    from relay.core.json_codec import dumps
    from relay.core.json_object import parse_json_object
    from relay.core.normalizer import normalize
    from relay.intake.inbox import Inbound
    from relay.metrics import Metrics
    from relay.web.routes import webhooks

    sys.path.append(str(ROOT / "bench"))
    import ingest

    t = int(time.time())
    lines = ingest._make_chunk((0, count, max(count // 4, 1), t, 0))
    items = []
    for line in lines:
        eid, ev, ts, sig, body = line.split("\t", 4)
        headers = CIMultiDictProxy(CIMultiDict({
            "Host": "127.0.0.1:8080", "Content-Type": "application/json",
            "Content-Length": str(len(body)), "X-Attesto-Event": ev,
            "X-Attesto-Event-Id": eid, "X-Attesto-Timestamp": ts,
            "X-Attesto-Signature": sig}))
        items.append((headers, body.encode()))
    secrets = [ingest.SECRET]
    now_ms = t * 1000

    def sig() -> None:
        for h, raw in items:
            verify_attesto(h.get("X-Attesto-Signature"), raw, secrets, now_ms // 1000, 300)

    docs = [parse_json_object(raw) for _, raw in items]

    def parse() -> None:
        for _, raw in items:
            parse_json_object(raw)

    def norm() -> None:
        for doc in docs:
            normalize(doc, now_ms)

    kept_headers = webhooks.KEPT_HEADERS
    kept = getattr(webhooks, "_kept", None) or (
        lambda h: {k: h[k] for k in kept_headers if k in h})  # trees before perf-loop3

    def glue() -> None:
        for h, raw in items:
            Inbound(h.get("X-Attesto-Event-Id") or "", "e", now_ms, 1, dumps(
                kept(h), ascii_fallback=True), raw)

    metrics = Metrics()
    # The accepted answer's count, as the handler makes it (Metrics.webhook from perf-loop3).
    child = getattr(metrics, "webhook", None) or metrics.webhooks.labels

    def counter() -> None:
        for _ in items:
            child("accepted", "").inc()

    out: dict[str, float] = {}
    for name, fn in (("signature", sig), ("parse", parse), ("normalize", norm),
                     ("glue", glue), ("counter", counter)):
        best = float("inf")
        for _ in range(repeat):
            start = time.thread_time()
            fn()
            best = min(best, time.thread_time() - start)
        out[name] = best / count * 1e6
    out["total"] = sum(out.values())
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--count", type=int, default=4000)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("trees", nargs="*")
    a = p.parse_args(argv)
    if a.child or not a.trees:
        print(json.dumps(measure(a.count, a.repeat)))
        return
    runs: dict[str, list[dict[str, float]]] = {tree: [] for tree in a.trees}
    for r in range(a.rounds):
        order = a.trees if r % 2 == 0 else a.trees[::-1]
        for tree in order:
            script = Path(tree) / "bench" / "front_split.py"
            if not script.exists():  # an older tree: run this script against its code
                script = Path(__file__)
            res = subprocess.run([sys.executable, str(script), "--child", "--count",
                                  str(a.count), "--repeat", str(a.repeat)], check=True,
                                 capture_output=True, text=True, cwd=tree,
                                 env={"PYTHONPATH": tree, "PATH": "/usr/bin:/bin"})
            runs[tree].append(json.loads(res.stdout))
    _print(runs, a.trees)


def _print(runs: dict[str, list[dict[str, float]]], trees: list[str]) -> None:
    steps = list(runs[trees[0]][0])
    base = runs[trees[0]]
    for tree in trees:
        print(tree)
        for step in steps:
            v = [r[step] for r in runs[tree]]
            ratio = [r[step] / b[step] for r, b in zip(runs[tree], base, strict=True)]
            print(f"  {step:10} {statistics.median(v):7.2f} µs ({min(v):.2f}-{max(v):.2f})"
                  f"  x{statistics.median(ratio):.3f} ({min(ratio):.3f}-{max(ratio):.3f})")




if __name__ == "__main__":
    main()
