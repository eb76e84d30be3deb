"""The store thread's CPU per webhook delivery, in process: `inbox.ingest_many` in write
groups (BEGIN IMMEDIATE, the batch's savepoint, COMMIT), as `Store` runs them.

Each run is a child process with a fresh SQLite file (default pragmas, durable commits)
importing `relay` from the tree it is given, so trees compare on identical deliveries:

    .venv/bin/python bench/store_split.py --rounds 5 base=/tmp/base cand=$PWD

Per run: thread CPU per delivery of the whole group (statements + COMMIT + Python), of
the COMMIT alone, and the WAL written per delivery (`wal_autocheckpoint = 0`, so the
-wal file holds every frame); `--pages` adds the WAL frames per delivery by table or
index (dbstat). Rounds alternate the trees' order; medians and ranges are printed.
"""

from __future__ import annotations

import argparse
import json
import random
import struct
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.append(str(HERE))  # bench/trees.py, after relay's tree (PYTHONPATH)

from trees import alternating, on_store_thread, parse_trees, run_child, summarize  # noqa: E402

SECRET = "whsec_bench"  # bench/ingest.py's; the store never checks it
CONFIG = ('[store]\npath = "{path}"\n[scheduler]\nenabled = false\n'
          '[entitlements]\n"com.example.premium" = ["premium"]\n'
          '"premium_monthly" = ["premium"]\n[[downstream]]\nname = "billing"\n'
          'url = "https://billing.example/hook"\nenabled = false\n')


