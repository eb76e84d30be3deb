"""Design experiment: relay's webhook writes in a writer process of their own.

    /tmp/v/bin/python bench/ingest_split.py [--fronts 2] [--duration 10]

One relay process shares one GIL between its event loop and its database thread;
bench/ingest.py shows the front alone (store bypassed) takes about as long per delivery
as the whole target allows. This measures the split that would lift it: `--fronts`
relay processes (real `relay serve` code, one SO_REUSEPORT port) authenticate, read and
normalize each delivery, then hand it over a Unix socket to one writer process that
runs relay's own write unit (`inbox.ingest_many`, group commit, durable SQLite) and
answers when it has committed. Same deliveries, same wrk load as bench/ingest.py.
Nothing here is wired into relay; it prices an architecture before it is built.

Two writers: `--writer async` is relay's own Store (an event loop reading frames, the
database thread committing groups: they share a GIL, as in relay); `--writer sync` is
one thread with no event loop: wait for frames, store all that came in one
transaction, commit, answer, repeat.

Measured on the 2-core VM (2026-12-02, Intel Xeon host; one relay process did
2,700-3,260/s, p99 35-44 ms in the same hour), one front:
- async writer: 3,400-4,150/s, p99 24-34 ms, 330-430 µs of CPU per delivery over all
  processes, no process busier than 0.75 of a core (the stages take turns);
- sync writer: 4,400-4,630/s, p99 23-30 ms (one run 44), 313-345 µs per delivery;
  two fronts the same (4,520-4,620/s).
So a one-thread writer process buys 40-50 % and a p99 within 30 ms: the design to
build for issue #4, though on two cores shared with the load generator it stays short
of 5,000/s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import pickle
import shutil
import socket
import sqlite3
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
if sys.path[:1] != [str(ROOT)]:  # ahead of bench/: bench/relay.py must not shadow relay
    sys.path.insert(0, str(ROOT))
sys.path.append(str(BENCH_DIR))

import ingest  # noqa: E402
from procstat import cpu_s  # noqa: E402

_FRAME = struct.Struct("!I")


def _config(tmp: Path, log_level: str) -> Path:
    path = tmp / "split.toml"
    path.write_text(
        f'[server]\nport = 1\nworkers = 2\n[store]\npath = "{tmp / "split.sqlite3"}"\n'
        f'[scheduler]\nenabled = false\n[log]\nlevel = "{log_level}"\n'
        '[entitlements]\n"com.example.premium" = ["premium"]\n"premium_monthly" = ["premium"]\n'
        + ingest.HELD_DOWNSTREAM)
    return path


# ---- the wire: length-prefixed pickles, whatever arrived in one read taken at once ----------

class _Framed(asyncio.Protocol):
    """Splits the byte stream into frames; `frames(list)` gets every whole one of a read.
    `send()` queues a frame; the queue goes out in one write per loop iteration."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._out: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buf = self._buffer
        buf += data
        frames, at = [], 0
        while len(buf) - at >= _FRAME.size:
            (n,) = _FRAME.unpack_from(buf, at)
            if len(buf) - at - _FRAME.size < n:
                break
            frames.append(pickle.loads(buf[at + _FRAME.size:at + _FRAME.size + n]))
            at += _FRAME.size + n
        del buf[:at]
        if frames:
            self.frames(frames)

    def frames(self, frames: list[Any]) -> None:
        raise NotImplementedError

    def send(self, obj: Any) -> None:
        data = pickle.dumps(obj)
        if not self._out:
            asyncio.get_running_loop().call_soon(self._flush)
        self._out.append(_FRAME.pack(len(data)) + data)

    def _flush(self) -> None:
        out, self._out = self._out, []
        if self.transport is not None:
            self.transport.write(b"".join(out))


# ---- the writer process -------------------------------------------------------------------

