"""Where a post through `deliver.attempt` costs more than a plain aiohttp post: one process,
no lanes and no store, variants interleaved round by round (CPU per post, process clock).

Run from a tree's root:  .venv/bin/python bench/outbox_post.py [--posts 5000] [--rounds 6]
Every variant posts the same signed bodies to bench/relay.py's receiver (its own process)
with `--concurrency` workers, one variant after another within a round, the order rotated
every round. Prints each variant's median and range of µs CPU per post and of posts/s.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))  # this tree's relay package, ahead of an installed one
_spec = importlib.util.spec_from_file_location("relay_bench", BENCH / "relay.py")
assert _spec is not None and _spec.loader is not None
relay_bench: Any = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(relay_bench)

from relay.core.retry_policy import Verdict  # noqa: E402
from relay.core.signing import parse_secret, sign_headers  # noqa: E402
from relay.outbox import deliver  # noqa: E402
from relay.outbox.endpoints import Endpoint  # noqa: E402
from relay.outbox.queue import Claimed  # noqa: E402
from relay.outbox.ssrf import GuardedResolver  # noqa: E402

TEN_S = aiohttp.ClientTimeout(total=10.0)  # what relay passed per request before
Post = Callable[[aiohttp.ClientSession, str, int], Awaitable[None]]


def make_variants(bodies: list[bytes], secret: str) -> dict[str, tuple[str, Post]]:
    """name -> (session kind, one post of body i)."""
    key = parse_secret(secret)
    claims = [Claimed(id=i, endpoint="bench", event_id=f"evt_{i:08d}", body=b, attempts=0,
                      token=2**62, subject=str(i), sequence=i) for i, b in enumerate(bodies)]
    endpoints: dict[str, Endpoint] = {}

    def now_ms() -> int:
        return time.time_ns() // 1_000_000

    async def plain(session: aiohttp.ClientSession, url: str, i: int) -> None:
        async with session.post(url, data=bodies[i], allow_redirects=False,
                                headers={"Content-Type": "application/json"}) as resp:
            await resp.content.read(256)

    async def signed(session: aiohttp.ClientSession, url: str, i: int) -> None:
        c = claims[i]
        headers = sign_headers(c.event_id, now_ms() // 1000, c.body, (key,))
        headers["Content-Type"] = "application/json"
        async with session.post(url, data=c.body, headers=headers, allow_redirects=False,
                                timeout=TEN_S) as resp:
            resp.headers.get("Retry-After")
            (await resp.content.read(256)).decode("utf-8", "replace")

    async def headers_only(session: aiohttp.ClientSession, url: str, i: int) -> None:
        c = claims[i]
        headers = sign_headers(c.event_id, now_ms() // 1000, c.body, (key,))
        headers["Content-Type"] = "application/json"
        async with session.post(url, data=c.body, headers=headers,
                                allow_redirects=False) as resp:
            await resp.content.read(256)

    fixed = sign_headers("evt_0", int(time.time()), bodies[0], (key,))
    fixed["Content-Type"] = "application/json"

    async def static(session: aiohttp.ClientSession, url: str, i: int) -> None:
        async with session.post(url, data=bodies[i], headers=fixed,
                                allow_redirects=False) as resp:
            await resp.content.read(256)

    presigned = [sign_headers(c.event_id, int(time.time()), c.body, (key,)) for c in claims]
    for h in presigned:
        h["Content-Type"] = "application/json"

    async def signed_ahead(session: aiohttp.ClientSession, url: str, i: int) -> None:
        # Each post's own signed headers, made before the rounds: `headers` minus this is
        # signing's CPU in situ; this minus `static` is aiohttp's for fresh header values.
        async with session.post(url, data=bodies[i], headers=presigned[i],
                                allow_redirects=False) as resp:
            await resp.content.read(256)

    async def timeout(session: aiohttp.ClientSession, url: str, i: int) -> None:
        async with session.post(url, data=bodies[i], allow_redirects=False,
                                headers={"Content-Type": "application/json"},
                                timeout=TEN_S) as resp:
            await resp.content.read(256)

    async def attempt(session: aiohttp.ClientSession, url: str, i: int) -> None:
        ep = endpoints.get(url)
        if ep is None:
            ep = endpoints[url] = Endpoint(name="bench", url=url, hmac_keys=(key,),
                                           ed25519_keys=(), timeout_s=10.0, enabled=True,
                                           schedule=(1.0,))
        outcome = await deliver.attempt(session, ep, claims[i], now_ms)
        assert outcome.verdict == Verdict.DELIVERED, outcome

    return {"bare/plain": ("bare", plain), "relay/plain": ("relay", plain),
            "relay/signed": ("relay", signed), "relay/headers": ("relay", headers_only),
            "relay/static": ("relay", static), "relay/presigned": ("relay", signed_ahead),
            "relay/timeout": ("relay", timeout),
            "relay/attempt": ("relay", attempt),
            "bare/attempt": ("bare", attempt)}


def session_of(kind: str, concurrency: int) -> aiohttp.ClientSession:
    if kind == "bare":  # bench/relay.py's ceiling
        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency))
    return deliver.delivery_session(GuardedResolver([]), concurrency)


async def run(posts: int, rounds: int, concurrency: int, only: list[str]) -> None:
    async with relay_bench.receiver() as base:
        secret = relay_bench.generate_secret()
        bodies = [f'{{"type":"subscription.renewed","n":{i},"pad":"{"x" * 400}"}}'.encode()
                  for i in range(posts)]
        variants = make_variants(bodies, secret)
        names = [n for n in variants if not only or n in only]
        sessions = {kind: session_of(kind, concurrency) for kind in ("bare", "relay")}
        cpu: dict[str, list[float]] = {n: [] for n in names}
        rate: dict[str, list[float]] = {n: [] for n in names}
        try:
            for round_ in range(rounds + 1):  # round 0 warms up (connections, caches)
                order = names[round_ % len(names):] + names[:round_ % len(names)]
                for name in order:
                    kind, post = variants[name]
                    session, url = sessions[kind], f"{base}/hook"
                    it = iter(range(posts))

                    async def worker(post: Post = post, session: aiohttp.ClientSession = session,
                                     url: str = url, it: Any = it) -> None:
                        for i in it:
                            await post(session, url, i)

                    t0, c0 = time.perf_counter(), time.process_time()
                    await asyncio.gather(*(worker() for _ in range(concurrency)))
                    wall, used = time.perf_counter() - t0, time.process_time() - c0
                    if round_:
                        cpu[name].append(used / posts * 1e6)
                        rate[name].append(posts / wall)
        finally:
            for session in sessions.values():
                await session.close()
    for name in names:
        c, r = sorted(cpu[name]), sorted(rate[name])
        print(f"{name:>14}: CPU µs per post median {statistics.median(c):6.1f} "
              f"({c[0]:.1f}-{c[-1]:.1f}); posts/s median {statistics.median(r):7,.0f} "
              f"({r[0]:,.0f}-{r[-1]:,.0f})", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--posts", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--only", nargs="*", default=[])
    args = parser.parse_args()
    asyncio.run(run(args.posts, args.rounds, args.concurrency, args.only))


if __name__ == "__main__":
    main()
