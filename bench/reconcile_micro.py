"""A re-poll's and a verify's snapshot steps in process, tree against tree: `apple_snapshot`
then `reconcile_apple` against a stored row (a renewal: "newer"; the same period: identity
only). Each tree runs in its own process (its relay through sys.path[0]), rounds
interleaved; the figure is thread CPU per call, best of `--repeat` runs of `--count`.

    .venv/bin/python bench/reconcile_micro.py --rounds 6 main=/tmp/verify2-base cand=.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from typing import Any

NOW = 1_800_000_000_000
DAY = 86_400_000


def child(count: int, repeat: int) -> dict[str, float]:
    from relay.attesto.simulator import AttestoSimulator
    from relay.core.domain import PurchaseView
    from relay.core.verify_snapshot import apple_snapshot, reconcile_apple

    sim = AttestoSimulator()
    txn = sim.add_apple(transaction_id="t2", original_transaction_id="o1",
                        product_id="premium.monthly", expires_ms=NOW + 20 * DAY,
                        purchase_ms=NOW - 10 * DAY, signed_ms=NOW,
                        app_account_token="11111111-2222-4333-8444-555555555555")
    body = {"valid": True, "environment": txn.environment, "transaction": txn.normalized(),
            "appUserId": txn.app_account_token, "version": "sim"}
    snap = apple_snapshot(body, "u1", NOW, "poll")
    fields = {f: getattr(snap, f, None) for f in PurchaseView.__dataclass_fields__}
    fields.update(sequence=1, created_ms=NOW - DAY, updated_ms=NOW - DAY,
                  store_time_ms=NOW - DAY, kind="subscription", state="active")
    older = PurchaseView(**{**fields, "expires_ms": NOW - DAY})
    same = PurchaseView(**{**fields, "expires_ms": snap.expires_ms})

    def best(fn: Any) -> float:
        out = []
        for _ in range(repeat):
            t0 = time.thread_time_ns()
            for _ in range(count):
                fn()
            out.append((time.thread_time_ns() - t0) / count / 1000)
        return min(out)

    return {"apple_snapshot": best(lambda: apple_snapshot(body, "u1", NOW, "poll")),
            "reconcile newer": best(lambda: reconcile_apple(snap, older)),
            "reconcile identity": best(lambda: reconcile_apple(snap, same))}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--count", type=int, default=20000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--child", action="store_true")
    ap.add_argument("trees", nargs="*")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.count, args.repeat)))
        return
    trees = [t.split("=", 1) for t in args.trees]
    runs: dict[str, list[dict[str, float]]] = {name: [] for name, _ in trees}
    code = ("import sys, runpy; sys.path.insert(0, sys.argv[1]); sys.argv = sys.argv[2:]; "
            "runpy.run_path(sys.argv[0], run_name='__main__')")
    for _ in range(args.rounds):
        for name, path in trees:
            out = subprocess.run([sys.executable, "-c", code, path, __file__, "--child", "--count",
                                  str(args.count), "--repeat", str(args.repeat)],
                                 check=True, capture_output=True, text=True).stdout
            runs[name].append(json.loads(out))
    base = trees[0][0]
    for step in runs[base][0]:
        line = [f"{step:20}"]
        for name, _ in trees:
            vals = [r[step] for r in runs[name]]
            line.append(f"{name} {statistics.median(vals):6.2f} µs")
        if len(trees) > 1:
            ratios = [c[step] / b[step] for b, c in zip(runs[base], runs[trees[1][0]], strict=True)]
            line.append(f"x{statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f})")
        print("  ".join(line))


if __name__ == "__main__":
    main()