def make_deliveries(path: Path, count: int, offset: int = 0, shuffle: bool = False) -> None:
    """bench/ingest.py's deliveries (about four per subject), one request line each;
    `offset`: other subjects and ids."""
    sys.path.insert(0, str(HERE))
    from ingest import _make_chunk

    subjects = max(count // 4, 1)
    lines = _make_chunk((0, count, subjects, int(time.time()), offset))
    if shuffle:  # each pass over the subjects (a purchase, then renewals) in its own order
        rng = random.Random(19)
        passes = [lines[i:i + subjects] for i in range(0, len(lines), subjects)]
        for part in passes:
            rng.shuffle(part)
        lines = [line for part in passes for line in part]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _wal_pages(wal: Path, page_size: int) -> Counter[int]:
    """Page number of every frame in the -wal file."""
    pages: Counter[int] = Counter()
    with open(wal, "rb") as f:
        f.seek(32)
        while True:
            head = f.read(24)
            if len(head) < 24:
                break
            pages[struct.unpack(">I", head[:4])[0]] += 1
            f.seek(page_size, 1)
    return pages


def child(args: argparse.Namespace) -> dict[str, Any]:
    """One run in this process (`relay` from PYTHONPATH)."""

    import relay
    from relay.config.loader import load_config
    from relay.core.json_codec import dumps
    from relay.core.json_object import parse_json_object
    from relay.core.normalizer import normalize
    from relay.intake.inbox import Delivered, Inbound, ingest_many
    from relay.runtime import rules_from
    from relay.store.database import Store

    tmp = Path(tempfile.mkdtemp(prefix="store-split-"))
    db_path = tmp / "relay.sqlite3"
    (tmp / "relay.toml").write_text(CONFIG.format(path=db_path))
    config = load_config(tmp / "relay.toml", environ={
        "RELAY_CREDENTIAL_ATTESTO_WEBHOOK_SECRET": SECRET})
    rules = rules_from(config)
    pragmas: dict[str, Any] = {"wal_autocheckpoint": 0}
    if args.page_size:  # before WAL mode: a WAL file's page size is fixed at creation
        import sqlite3

        with sqlite3.connect(db_path) as pre:
            pre.execute(f"PRAGMA page_size = {int(args.page_size)}")
            pre.execute("PRAGMA journal_mode = wal")
        pre.close()
    store = Store(config.store, pragmas=pragmas)

    def read(path: str) -> list[Delivered]:
        items = []
        with open(path, encoding="utf-8") as f:
            for line in f:
                eid, ev, ts, _sig, body = line.rstrip("\n").split("\t", 4)
                raw = body.encode()
                now_ms = int(time.time() * 1000)
                norm = normalize(parse_json_object(raw), now_ms)
                headers = dumps({"X-Attesto-Event": ev, "X-Attesto-Event-Id": eid},
                                ascii_fallback=True)
                items.append(Delivered(Inbound(eid, ev, now_ms, int(ts), headers, raw),
                                       norm, rules, now_ms))
        return items

    items = read(args.deliveries)
    groups = [items[i:i + args.group] for i in range(0, len(items), args.group)]
    prefill = read(args.prefill_path) if args.prefill_path else []

    def run() -> dict[str, Any]:
        db = store.db
        page_size = db.execute_sql("PRAGMA page_size").fetchone()[0]
        for i in range(0, len(prefill), 256):  # a store with history: bigger trees
            with db.atomic("IMMEDIATE"):
                ingest_many(prefill[i:i + 256])
        db.execute_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        clock = time.thread_time_ns
        total = commit = 0
        per: Counter[str] = Counter()
        if args.statements:
            plain = db.execute_sql

            def timed(sql: str, params: Any = None, *a: Any, **k: Any) -> Any:
                t = time.thread_time_ns()
                try:
                    return plain(sql, params, *a, **k)
                finally:
                    per[" ".join(sql.split()[:3])[:40]] += time.thread_time_ns() - t

            db.execute_sql = timed  # type: ignore[method-assign]
        prof = None
        if args.profile:
            import cProfile
            prof = cProfile.Profile()
            prof.enable()
        for group in groups:
            t0 = clock()
            ctx = db.atomic("IMMEDIATE")
            ctx.__enter__()
            with db.atomic():
                ingest_many(group)
            t1 = clock()
            ctx.__exit__(None, None, None)
            t2 = clock()
            total += t2 - t0
            commit += t2 - t1
        if args.statements:
            del db.execute_sql
            out_statements = {k: round(v / 1000 / len(items), 2) for k, v in per.most_common()}
        if prof is not None:
            import pstats
            prof.disable()
            pstats.Stats(prof, stream=sys.stderr).sort_stats(args.profile).print_stats(40)
        wal = Path(f"{db.database}-wal")
        out: dict[str, Any] = {
            "total_us": total / 1000 / len(items), "commit_us": commit / 1000 / len(items),
            "wal_bytes": wal.stat().st_size / len(items), "page_size": page_size,
            "relay": str(Path(relay.__file__).parent.parent)}
        if args.statements:
            out["statements"] = out_statements
        if args.pages:
            frames = _wal_pages(wal, page_size)
            names = dict(db.execute_sql("SELECT pageno, name FROM dbstat").fetchall())
            by: Counter[str] = Counter()
            for page, n in frames.items():
                by[names.get(page, "?")] += n
            out["frames"] = {k: round(v / len(items), 2) for k, v in by.most_common()}
            out["frames_total"] = round(sum(frames.values()) / len(items), 2)
        return out

    return on_store_thread(store, run, tmp)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("trees", nargs="*", help="name=path of a tree holding relay/")
    ap.add_argument("--count", type=int, default=4000, help="deliveries per run")
    ap.add_argument("--group", type=int, default=32, help="deliveries per write group")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--pages", action="store_true", help="WAL frames by table or index")
    ap.add_argument("--page-size", type=int, default=0, help="page_size of the new file")
    ap.add_argument("--prefill", type=int, default=0,
                    help="deliveries stored first, not measured (a store with history)")
    ap.add_argument("--profile", default="", help="child only: cProfile sort key")
    ap.add_argument("--shuffle", action="store_true",
                    help="subjects in random order (each subject's deliveries in order)")
    ap.add_argument("--statements", action="store_true",
                    help="child only: thread CPU per delivery by statement")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--deliveries", default="", help=argparse.SUPPRESS)
    ap.add_argument("--prefill-file", dest="prefill_path", default="", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args)))
        return
    trees = parse_trees(args.trees, __file__)
    results: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in trees}
    with tempfile.TemporaryDirectory(prefix="store-split-") as tmp:
        deliveries = Path(tmp) / "deliveries.tsv"
        make_deliveries(deliveries, args.count, shuffle=args.shuffle)
        prefill = Path(tmp) / "prefill.tsv"
        if args.prefill:
            make_deliveries(prefill, args.prefill, offset=10 * args.count,
                            shuffle=args.shuffle)
        flags = ["--deliveries", str(deliveries), "--group", str(args.group),
                 "--page-size", str(args.page_size)]
        flags += ["--prefill-file", str(prefill)] if args.prefill else []
        flags += ["--pages"] if args.pages else []
        flags += ["--statements"] if args.statements else []
        flags += ["--profile", args.profile] if args.profile else []
        for r, name, path in alternating(trees, args.rounds):
            out, err = run_child(__file__, path, flags)
            results[name].append(out)
            if args.profile:
                print(err, flush=True)
            if args.statements:
                print(f"round {r} {name} statements (us/delivery): {out['statements']}")
            print(f"round {r} {name}: total {out['total_us']:.1f} us, commit "
                  f"{out['commit_us']:.1f} us, WAL {out['wal_bytes']:.0f} B/delivery"
                  + (f", frames {out['frames_total']} {out['frames']}"
                     if args.pages else ""), flush=True)
    summarize(results, ("total_us", "commit_us", "wal_bytes"))

if __name__ == "__main__":
    main()
