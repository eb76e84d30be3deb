"""`relay explain USER [KEY] [--json]`: why a user has an entitlement, or why not.

It reads the store directly (like `relay reproject`), not through the running relay's
API: explain is a support tool, and the store is what it explains. It needs no service
key (the CLI has none: `api-keys` holds only their hashes), works while relay is stopped,
and on SQLite it reads beside a serving relay without taking its write lock. The rules
(the `[entitlements]` map, the leeways) come from the same relay.toml, through the same
functions as `GET /v1/users/{id}/entitlements/{key}/explain`. Without KEY it explains
every key `[entitlements]` names.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Callable

from relay.config import find_config_path, load_config
from relay.core.explain import Explanation
from relay.runtime import Runtime
from relay.store import history
from relay.store.database import Store

EX_OK = 0


def register(add: Callable[[str, str], argparse.ArgumentParser]) -> None:
    p = add("explain", "why a user has an entitlement now, or why not (reads the store)")
    p.add_argument("user", help="the user id")
    p.add_argument("key", nargs="?", default=None,
                   help="the entitlement key (default: every key [entitlements] names)")
    p.add_argument("--json", action="store_true", help="print the JSON the API answers")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    runtime = Runtime(load_config(find_config_path(args.config)))
    found = asyncio.run(_explain(runtime, args.user, args.key))
    if args.json:
        body = found[0].to_json() if args.key else [e.to_json() for e in found]
        print(json.dumps(body, indent=2, ensure_ascii=False))
    else:
        print("\n\n".join(e.text() for e in found) if found
              else f"{args.user}: [entitlements] names no key to explain")
    return EX_OK


async def _explain(runtime: Runtime, user: str, key: str | None) -> list[Explanation]:
    store = Store(runtime.config.store, shared=True)
    await store.open(migrate=False)
    now, rules = runtime.now_ms(), runtime.rules
    try:
        if key is not None:
            return [await store.read(lambda: history.explain(user, key, rules, now))]
        return await store.read(lambda: history.explain_all(user, rules, now))
    finally:
        await store.close()
