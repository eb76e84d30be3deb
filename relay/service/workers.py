"""Worker processes (`[server] workers = N`): a supervisor and N `relay serve` workers on one port.

One process runs one event loop, and relay's loop, store thread and log thread share
one GIL; workers put every core to use. The supervisor prepares the store while no
worker runs (migrations; on SQLite it gives back claims a crashed run left), binds N
listening sockets in one SO_REUSEPORT group (the kernel spreads connections across them)
and starts one worker per socket. Workers share the database as instances do (write
lock, leases, claims), and their metrics through `PROMETHEUS_MULTIPROC_DIR`. With
`[server] ingest_writer` it first starts `relay ingest-writer` (its socket in the
supervisor's runtime directory) and waits for it to be ready; it is watched like a
worker, and stopped after them.

The supervisor relays the workers' sd_notify messages to systemd: READY=1 once every
worker is ready, WATCHDOG=1 only while every worker pings. SIGHUP and SIGTERM are
passed on; a worker that exits on its own stops the others, and the supervisor exits 1,
so systemd restarts the service whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from relay import systemd
from relay.config import Config
from relay.intake import wire as ingest_wire

log = logging.getLogger("relay.workers")

LISTEN_FD_ENV = "RELAY_LISTEN_FD"  # a worker serves this inherited listening socket
WORKER_ENV = "RELAY_WORKER"  # "i/N": which worker this process is
KILL_AFTER_S = 30.0  # beyond shutdown_timeout_s, before a worker that will not stop is killed


def worker_name(environ: Mapping[str, str] | None = None) -> str | None:
    """"i/N" in a worker process, else None."""
    return (os.environ if environ is None else environ).get(WORKER_ENV)


def inherited_socket(environ: Mapping[str, str] | None = None) -> socket.socket | None:
    """The listening socket the supervisor handed this worker, if any."""
    fd = (os.environ if environ is None else environ).get(LISTEN_FD_ENV)
    return socket.socket(fileno=int(fd)) if fd else None


def bind_sockets(host: str, port: int, count: int) -> list[socket.socket]:
    """`count` listening sockets on one address, in one SO_REUSEPORT group (port 0: one
    free port for all)."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(address)
            address = sock.getsockname()  # port 0 is resolved by the first bind
            sock.listen(1024)
            sock.setblocking(False)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


async def prepare_store(config: Config) -> None:
    """What one process does while no worker runs: migrate; on SQLite, release the claims
    of a run that did not stop cleanly (workers cannot tell them from a live worker's)."""
    from relay.outbox import queue as outbox_db
    from relay.store.database import Store

    store = Store(config.store, shared=True)
    version = await store.open(migrate=config.store.auto_migrate)
    try:
        log.info("store open: %s (schema %d)", store.description, version)
        if store.is_sqlite:
            now_ms = int(time.time() * 1000)
            orphaned = await store.write(lambda: outbox_db.release_orphaned_claims(now_ms))
            if orphaned:
                log.warning("released %d deliveries claimed by a process that did not stop "
                            "cleanly; they are sent again now", orphaned)
    finally:
        await store.close()


@dataclass(eq=False)
class _Worker:
    index: int
    listen: socket.socket | None  # None: the ingest writer, which serves no port
    notify: socket.socket  # this worker's NOTIFY_SOCKET, read by the supervisor
    proc: asyncio.subprocess.Process | None = None
    ready: bool = False
    last_ping: float = 0.0
    became_ready: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def name(self) -> str:
        return f"worker {self.index}" if self.listen is not None else "ingest writer"