async def _writer(sock_path: str, config_path: str) -> None:
    """Reads (id, inbound) frames; normalizes; stores each read's deliveries through
    `store.write_many` (group commit); answers (id, duplicate, stale, error) frames."""
    from relay.bodies import parse_json_object
    from relay.config import load_config
    from relay.inbox import Delivered, Inbound, ingest_many
    from relay.normalizer import normalize
    from relay.runtime import rules_from
    from relay.store import Store

    config = load_config(config_path)
    store = Store(config.store, shared=True)
    await store.open(migrate=True)
    rules = rules_from(config)
    tasks: set[asyncio.Future[Any]] = set()

    class Writer(_Framed):
        def frames(self, frames: list[Any]) -> None:
            for rid, fields in frames:
                inbound = Inbound(*fields)
                norm = normalize(parse_json_object(inbound.body), inbound.received_ms)
                task = asyncio.ensure_future(store.write_many(
                    ingest_many, Delivered(inbound, norm, rules, inbound.received_ms)))
                task.add_done_callback(lambda t, rid=rid: self._answer(rid, t))
                tasks.add(task)

        def _answer(self, rid: int, task: asyncio.Future[Any]) -> None:
            tasks.discard(task)
            exc = task.exception()
            if exc is not None:
                self.send((rid, False, False, repr(exc)))
            else:
                out = task.result()
                self.send((rid, out.duplicate, out.stale, None))

    server = await asyncio.get_running_loop().create_unix_server(Writer, sock_path)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


def _writer_sync(sock_path: str, config_path: str) -> None:
    """The same service with no event loop and no second thread: wait for frames, store
    everything that arrived in one transaction (flock + BEGIN IMMEDIATE, as relay's
    shared store does), commit, answer; repeat. One thread, so no GIL hand-offs."""
    import fcntl
    import selectors

    from relay import migrations
    from relay.bodies import parse_json_object
    from relay.config import load_config
    from relay.inbox import Delivered, Inbound, ingest_many
    from relay.models import database
    from relay.normalizer import normalize
    from relay.runtime import rules_from
    from relay.store import make_database

    config = load_config(config_path)
    db = make_database(config.store)
    database.initialize(db)
    db.connect()
    migrations.migrate(db)
    lock = open(f"{db.database}.lock", "a+b")  # noqa: SIM115 (lives as long as the process)
    rules = rules_from(config)
    server = socket.socket(socket.AF_UNIX)
    server.bind(sock_path)
    server.listen(16)
    sel = selectors.DefaultSelector()
    sel.register(server, selectors.EVENT_READ)
    buffers: dict[socket.socket, bytearray] = {}
    print("ready", flush=True)
    while True:
        batch: list[tuple[socket.socket, int, Delivered]] = []
        for key, _ in sel.select():
            conn = key.fileobj
            assert isinstance(conn, socket.socket)
            if conn is server:
                client, _ = server.accept()
                buffers[client] = bytearray()
                sel.register(client, selectors.EVENT_READ)
                continue
            data = conn.recv(1 << 20)
            if not data:
                sel.unregister(conn)
                del buffers[conn]
                continue
            buf = buffers[conn]
            buf += data
            at = 0
            while len(buf) - at >= _FRAME.size:
                (n,) = _FRAME.unpack_from(buf, at)
                if len(buf) - at - _FRAME.size < n:
                    break
                rid, fields = pickle.loads(buf[at + _FRAME.size:at + _FRAME.size + n])
                at += _FRAME.size + n
                inbound = Inbound(*fields)
                norm = normalize(parse_json_object(inbound.body), inbound.received_ms)
                batch.append((conn, rid, Delivered(inbound, norm, rules, inbound.received_ms)))
            del buf[:at]
        if not batch:
            continue
        replies: dict[socket.socket, list[bytes]] = {}
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                with db.atomic("IMMEDIATE"):
                    outs = ingest_many([d for _, _, d in batch])
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
            answers = [(rid, o.duplicate, o.stale, None)
                       for (_, rid, _), o in zip(batch, outs, strict=True)]
        except Exception as exc:  # the fronts answer 503
            answers = [(rid, False, False, repr(exc)) for _, rid, _ in batch]
        for (conn, _, _), answer in zip(batch, answers, strict=True):
            data = pickle.dumps(answer)
            replies.setdefault(conn, []).append(_FRAME.pack(len(data)) + data)
        for conn, parts in replies.items():
            conn.sendall(b"".join(parts))


