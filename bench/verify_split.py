"""Where a verify's latency goes, relay against the durable floor, one request in flight.

    .venv/bin/python bench/verify_split.py [--blocks 6] [--requests 100]

The processes of bench/verify.py (the fake Attesto, relay with its bench config, the floor:
a bare aiohttp proxy with one durable insert), each server timing its own phases with
`time.perf_counter` (relay's through wrappers installed in its process before it starts,
the floor's inline), in blocks that alternate floor and relay. Per phase the median in ms:
- total: the client's round trip; outside: total minus the handler (HTTP both ways,
  the client, aiohttp's parsing and answer);
- handler: the outermost middleware's entry to its return (relay: every middleware);
- attesto: the call to the fake Attesto (relay: `AttestoClient.verify_apple`);
- write: submit to result on the loop; group: the store thread's transaction, statements
  and COMMIT (relay: `Store._commit_group`; the floor: BEGIN..COMMIT); statements: the
  write unit's function (relay: `apply_verifies`; the floor: its INSERT); hand-off =
  write - group (queue, thread wake-up, call_soon_threadsafe, loop wake-up);
- rest: handler - attesto - write (auth, limits, body, snapshot, answer, middlewares).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import itertools
import json
import multiprocessing
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if sys.path[:1] != [str(ROOT)]:  # ahead of bench/: bench/relay.py must not shadow relay
    sys.path.insert(0, str(ROOT))
sys.path.append(str(ROOT / "bench"))

import aiohttp  # noqa: E402
from aiohttp import web  # noqa: E402
from verify import API_KEY, BENCH_RATE, SERVICE_KEY, _free_port, _run_sim, _wait_up  # noqa: E402

Phases = defaultdict[str, list[float]]


def _split_route(app: web.Application, phases: Phases) -> None:
    async def split(request: web.Request) -> web.Response:
        out = {k: list(v) for k, v in phases.items()}
        phases.clear()
        return web.Response(text=json.dumps(out), content_type="application/json")

    app.router.add_get("/__split", split)


def _timed(phases: Phases, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    if asyncio.iscoroutinefunction(fn):
        async def timed_async(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return await fn(*args, **kwargs)
            finally:
                phases[name].append(time.perf_counter() - t0)
        return timed_async

    def timed(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            phases[name].append(time.perf_counter() - t0)
    return timed


def _time_sql(verifier: Any, totals: dict[str, list[float]]) -> None:
    """Per SQL statement run by `apply_verifies`: its `execute_sql` time, summed per
    verify, keyed on the statement's first words."""
    import peewee

    apply, execute_sql = verifier.apply_verifies, peewee.Database.execute_sql
    current: dict[str, float] | None = None

    def timed_sql(self: Any, sql: str, params: Any = None, *args: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return execute_sql(self, sql, params, *args)
        finally:
            if current is not None:
                key = " ".join(sql.split()[:6])[:70]
                current[key] = current.get(key, 0.0) + time.perf_counter() - t0

    def timed_apply(*args: Any) -> Any:
        nonlocal current
        current = {}
        try:
            return apply(*args)
        finally:
            for key, spent in current.items():
                totals.setdefault(key, []).append(spent)
            current = None

    peewee.Database.execute_sql = timed_sql  # type: ignore[method-assign]
    verifier.apply_verifies = timed_apply


def _run_relay(port: int, attesto_url: str, db_dir: str, detail: bool, sql_out: str,
               experiment: str) -> None:
    from relay.attesto.client import AttestoClient
    from relay.config import Credentials, Secret, load_config
    from relay.log import AccessLogger, configure_logging
    from relay.store.database import Store
    from relay.verify import verifier
    from relay.web.app import create_app

    phases: Phases = defaultdict(list)
    sql: dict[str, list[float]] | None = {} if sql_out else None
    AttestoClient.verify_apple = _timed(phases, "attesto", AttestoClient.verify_apple)  # type: ignore[method-assign]
    Store.write_many = _timed(phases, "write", Store.write_many)  # type: ignore[method-assign]
    commit_group = Store._commit_group

    def group(self: Store, writes: list[Any]) -> bool:  # a verify's groups only
        t0, n = time.perf_counter(), len(phases["statements"])
        try:
            return commit_group(self, writes)
        finally:
            if len(phases["statements"]) > n:
                phases["group"].append(time.perf_counter() - t0)

    Store._commit_group = group  # type: ignore[method-assign]
    verifier.apply_verifies = _timed(phases, "statements", verifier.apply_verifies)  # type: ignore[assignment]
    if sql is not None:
        _time_sql(verifier, sql)
    if detail:  # the handler's own steps (each wrapper adds ~1 µs)
        from relay.web.routes import verify as route
        route.handle_verify_apple = _timed(phases, "d:route", route.handle_verify_apple)  # type: ignore[assignment]
        route.check_service_key = _timed(phases, "d:auth", route.check_service_key)  # type: ignore[assignment]
        route.read_json_object = _timed(phases, "d:body", route.read_json_object)  # type: ignore[assignment]
        verifier.Verifier.verify = _timed(phases, "d:verify", verifier.Verifier.verify)  # type: ignore[method-assign]
        verifier._snapshot = _timed(phases, "d:snapshot", verifier._snapshot)
        route.outcome_json = _timed(phases, "d:outcome_json", route.outcome_json)
        web.json_response = _timed(phases, "d:json_response", web.json_response)  # type: ignore[assignment]

    if experiment == "no-listeners":  # callers settled, commit listeners never called
        from relay.store import database, jobs

        def settle_only(js: Any, listeners: Any = ()) -> None:
            jobs.settle_all(js)
        database.settle_all = settle_only  # type: ignore[assignment]
    elif experiment == "cycle-yield":  # the outbox worker lets the settled callers go first
        from relay.outbox.worker import Outbox
        cycle = Outbox._cycle

        async def yielding_cycle(self: Outbox) -> bool:
            await asyncio.sleep(0)
            return await cycle(self)
        Outbox._cycle = yielding_cycle  # type: ignore[method-assign]
    base = load_config(None, environ={})
    config = dataclasses.replace(
        base,
        server=dataclasses.replace(base.server, port=port),
        store=dataclasses.replace(base.store, path=str(Path(db_dir) / "relay.sqlite3")),
        attesto=dataclasses.replace(base.attesto, base_url=attesto_url),
        scheduler=dataclasses.replace(base.scheduler, enabled=False),
        limits=dataclasses.replace(base.limits, service_key_rate_per_s=BENCH_RATE,
                                   service_key_burst=BENCH_RATE),
        entitlements={"premium.monthly": ("premium",)},
        credentials=Credentials(
            attesto_api_key=Secret(API_KEY),
            api_keys=(("bench", hashlib.sha256(SERVICE_KEY.encode()).hexdigest()),)))
    configure_logging("error")

    @web.middleware
    async def outer(request: web.Request, handler: Any) -> web.StreamResponse:
        t0 = time.perf_counter()
        try:
            return await handler(request)
        finally:
            if not request.path.startswith("/__"):
                phases["handler"].append(time.perf_counter() - t0)

    async def serve() -> None:
        app = create_app(config, store_pragmas={"synchronous": "full"})
        app.middlewares.insert(0, outer)
        _split_route(app, phases)
        if sql is not None:
            async def dump_sql(request: web.Request) -> web.Response:
                Path(sql_out).write_text(json.dumps(sql))
                return web.Response(text="ok")

            app.router.add_get("/__sql", dump_sql)
        runner = web.AppRunner(app, access_log_class=AccessLogger)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        await asyncio.Event().wait()

    asyncio.run(serve())


def _run_floor(port: int, attesto_url: str, db_dir: str) -> None:
    """bench/verify.py's floor, timing its phases."""
    import concurrent.futures
    import sqlite3

    phases: Phases = defaultdict(list)
    db = sqlite3.connect(str(Path(db_dir) / "floor.sqlite3"), isolation_level=None,
                         check_same_thread=False)
    db.execute("PRAGMA journal_mode=wal")
    db.execute("PRAGMA synchronous=full")
    db.execute("CREATE TABLE row (id INTEGER PRIMARY KEY, body TEXT)")
    writer = concurrent.futures.ThreadPoolExecutor(1)

    def commit(body: bytes) -> None:
        t0 = time.perf_counter()
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO row (body) VALUES (?)", (body.decode(),))
        t1 = time.perf_counter()
        db.execute("COMMIT")
        phases["statements"].append(t1 - t0)
        phases["group"].append(time.perf_counter() - t0)

    async def serve() -> None:
        session = aiohttp.ClientSession()

        async def proxy(request: web.Request) -> web.Response:
            t0 = time.perf_counter()
            async with session.post(f"{attesto_url}/v1/apple/verify", data=await request.read(),
                                    headers={"Authorization": f"Bearer {API_KEY}",
                                             "Content-Type": "application/json"}) as resp:
                body = await resp.read()
            t1 = time.perf_counter()
            await asyncio.get_running_loop().run_in_executor(writer, commit, body)
            t2 = time.perf_counter()
            phases["attesto"].append(t1 - t0)
            phases["write"].append(t2 - t1)
            response = web.Response(body=body, content_type="application/json")
            phases["handler"].append(time.perf_counter() - t0)
            return response

        app = web.Application()
        app.router.add_post("/v1/apple/verify", proxy)
        _split_route(app, phases)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        await asyncio.Event().wait()

    asyncio.run(serve())


async def _measure(sim_url: str, relay_url: str, floor_url: str,
                   args: argparse.Namespace) -> dict[str, dict[str, list[float]]]:
    ids = itertools.count()
    sides = {
        "floor": (floor_url, f"{floor_url}/v1/apple/verify", {},
                  lambda i: {"transactionId": f"t{i}"}),
        "relay": (relay_url, f"{relay_url}/v1/verify/apple",
                  {"Authorization": f"Bearer {SERVICE_KEY}"},
                  lambda i: {"user_id": f"user-{i}", "transaction_id": f"t{i}"})}
    out: dict[str, dict[str, list[float]]] = {name: defaultdict(list) for name in sides}
    async with aiohttp.ClientSession() as session:
        await _wait_up(session, f"{sim_url}/health")
        await _wait_up(session, f"{relay_url}/healthz")
        for block in range(args.blocks + 1):  # block 0 warms up
            for name, (base, url, headers, body) in (
                    sides.items() if block % 2 else reversed(sides.items())):
                totals = []
                for _ in range(args.requests):
                    t0 = time.perf_counter()
                    async with session.post(url, json=body(next(ids)), headers=headers) as r:
                        await r.read()
                        assert r.status == 200, r.status
                    totals.append(time.perf_counter() - t0)
                async with session.get(f"{base}/__split") as r:
                    phases = await r.json()
                if block == 0:
                    continue
                phases["total"] = totals
                for k, v in _derived(phases).items():
                    out[name][k].append(statistics.median(v) * 1000)
    return out


def _derived(ph: dict[str, list[float]]) -> dict[str, list[float]]:
    """Per request (one in flight: the i-th entry of every phase is the i-th request's)."""
    n = len(ph["total"])
    z = range(n)
    assert all(len(v) == n for v in ph.values()), {k: len(v) for k, v in ph.items()}
    if "d:route" in ph:
        ph = {**ph, "d:middlewares": [ph["handler"][i] - ph["d:route"][i] for i in z],
              "d:verify - attesto - write": [
                  ph["d:verify"][i] - ph["attesto"][i] - ph["write"][i] for i in z]}
    z = range(n)
    return {**ph,
            "outside": [ph["total"][i] - ph["handler"][i] for i in z],
            "hand-off": [ph["write"][i] - ph["group"][i] for i in z],
            "COMMIT etc": [ph["group"][i] - ph["statements"][i] for i in z],
            "rest": [ph["handler"][i] - ph["attesto"][i] - ph["write"][i] for i in z]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=6)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--experiment", choices=("none", "no-listeners", "cycle-yield"),
                        default="none", help="relay patched in its process: no commit "
                        "listeners, or an outbox worker that yields once before a cycle")
    parser.add_argument("--sql", action="store_true",
                        help="also time each SQL statement of relay's verify write")
    parser.add_argument("--detail", action="store_true",
                        help="also time relay's handler steps (d: rows, relay only)")
    args = parser.parse_args(argv)
    ctx = multiprocessing.get_context("spawn")
    sim_port, relay_port, floor_port = _free_port(), _free_port(), _free_port()
    sim_url = f"http://127.0.0.1:{sim_port}"
    with tempfile.TemporaryDirectory(prefix="relay-vsplit-") as db_dir:
        procs = [ctx.Process(target=_run_sim, args=(sim_port,), daemon=True),
                 ctx.Process(target=_run_relay, args=(relay_port, sim_url, db_dir, args.detail,
                                   str(Path(db_dir) / "sql.json") if args.sql else "",
                                   args.experiment),
                             daemon=True),
                 ctx.Process(target=_run_floor, args=(floor_port, sim_url, db_dir),
                             daemon=True)]
        for p in procs:
            p.start()
        try:
            res = asyncio.run(_measure(sim_url, f"http://127.0.0.1:{relay_port}",
                                       f"http://127.0.0.1:{floor_port}", args))
            if args.sql:
                asyncio.run(_get(f"http://127.0.0.1:{relay_port}/__sql"))
                sql = json.loads((Path(db_dir) / "sql.json").read_text())
        finally:
            for p in procs:
                p.terminate()
                p.join(10)
    rows = res
    print(f"verify split: p50 per block of {args.requests}, {args.blocks} blocks, ms "
          "(median, range)")
    order = ("total", "outside", "handler", "attesto", "write", "group", "statements",
             "COMMIT etc", "hand-off", "rest")
    print(f"  {'phase':12} {'relay':>20} {'floor':>20} {'relay - floor':>14}")
    order += tuple(sorted(k for k in rows["relay"] if k.startswith("d:")))
    for k in order:
        r, f = rows["relay"][k], rows["floor"].get(k, [0.0])
        print(f"  {k:12} {statistics.median(r):7.3f} ({min(r):.2f}-{max(r):.2f})"
              f" {statistics.median(f):7.3f} ({min(f):.2f}-{max(f):.2f})"
              f" {statistics.median(r) - statistics.median(f):+14.3f}")
    ratio = [a / b for a, b in zip(rows["relay"]["total"], rows["floor"]["total"], strict=True)]
    print(f"  relay/floor total p50: x{statistics.median(ratio):.2f} "
          f"({min(ratio):.2f}-{max(ratio):.2f})")
    if args.sql:
        print("relay's verify write, per statement (execute_sql, ms per verify: median, count)")
        for key, spent in sorted(sql.items(), key=lambda kv: -sum(kv[1])):
            print(f"  {statistics.median(spent) * 1000:6.3f}  x{len(spent):5}  {key}")
    print(json.dumps(rows))


async def _get(url: str) -> None:
    async with aiohttp.ClientSession() as session, session.get(url) as r:
        await r.read()


if __name__ == "__main__":
    main()
