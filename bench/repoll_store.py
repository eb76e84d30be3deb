"""Re-poll results on the store thread, in process: `apply_polls` for groups of `--group`
Apple polls (BEGIN IMMEDIATE, the batch's savepoint, COMMIT), as the poller's write
groups run, tree against tree.

    .venv/bin/python bench/repoll_store.py --rounds 5 [--unchanged] base=/tmp/base cand=$PWD

Each run is a child process with a fresh SQLite file importing `relay` from the tree it is
given, holding `--count` Apple subscriptions (verified, not measured). Each poll answers a
renewal (a new transaction, a later expiry: `changed`, one event), or with
`--unchanged` the same answer twice (the second folds into the first: `unchanged`). Per
run: thread CPU per poll of the write unit (`apply_polls`) and of the whole group.
`--profile tottime|cumulative`, `--sql` as bench/verify_store.py.
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
    from relay.runtime import Runtime
    from relay.scheduler.repoll import Polled, apply_polls
    from relay.store import pipeline, statements
    from relay.store.database import Store

    tmp = Path(tempfile.mkdtemp(prefix="repoll-store-"))
    db_path = tmp / "relay.sqlite3"
    (tmp / "relay.toml").write_text(CONFIG.format(path=db_path))
    config = load_config(tmp / "relay.toml", environ={})
    runtime = Runtime(config)
    rules = runtime.rules
    store = Store(config.store)
    now = int(time.time() * 1000)

    def answer(i: int, renewal: int) -> Any:
        txn = AppleTransaction(transaction_id=f"t{i}-{renewal}", original_transaction_id=f"o{i}",
                               product_id="premium.monthly",
                               expires_ms=now + (30 + renewal) * 86_400_000,
                               purchase_ms=now - 60_000 + renewal)
        body = json.loads(json.dumps({"valid": True, "environment": txn.environment,
                                      "transaction": txn.normalized(),
                                      "appUserId": txn.app_account_token}))
        return body

    def run() -> dict[str, Any]:
        db = store.db
        for i in range(0, args.count, 256):
            with db.atomic("IMMEDIATE"):
                for j in range(i, min(i + 256, args.count)):
                    pipeline.apply(apple_snapshot(answer(j, 0), f"user-{j}", now, "verify"),
                                   rules, now)
        if args.unchanged:  # a first poll, so that the measured one repeats it
            with db.atomic("IMMEDIATE"):
                views = statements.load_purchases([("apple", f"o{j}")
                                                   for j in range(args.count)])
                for j in range(0, args.count, args.group):
                    apply_polls([Polled(views[("apple", f"o{k}")], apple_snapshot(
                        answer(k, 0), None, now + 1, "poll"), runtime, now + 1)
                        for k in range(j, min(j + args.group, args.count))])
        with db.atomic():
            views = statements.load_purchases([("apple", f"o{j}") for j in range(args.count)])
        renewal = 0 if args.unchanged else 1
        items = [Polled(views[("apple", f"o{j}")], apple_snapshot(
            answer(j, renewal), None, now + 2, "poll"), runtime, now + 2)
            for j in range(args.count)]
        groups = [items[i:i + args.group] for i in range(0, len(items), args.group)]
        clock = time.thread_time_ns
        unit = group = 0
        per: Counter[str] = Counter()
        plain = db.execute_sql

        def timed(sql: str, params: Any = None, *a: Any, **k: Any) -> Any:
            t = time.thread_time_ns()
            try:
                return plain(sql, params, *a, **k)
            finally:
                if "SAVEPOINT" not in sql:
                    per[" ".join(sql.split()[:4])[:48]] += time.thread_time_ns() - t

        if args.sql:
            db.execute_sql = timed  # type: ignore[method-assign]
        prof = None
        if args.profile:
            import cProfile
            prof = cProfile.Profile()
        outcomes: Counter[str] = Counter()
        for part in groups:
            t0 = clock()
            ctx = db.atomic("IMMEDIATE")
            ctx.__enter__()
            with db.atomic():
                if prof is not None:
                    prof.enable()
                t1 = clock()
                result = apply_polls(part)
                t2 = clock()
                if prof is not None:
                    prof.disable()
            ctx.__exit__(None, None, None)
            t3 = clock()
            outcomes.update(str(o.value if hasattr(o, "value") else o) for o, _ in result)
            unit += t2 - t1
            group += t3 - t0
        if args.sql:
            del db.execute_sql
        if prof is not None:
            import pstats
            pstats.Stats(prof, stream=sys.stderr).sort_stats(args.profile).print_stats(45)
        out: dict[str, Any] = {"unit_us": unit / 1000 / len(items),
                               "group_us": group / 1000 / len(items),
                               "outcomes": dict(outcomes),
                               "relay": str(Path(relay.__file__).parent.parent)}
        if args.sql:
            out["sql"] = {k: round(v / 1000 / len(items), 2) for k, v in per.most_common()}
        return out

    return on_store_thread(store, run, tmp)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("trees", nargs="*", help="name=path of a tree holding relay/")
    ap.add_argument("--count", type=int, default=4000, help="polls measured per run")
    ap.add_argument("--group", type=int, default=32, help="polls per write group")
    ap.add_argument("--unchanged", action="store_true", help="answers that change nothing")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--profile", default="", help="cProfile sort key (child's stderr)")
    ap.add_argument("--sql", action="store_true", help="thread CPU per statement")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args)))
        return
    flags = [f"--count={args.count}", f"--group={args.group}"]
    flags += ["--unchanged"] if args.unchanged else []
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