# ---- a front process -----------------------------------------------------------------------

def _front(sock_path: str, config_path: str, port: int, index: int, fronts: int) -> int:
    from relay import inbox, store
    from relay.cli import main
    from relay.errors import StoreUnavailableError

    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(1024)
    listener.set_inheritable(True)
    os.environ.update(RELAY_LISTEN_FD=str(listener.fileno()), RELAY_WORKER=f"{index}/{fronts}")
    pending: dict[int, asyncio.Future[Any]] = {}
    state: dict[str, Any] = {"next": 0}
    original = store.Store.write_many

    class Front(_Framed):
        def frames(self, frames: list[Any]) -> None:
            for rid, duplicate, stale, error in frames:
                future = pending.pop(rid)
                if error is not None:
                    future.set_exception(StoreUnavailableError(error))
                else:
                    future.set_result(inbox.Outcome(duplicate, stale=stale))

    async def forward(self: store.Store, batch: Any, item: Any) -> Any:
        if batch is not inbox.ingest_many:
            return await original(self, batch, item)
        if "link" not in state:  # one connection, however many calls race to make it
            state["link"] = asyncio.ensure_future(
                asyncio.get_running_loop().create_unix_connection(Front, sock_path))
        link = (await state["link"])[1]
        rid = state["next"] = state["next"] + 1
        future = asyncio.get_running_loop().create_future()
        pending[rid] = future
        i = item.inbound  # plain fields: the writer normalizes again (cheaper than pickling it)
        link.send((rid, (i.event_id, i.event_type, i.received_ms, i.signature_t,
                                  i.headers, i.body)))
        return await future

    store.Store.write_many = forward  # type: ignore[method-assign]
    return main(["serve", "--config", config_path])


# ---- the run ---------------------------------------------------------------------------