class Supervisor:
    """Starts, watches and stops the workers; speaks sd_notify for them."""

    def __init__(self, config: Config, config_path: str | None,
                 environ: Mapping[str, str] | None = None) -> None:
        self.config = config
        self.config_path = config_path or config.source
        self.environ = dict(os.environ if environ is None else environ)
        self.workers: list[_Worker] = []
        self.ingest_socket: str | None = None  # [server] ingest_writer: the writer's socket
        self.serving = False  # READY=1 sent to systemd (cleared by a reload)
        self.stopping = False
        self._stop = asyncio.Event()
        self._exited: asyncio.Queue[_Worker] = asyncio.Queue()

    async def run(self) -> int:
        """Serve until SIGTERM/SIGINT or until a worker exits; the exit code for `relay serve`."""
        cfg = self.config.server
        await prepare_store(self.config)
        sockets = bind_sockets(cfg.host, cfg.port, cfg.workers)
        host, port = sockets[0].getsockname()[:2]
        log.info("listening on http://%s:%s (%d workers%s)", host, port, cfg.workers,
                 ", webhooks stored by an ingest writer" if cfg.ingest_writer else "")
        runtime_dir = self.environ.get("RUNTIME_DIRECTORY", "").split(":")[0] or None
        tmp = Path(tempfile.mkdtemp(prefix="relay-workers-", dir=runtime_dir))
        loop = asyncio.get_running_loop()
        tasks: list[asyncio.Task[None]] = []
        try:
            (tmp / "metrics").mkdir()
            # The ingest writer first (index -1): the workers send to it.
            children = ([(-1, None)] if cfg.ingest_writer else []) + list(enumerate(sockets))
            for index, sock in children:
                notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                notify.bind(str(tmp / f"notify-{index}"))
                notify.setblocking(False)
                worker = _Worker(index, sock, notify)
                self.workers.append(worker)
                loop.add_reader(notify.fileno(), self._on_notify, worker)
            self.ingest_socket = str(tmp / "ingest.sock") if cfg.ingest_writer else None
            for worker in self.workers:
                worker.proc = await self._spawn(worker, tmp)
                if worker.listen is not None:
                    worker.listen.close()  # the worker holds it now; it goes with the worker
                tasks.append(loop.create_task(self._watch(worker)))
                if worker.listen is None and not await self._started(worker):
                    return await self._wait()  # it exited before it was ready
            self._install_signals(loop)
            interval = systemd.watchdog_interval_s(self.environ)
            if interval is not None:
                tasks.append(loop.create_task(self._watchdog(interval)))
            return await self._wait()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                with contextlib.suppress(Exception):
                    loop.remove_signal_handler(sig)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._stop_all()
            for worker in self.workers:
                loop.remove_reader(worker.notify.fileno())
                worker.notify.close()
                if worker.listen is not None:
                    worker.listen.close()
            shutil.rmtree(tmp, ignore_errors=True)

    async def _spawn(self, worker: _Worker, tmp: Path) -> asyncio.subprocess.Process:
        env = {k: v for k, v in self.environ.items()
               if k not in ("NOTIFY_SOCKET", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID")}
        env.update({"NOTIFY_SOCKET": str(worker.notify.getsockname()),
                    "PROMETHEUS_MULTIPROC_DIR": str(tmp / "metrics")})
        if self.ingest_socket is not None:
            env[ingest_wire.SOCKET_ENV] = self.ingest_socket
        fds: tuple[int, ...] = ()
        if worker.listen is None:
            command = "ingest-writer"
        else:
            command, fds = "serve", (worker.listen.fileno(),)
            env.update({LISTEN_FD_ENV: str(worker.listen.fileno()),
                        WORKER_ENV: f"{worker.index}/{self.config.server.workers}"})
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "relay", command, "--config", self.config_path,
            env=env, pass_fds=fds)
        worker.last_ping = time.monotonic()  # its first ping is due an interval from now
        log.info("%s started (pid %d)", worker.name, proc.pid)
        return proc

    async def _started(self, worker: _Worker) -> bool:
        """Wait for READY=1 from `worker`; False if it exited first."""
        assert worker.proc is not None
        ready = asyncio.ensure_future(worker.became_ready.wait())
        exited = asyncio.ensure_future(worker.proc.wait())
        await asyncio.wait((ready, exited), return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        exited.cancel()
        return worker.became_ready.is_set()

    async def _watch(self, worker: _Worker) -> None:
        assert worker.proc is not None
        await worker.proc.wait()
        await self._exited.put(worker)

    async def _wait(self) -> int:
        stop = asyncio.ensure_future(self._stop.wait())
        exited = asyncio.ensure_future(self._exited.get())
        try:
            await asyncio.wait((stop, exited), return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if not exited.done():
            exited.cancel()
            return await self._stop_all()
        worker = exited.result()
        assert worker.proc is not None
        log.error("%s (pid %d) exited with code %s; stopping the other workers",
                  worker.name, worker.proc.pid, worker.proc.returncode)
        await self._stop_all()
        return 1

    async def _stop_all(self) -> int:
        """Stop every live worker; 0 if all of them exited cleanly."""
        if not self.stopping:
            self.stopping = True
            systemd.notify("STOPPING=1", self.environ)
        # The web workers first: the ingest writer stores what they still send it.
        front = await self._terminate([w.proc for w in self.workers
                                  if w.proc is not None and w.listen is not None])
        writer = await self._terminate([w.proc for w in self.workers
                                   if w.proc is not None and w.listen is None])
        return front or writer

    async def _terminate(self, procs: list[asyncio.subprocess.Process]) -> int:
        """SIGTERM `procs`; wait for them (kill the ones that will not stop)."""
        for proc in procs:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        grace = self.config.server.shutdown_timeout_s + KILL_AFTER_S
        try:
            async with asyncio.timeout(grace):
                await asyncio.gather(*(p.wait() for p in procs))
        except TimeoutError:
            for proc in procs:
                if proc.returncode is None:
                    log.error("worker pid %d did not stop within %.0fs; killing it",
                              proc.pid, grace)
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
            await asyncio.gather(*(p.wait() for p in procs))
        return 0 if all(p.returncode == 0 for p in procs) else 1

    def _install_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.add_signal_handler(signal.SIGTERM, self._stop.set)
        loop.add_signal_handler(signal.SIGINT, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._reload)

    def _reload(self) -> None:
        """Every worker re-reads the configuration; READY=1 again once all of them did."""
        systemd.notify("RELOADING=1", self.environ)
        self.serving = False
        log.info("reload: passing SIGHUP to %d workers", len(self.workers))
        for worker in self.workers:
            worker.ready = False
            if worker.proc is not None and worker.proc.returncode is None:
                worker.proc.send_signal(signal.SIGHUP)

    def _on_notify(self, worker: _Worker) -> None:
        try:
            data = worker.notify.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        for line in data.decode("utf-8", "replace").splitlines():
            key, _, value = line.partition("=")
            if key == "READY" and value == "1":
                worker.ready = True
                worker.became_ready.set()
            elif key == "RELOADING":
                worker.ready = False
            elif key == "WATCHDOG" and value == "1":
                worker.last_ping = time.monotonic()
            elif key == "STATUS" and not value.startswith("serving"):
                systemd.notify(f"STATUS={worker.name}: {value}", self.environ)
        all_ready = all(w.ready for w in self.workers)
        if all_ready and not self.serving and not self.stopping:
            self.serving = True
            served = self.config.server.workers
            writer = ", an ingest writer" if self.config.server.ingest_writer else ""
            systemd.notify(f"READY=1\nSTATUS=serving ({served} worker"
                           f"{'s' if served != 1 else ''}{writer})", self.environ)
        elif not all_ready:
            self.serving = False

    async def _watchdog(self, interval: float) -> None:
        """WATCHDOG=1 while every worker pinged within systemd's WatchdogSec."""
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            late = [w.name for w in self.workers if now - w.last_ping > 2 * interval]
            if not late:
                systemd.notify("WATCHDOG=1", self.environ)
            else:
                log.error("watchdog: %s stopped pinging; not pinging systemd",
                          ", ".join(late))


async def supervise(config: Config, config_path: str | None) -> int:
    return await Supervisor(config, config_path).run()
