"""A verify's write on the store thread, in process: `apply_verifies` for one verify per
write group (BEGIN IMMEDIATE, the batch's savepoint, COMMIT), as `Store` runs one verify
in flight, tree against tree.

    .venv/bin/python bench/verify_store.py --rounds 5 base=/tmp/base cand=$PWD

Each run is a child process with a fresh SQLite file importing `relay` from the tree it is
given. Every verify is a new Apple subscription of a new user (bench/verify.py's load),
its Attesto answer made by the simulator's records. Per run: thread CPU per verify of the
write unit (`apply_verifies`) and of the whole group (with its COMMIT). Rounds alternate
the trees' order; medians and ranges are printed. `--profile tottime|cumulative`: a
cProfile of the write units (one tree). `--sql`: thread CPU per statement.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.append(str(Path(__file__).resolve().parent))  # bench/trees.py, after relay's tree

from trees import alternating, on_store_thread, parse_trees, run_child, summarize  # noqa: E402

CONFIG = ('[store]\npath = "{path}"\n[scheduler]\nenabled = false\n'
          '[entitlements]\n"premium.monthly" = ["premium"]\n')


def child(args: argparse.Namespace) -> dict[str, Any]:
    """One run in this process (`relay` from PYTHONPATH)."""

    import relay
    from relay.attesto.sim_records import AppleTransaction
    from relay.config.loader import load_config
    from relay.core.verify_snapshot import apple_snapshot
    from relay.runtime import rules_from
    from relay.store.database import Store
    from relay.verify.verifier import VerifyWrite, apply_verifies

    tmp = Path(tempfile.mkdtemp(prefix="verify-store-"))
    db_path = tmp / "relay.sqlite3"
    (tmp / "relay.toml").write_text(CONFIG.format(path=db_path))
    config = load_config(tmp / "relay.toml", environ={})
    rules = rules_from(config)
    store = Store(config.store)
    now = int(time.time() * 1000)
    writes = []
    for i in range(args.warmup + args.count):
        txn = AppleTransaction(transaction_id=f"t{i}", original_transaction_id=f"o{i}",
                               product_id="premium.monthly", expires_ms=now + 30 * 86_400_000,
                               purchase_ms=now - 60_000)
        body = json.loads(json.dumps({"valid": True, "environment": txn.environment,
                                      "transaction": txn.normalized(),
                                      "appUserId": txn.app_account_token}))
        snap = apple_snapshot(body, f"user-{i}", now, "verify")
        writes.append(VerifyWrite(snap, None, rules, now, True))

    def run() -> dict[str, Any]:
        db = store.db
        clock = time.thread_time_ns
        unit = group = 0
        per: Counter[str] = Counter()
        prof = None
        plain = db.execute_sql

        def timed(sql: str, params: Any = None, *a: Any, **k: Any) -> Any:
            t = time.thread_time_ns()
            try:
                return plain(sql, params, *a, **k)
            finally:
                if "SAVEPOINT" not in sql:
                    per[" ".join(sql.split()[:4])[:48]] += time.thread_time_ns() - t

        for n, w in enumerate(writes):
            if n == args.warmup:
                if args.sql:
                    db.execute_sql = timed  # type: ignore[method-assign]
                if args.profile:
                    import cProfile
                    prof = cProfile.Profile()
            t0 = clock()
            ctx = db.atomic("IMMEDIATE")
            ctx.__enter__()
            with db.atomic():
                if prof is not None:
                    prof.enable()
                t1 = clock()
                result = apply_verifies([w])
                t2 = clock()
                if prof is not None:
                    prof.disable()
            ctx.__exit__(None, None, None)
            t3 = clock()
            assert result[0][1], "the user is entitled"
            if n >= args.warmup:
                unit += t2 - t1
                group += t3 - t0
        if args.sql:
            del db.execute_sql
        if prof is not None:
            import pstats
            pstats.Stats(prof, stream=sys.stderr).sort_stats(args.profile).print_stats(45)
        out: dict[str, Any] = {"unit_us": unit / 1000 / args.count,
                               "group_us": group / 1000 / args.count,
                               "relay": str(Path(relay.__file__).parent.parent)}
        if args.sql:
            out["sql"] = {k: round(v / 1000 / args.count, 2) for k, v in per.most_common()}
        return out

    return on_store_thread(store, run, tmp)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("trees", nargs="*", help="name=path of a tree holding relay/")
    ap.add_argument("--count", type=int, default=2000, help="verifies measured per run")
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--profile", default="", help="cProfile sort key (child's stderr)")
    ap.add_argument("--sql", action="store_true", help="thread CPU per statement")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args)))
        return
    flags = [f"--count={args.count}", f"--warmup={args.warmup}"]
    trees = parse_trees(args.trees, __file__)
    results: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in trees}
    flags += [f"--profile={args.profile}"] if args.profile else []
    flags += ["--sql"] if args.sql else []
    for r, name, path in alternating(trees, args.rounds):
        res, stderr = run_child(__file__, path, flags)
        if args.profile:
            print(stderr[:12000])
        results[name].append(res)
        print(f"round {r} {name}: unit {res['unit_us']:.1f} µs, group "
              f"{res['group_us']:.1f} µs {res.get('outcomes', '')} ({res['relay']})", flush=True)
        if args.sql:
            print("  " + json.dumps(res["sql"]))
    summarize(results, ("unit_us", "group_us"))

if __name__ == "__main__":
    main()