def _one_process(args: argparse.Namespace, tmp: Path, script: Path,
                 load: Any) -> dict[str, Any]:
    """The baseline: one `relay serve` (bench/ingest.py's) on the same deliveries."""
    port = ingest.free_port()
    proc = ingest.start_relay(port, tmp, args.log_level)
    try:
        ingest.wait_ready(port, proc)
        url = f"http://127.0.0.1:{port}{ingest.WEBHOOK_PATH}"
        load(url, script, tmp / "warm", args.threads, args.connections, args.warmup)
        return ingest.figures(load(url, script, tmp / "relay", args.threads,
                                   args.connections, args.duration))
    finally:
        ingest.stop(proc)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fronts", type=int, default=1)
    parser.add_argument("--writer", choices=("async", "sync"), default="async",
                        help="async: relay's Store (event loop + database thread); sync: "
                             "one thread, no event loop")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--loadgen", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument("--rate", type=int, default=12_000,
                        help="deliveries/s to prepare unique requests for")
    parser.add_argument("--role", help=argparse.SUPPRESS)
    parser.add_argument("--args", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role == "writer":
        asyncio.run(_writer(*args.args))
        return {}
    if args.role == "writer-sync":
        _writer_sync(*args.args)
        return {}
    if args.role == "front":
        sock_path, config_path, port, index = args.args
        raise SystemExit(_front(sock_path, config_path, int(port), int(index), args.fronts))

    tmp = Path(tempfile.mkdtemp(prefix="relay-split-"))
    procs: list[subprocess.Popen[bytes]] = []
    stack = contextlib.ExitStack()
    try:
        script = tmp / "deliver.lua"
        script.write_text(ingest.LUA)
        use_wrk = args.loadgen == "wrk" or (args.loadgen == "auto" and shutil.which("wrk"))
        load = ingest.run_wrk if use_wrk else ingest.run_python_load
        ingest.make_request_files(tmp / "warm", int(args.rate * args.warmup), args.threads,
                                  offset=10_000_000)
        ingest.make_request_files(tmp / "relay", int(args.rate * args.duration), args.threads)
        baseline = _one_process(args, tmp, script, load)
        config = _config(tmp, args.log_level)
        env = {**os.environ, "RELAY_CREDENTIAL_ATTESTO_WEBHOOK_SECRET": ingest.SECRET,
               "PROMETHEUS_MULTIPROC_DIR": str(tmp / "metrics")}
        (tmp / "metrics").mkdir()
        sock_path = str(tmp / "writer.sock")
        me = [sys.executable, str(Path(__file__).resolve()), "--fronts", str(args.fronts)]
        log = stack.enter_context(open(tmp / "split.log", "wb"))
        role = "writer" if args.writer == "async" else "writer-sync"
        writer = subprocess.Popen([*me, "--role", role, "--args", sock_path, str(config)],
                                  stdout=subprocess.PIPE, stderr=log, env=env, cwd=tmp)
        procs.append(writer)
        assert writer.stdout is not None
        ready = writer.stdout.readline().strip()
        writer.stdout.close()
        if ready != b"ready":
            raise RuntimeError((tmp / "split.log").read_text())
        port = ingest.free_port()
        for i in range(1, args.fronts + 1):
            procs.append(subprocess.Popen(
                [*me, "--role", "front", "--args", sock_path, str(config), str(port), str(i)],
                stdout=log, stderr=log, env=env, cwd=tmp))
        for proc in procs[1:]:
            ingest.wait_ready(port, proc)
        url = f"http://127.0.0.1:{port}{ingest.WEBHOOK_PATH}"
        warm = ingest.figures(load(url, script, tmp / "warm", args.threads, args.connections,
                                   args.warmup))
        each0 = [cpu_s(p.pid) for p in procs]
        started = time.perf_counter()
        result = ingest.figures(load(url, script, tmp / "relay", args.threads,
                                     args.connections, args.duration))
        wall = time.perf_counter() - started
        each = [cpu_s(p.pid) - c for p, c in zip(procs, each0, strict=True)]
        cpu = sum(each)
        result["cpu_us_per_delivery"] = cpu / max(result["accepted"], 1) * 1e6
        result["cpu_cores"] = cpu / wall
        result["writer_cores"] = each[0] / wall
        result["front_cores"] = [c / wall for c in each[1:]]
    finally:
        for proc in reversed(procs):
            ingest.stop(proc)
        stack.close()
    try:
        with sqlite3.connect(tmp / "split.sqlite3") as db:
            stored = db.execute("SELECT count(*) FROM inbox").fetchone()[0]
        answered = warm["accepted"] + result["accepted"]
        result["stored_ok"] = 0 <= stored - answered <= 2 * args.connections
        result["one_process"] = baseline
        print(f"split ingest: {args.fronts} fronts + 1 writer process, {args.connections} "
              f"connections, {args.duration:.0f} s, {'wrk' if use_wrk else 'aiohttp load'}, "
              f"{os.cpu_count()} CPUs, durable SQLite")
        for name, r in (("one relay process", baseline), (f"{args.writer} writer", result)):
            print(f"  {name:18} accepted/s {r['accepted_per_s']:>6,.0f}  p50 {r['p50_ms']:6.2f} "
                  f"ms  p99 {r['p99_ms']:6.2f} ms  non-2xx {r['non2xx']}  "
                  f"duplicates {r['duplicates']}")
        print(f"  split / one process: {result['accepted_per_s'] / baseline['accepted_per_s']:.2f}"
              f" x the rate, {result['p99_ms'] / baseline['p99_ms']:.2f} x the p99")
        print(f"  CPU {result['cpu_us_per_delivery']:.0f} µs per delivery, "
              f"{result['cpu_cores']:.2f} cores (writer {result['writer_cores']:.2f}, fronts "
              f"{', '.join(f'{c:.2f}' for c in result['front_cores'])}); every 2xx stored: "
              f"{result['stored_ok']} ({stored:,} rows)")
        return result
    finally:
        if os.environ.get("SPLIT_KEEP"):
            print("kept", tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
