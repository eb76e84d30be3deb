"""`relay reproject [--since T] [--apply]`: re-derive purchase rows from the input log.

Dry run (the default): print each purchase whose state, expiry, grace end, current token
or entitlements today's rules would change, and a count. `--apply`: write them in batches,
one transaction each under the store's write lock (the serving relay's writes wait their
turn, never interleave), relaying `subscription.state_changed` with reason `reprojected`.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import sys
from collections.abc import Callable

from relay.config import find_config_path, load_config
from relay.core.domain import parse_time_ms
from relay.runtime import Runtime
from relay.store import reprojection
from relay.store.database import Store

EX_OK, EX_USAGE = 0, 2
DEFAULT_BATCH = 200


def register(add: Callable[[str, str], argparse.ArgumentParser]) -> None:
    p = add("reproject", "re-derive purchase rows from the input log with today's rules "
            "(a dry run unless --apply)")
    p.add_argument("--since", default=None,
                   help="only purchases with an input received at or after this time "
                        "(ISO-8601, e.g. 2026-01-31T00:00:00Z, or epoch milliseconds)")
    p.add_argument("--apply", action="store_true",
                   help="write the changed rows and relay their state_changed events")
    p.add_argument("--batch", type=int, default=DEFAULT_BATCH,
                   help=f"purchases per transaction (default {DEFAULT_BATCH})")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        since = parse_time_ms(args.since) if args.since else None
    except ValueError:
        print(f"relay reproject: --since {args.since!r} is not a time", file=sys.stderr)
        return EX_USAGE
    if args.batch < 1:
        print("relay reproject: --batch must be at least 1", file=sys.stderr)
        return EX_USAGE
    config = load_config(find_config_path(args.config))
    return asyncio.run(_reproject(Runtime(config), since, args.apply, args.batch))


async def _reproject(runtime: Runtime, since: int | None, apply: bool, batch: int) -> int:
    store = Store(runtime.config.store, shared=True)
    await store.open(migrate=False)
    changed = seen = 0
    try:
        after: tuple[str, str] | None = None
        while True:
            keys = await store.read(
                functools.partial(reprojection.purchases_with_inputs, since, after, batch))
            if not keys:
                break
            after, seen = keys[-1], seen + len(keys)
            # --apply: re-read and re-derived inside the write, so nothing moves meanwhile.
            step = reprojection.apply_batch if apply else reprojection.diff_batch
            job = functools.partial(step, keys, runtime.rules, runtime.now_ms())
            diffs, skipped = await (store.write(job) if apply else store.read(job))
            for d in diffs:
                print(d.describe())
            for line in skipped:
                print(f"skipped {line}")
            changed += len(diffs)
    finally:
        await store.close()
    verb = "changed" if apply else "would change"
    print(f"{changed} purchase(s) {verb} (of {seen} re-derived)")
    return EX_OK
