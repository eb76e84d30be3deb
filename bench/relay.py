"""Outbox throughput: deliveries/s to a loopback receiver vs a bare aiohttp client (the ceiling).

Run from the worktree root:  /tmp/v/bin/python bench/relay.py [--events 20000]
`--store postgres [--instances 2] [--pg-url URL]` adds N `relay serve` instances draining
the events together from one PostgreSQL database, against one `relay serve` on SQLite in
the same run (bench/relay_pg.py), with duplicates and per-subject order checked.
The receiver runs in its own process (a downstream is another service). Both sides
post the same bodies with the same concurrency, in interleaved rounds (the fastest
of each side counts); relay also signs, claims, records and keeps per-subject order.
A sample of relay's requests is verified with the independent `standardwebhooks`
package. Bounded by --timeout seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import importlib.util
import json
import logging
import os
import sys
import tempfile
import time
import types
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
if str(BENCH) not in sys.path:
    sys.path.append(str(BENCH))  # behind the root: bench/relay.py must not shadow relay

from receiver_proc import start_receiver, stop_receiver  # noqa: E402

from relay.config import Credentials, DownstreamConfig, Secret, load_config  # noqa: E402
from relay.core.domain import Snapshot, State  # noqa: E402
from relay.core.signing import generate_secret, parse_secret, verify_headers  # noqa: E402
from relay.outbox import admin as delivery_admin  # noqa: E402
from relay.store import pipeline  # noqa: E402
from relay.store.models import Delivery  # noqa: E402
from relay.web.app import create_app  # noqa: E402
from relay.web.appkeys import (  # noqa: E402
    OUTBOX_KEY,  # noqa: E402
    RUNTIME_KEY,
    STORE_KEY,
)

SAMPLE_EVERY = 100


# ---- the receiver (its own process) --------------------------------------------------------

def serve_receiver() -> None:
    """`--serve-receiver`: print the port, serve until stdin closes."""
    async def run() -> None:
        count = 0
        samples: list[dict[str, Any]] = []
        ids: list[str] = []  # webhook-id of every request, in arrival order
        seen: set[str] = set()
        last_new = 0.0  # time.time() when the latest not-yet-seen webhook-id arrived
        first_new = 0.0  # ... and the first one since the last reset

        async def hook(request: web.Request) -> web.Response:
            nonlocal count, last_new, first_new
            body = await request.read()
            count += 1
            wid = request.headers.get("webhook-id", "")
            ids.append(wid)
            if wid not in seen:
                seen.add(wid)
                last_new = time.time()
                first_new = first_new or last_new
            if count % SAMPLE_EVERY == 0:
                samples.append({"headers": dict(request.headers), "body": body.decode(),
                                "at": time.time()})
            return web.Response(text='{"ok":true}', content_type="application/json")

        async def bare(request: web.Request) -> web.Response:  # the ceiling's requests
            await request.read()
            return web.Response(text='{"ok":true}', content_type="application/json")

        async def stats(request: web.Request) -> web.Response:
            nonlocal count, last_new, first_new
            out: dict[str, Any] = {"count": count, "samples": samples[:],
                                   "distinct": len(seen), "last_new_at": last_new,
                                   "first_new_at": first_new}
            if request.query.get("ids"):
                out["ids"] = ids[:]
            if request.query.get("reset"):
                count, last_new, first_new = 0, 0.0, 0.0
                samples.clear()
                ids.clear()
                seen.clear()
            return web.json_response(out)

        app = web.Application()
        app.router.add_post("/hook", hook)
        app.router.add_post("/bare", bare)
        app.router.add_get("/stats", stats)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        print(runner.addresses[0][1], flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until EOF
        await runner.cleanup()

    asyncio.run(run())


async def _stats(session: aiohttp.ClientSession, base: str, reset: bool = False,
                 ids: bool = False) -> dict[str, Any]:
    params = {**({"reset": "1"} if reset else {}), **({"ids": "1"} if ids else {})}
    async with session.get(f"{base}/stats", params=params) as resp:
        data: dict[str, Any] = await resp.json()
        return data


@contextlib.asynccontextmanager
async def receiver() -> AsyncIterator[str]:
    """Start the receiver process; yield its base URL (`/hook`, `/bare`, `/stats`)."""
    proc, base = await asyncio.get_running_loop().run_in_executor(None, start_receiver)
    try:
        yield base
    finally:
        stop_receiver(proc)


# ---- the ceiling: a bare client ---------------------------------------------------------

async def ceiling(url: str, bodies: Sequence[bytes], concurrency: int) -> tuple[float, float]:
    """Post every body with `concurrency` workers; return (wall, CPU) seconds taken."""
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        it = iter(bodies)

        async def worker() -> None:
            for body in it:
                async with session.post(url, data=body, allow_redirects=False,
                                        headers={"Content-Type": "application/json"}) as resp:
                    await resp.content.read(256)
                    assert resp.status == 200

        t0, c0 = time.perf_counter(), time.process_time()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - t0, time.process_time() - c0


# ---- relay ----------------------------------------------------------------------------------

def _config(state: Path, url: str, secret: str, concurrency: int) -> Any:
    base = load_config(None, environ={})
    return dataclasses.replace(
        base,
        store=dataclasses.replace(base.store, path=str(state / "bench.sqlite3")),
        outbox=dataclasses.replace(base.outbox, allow_networks=("127.0.0.0/8",),
                                   concurrency=concurrency,
                                   per_endpoint_concurrency=concurrency),
        downstream=(DownstreamConfig(name="bench", url=url),),
        credentials=Credentials(downstream_secrets=types.MappingProxyType(
            {"bench": (Secret(secret),)})))


def _enqueue(app: web.Application, start: int, count: int, per_subject: int) -> list[str]:
    runtime = app[RUNTIME_KEY]
    bodies: list[str] = []
    now = runtime.now_ms()
    for i in range(start, start + count):
        snap = Snapshot(platform="apple", subject_key=f"{2_000_000_000 + i // per_subject}",
                        source="webhook", observed_ms=now, received_ms=now,
                        kind="subscription", product_id="premium.monthly", state=State.ACTIVE,
                        expires_ms=now + 30 * 86_400_000, environment="production",
                        event_type="subscription.renewed", attesto_event_id=f"evt_{i:08d}")
        bodies.extend(e.body for e in pipeline.apply(snap, runtime.rules, now).events)
    return bodies


async def _rearm(app: web.Application) -> int:
    """Queue every event to the (paused) endpoint again, as `relay replay` does."""
    runtime, store = app[RUNTIME_KEY], app[STORE_KEY]
    route = runtime.rules.routes[0]
    cursor, total = 0, 0
    while True:
        page = await store.write(lambda after=cursor: delivery_admin.replay_page(
            route, None, None, None, after, 1000, False, runtime.now_ms(), False))
        total += page.enqueued
        if page.last_cursor is None:
            return total
        cursor = page.last_cursor


async def run_relay(url: str, events: int, per_subject: int, concurrency: int, secret: str,
                    rounds: int, between: Callable[[list[bytes]], Awaitable[None]]
                    ) -> tuple[float, float, int]:
    """Enqueue `events` while paused, then time resume-to-drained `rounds` times.

    Returns the fastest round's (wall s, CPU s) and the rows delivered. Each later
    round re-queues the same events with a replay. `between(bodies)` runs after each
    round (the ceiling), so both sides sample the same stretch of machine noise.
    """
    with tempfile.TemporaryDirectory(prefix="relay-bench-") as state:
        app = create_app(_config(Path(state), url, secret, concurrency))
        runner = web.AppRunner(app)
        await runner.setup()
        try:
            outbox, store = app[OUTBOX_KEY], app[STORE_KEY]
            await outbox.pause("bench")
            bodies: list[str] = []
            batch = 500
            for start in range(0, events, batch):
                n = min(batch, events - start)
                bodies += await store.write(
                    lambda s=start, n=n: _enqueue(app, s, n, per_subject))
            best: tuple[float, float] | None = None
            for round_ in range(rounds):
                if round_:
                    await outbox.pause("bench")
                    assert await _rearm(app) == events
                t0, c0 = time.perf_counter(), time.process_time()
                await outbox.resume("bench")
                await outbox.settle()
                took = (time.perf_counter() - t0, time.process_time() - c0)
                delivered = await store.read(lambda: Delivery.select().where(
                    Delivery.status == "delivered").count())
                assert delivered == events, f"round {round_}: {delivered} of {events}"
                best = took if best is None or took < best else best
                await between([b.encode() for b in bodies])
        finally:
            await runner.cleanup()
    assert best is not None
    return best[0], best[1], delivered


def _verify(samples: list[dict[str, Any]], secret: str) -> tuple[int, str]:
    try:
        from standardwebhooks.webhooks import Webhook
    except ImportError:  # the test extra is not installed: relay's own verifier
        key = parse_secret(secret)
        for s in samples:
            verify_headers(s["headers"], s["body"].encode(), [key], now_s=int(s["at"]))
        return len(samples), "relay.core.signing"
    hook = Webhook(secret)
    for s in samples:
        assert hook.verify(s["body"], s["headers"])["id"] == s["headers"]["webhook-id"]
    return len(samples), "standardwebhooks"


async def bench(events: int, per_subject: int, concurrency: int, rounds: int
                ) -> dict[str, Any]:
    async with receiver() as base:
        secret = generate_secret()
        ceilings: list[tuple[float, float]] = []

        async def ceiling_round(bodies: list[bytes]) -> None:
            ceilings.append(await ceiling(f"{base}/bare", bodies, concurrency))

        relay_s, relay_cpu, delivered = await run_relay(
            f"{base}/hook", events, per_subject, concurrency, secret, rounds, ceiling_round)
        async with aiohttp.ClientSession() as session:
            got = await _stats(session, base, reset=True)
        verified, oracle = _verify(got["samples"], secret)
        # Best of the same number of interleaved rounds on both sides: a noisy
        # neighbour on a shared machine slows one round, not the comparison.
        ceiling_s, ceiling_cpu = min(ceilings)
    relay_rate, ceiling_rate = delivered / relay_s, events / ceiling_s
    return {
        "events": events, "events_per_subject": per_subject, "concurrency": concurrency,
        "rounds": rounds, "relay_delivered": delivered,
        "receiver_count": got["count"], "expected_requests": events * rounds,
        "relay_seconds": round(relay_s, 3), "relay_deliveries_per_s": round(relay_rate),
        "ceiling_seconds": round(ceiling_s, 3), "ceiling_posts_per_s": round(ceiling_rate),
        "ratio_to_ceiling": round(relay_rate / ceiling_rate, 3),
        "relay_cpu_us_per_delivery": round(relay_cpu / max(delivered, 1) * 1e6),
        "ceiling_cpu_us_per_post": round(ceiling_cpu / events * 1e6),
        "signatures_verified": verified, "verified_with": oracle,
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--per-subject", type=int, default=4,
                        help="events per purchase (delivered in sequence order)")
    parser.add_argument("--concurrency", type=int, default=32,
                        help="attempts in flight (relay: overall and for the one endpoint; "
                             "the bare client: connections)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="timed drains on each side; the fastest counts")
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--store", choices=("sqlite", "postgres"), default="sqlite",
                        help="postgres: also --instances `relay serve` on one PostgreSQL "
                             "against one on SQLite (bench/relay_pg.py)")
    parser.add_argument("--instances", type=int, default=2)
    parser.add_argument("--workers", type=int, default=0,
                        help="also drain with `relay serve` [server] workers = N (SQLite), "
                             "against one process and N bare client processes "
                             "(bench/relay_workers.py)")
    parser.add_argument("--pg-url", default=os.environ.get(
        "RELAY_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"))
    parser.add_argument("--pg-rounds", type=int, default=2,
                        help="drains on each store; the fastest counts")
    parser.add_argument("--no-analyze", action="store_true",
                        help="do not ANALYZE the PostgreSQL database after enqueueing "
                             "(shows the claim on a never-analyzed table)")
    args = parser.parse_args(argv)

    async def bounded() -> dict[str, Any]:
        async with asyncio.timeout(args.timeout):
            return await bench(args.events, args.per_subject, args.concurrency, args.rounds)

    result = asyncio.run(bounded())
    result["all_delivered"] = (result["relay_delivered"] == args.events
                               and result["receiver_count"] == result["expected_requests"])
    if args.store == "postgres":
        spec = importlib.util.spec_from_file_location("relay_pg", BENCH / "relay_pg.py")
        assert spec is not None and spec.loader is not None
        relay_pg = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(relay_pg)

        async def bounded_pg() -> dict[str, Any]:
            async with asyncio.timeout(args.timeout * args.pg_rounds):
                pg: dict[str, Any] = await relay_pg.compare(sys.modules[__name__], args)
                return pg

        result["postgres"] = asyncio.run(bounded_pg())
        result["all_delivered"] = result["all_delivered"] and result["postgres"]["all_delivered"]
    if args.workers > 1:
        import relay_workers

        async def bounded_workers() -> dict[str, Any]:
            async with asyncio.timeout(args.timeout * args.rounds * 3):
                out: dict[str, Any] = await relay_workers.compare(sys.modules[__name__], args)
                return out

        result["workers"] = asyncio.run(bounded_workers())
        result["all_delivered"] = result["all_delivered"] and result["workers"]["all_delivered"]
    return result


if __name__ == "__main__":
    if sys.argv[1:] == ["--serve-receiver"]:
        serve_receiver()
        sys.exit(0)
    logging.basicConfig(level=logging.ERROR)  # relay's start-up warnings are not figures
    figures = main()
    for key, value in figures.items():
        print(f"{key:>24}: {value}")
    print(json.dumps(figures))
    sys.exit(0 if figures["all_delivered"] else 1)
