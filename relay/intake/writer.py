"""The ingest writer (`[server] ingest_writer = true`): the webhook write unit, in a process.

The web workers check each Attesto delivery (signature, JSON, eventId) and hand it over a
Unix socket (`ingest_wire` frames); this process normalizes it (a malformed envelope is
answered REJECTED: 400), runs `inbox.ingest_many` on everything that arrived since its
last commit, in one durable transaction, then answers each delivery. It is one thread
with no event loop: in a relay process the event loop and the database thread share one
GIL and wait for each other; here nothing does. Started and watched by the workers
supervisor like a worker: sd_notify READY/WATCHDOG, SIGHUP re-reads the configuration
(its rules), SIGTERM stops it after the transaction in progress.
"""

from __future__ import annotations

import json
import logging
import os
import selectors
import signal
import socket
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from peewee import Database

from relay import systemd
from relay.config import Config, ConfigError, load_config
from relay.core.errors import BadRequestError
from relay.core.json_object import parse_json_object
from relay.core.normalizer import Normalized, normalize
from relay.core.rules import Rules
from relay.intake import wire
from relay.intake.inbox import Delivered, Inbound, Outcome, ingest_many
from relay.outbox import queue as outbox_db
from relay.runtime import rules_from
from relay.store import migrations
from relay.store.connection import UNAVAILABLE, exclusive_write, make_database
from relay.store.models import database

log = logging.getLogger("relay.ingest_writer")

SEND_TIMEOUT_S = 10.0  # a web worker that does not read its answers for this long is dropped
PARENT_CHECK_S = 1.0  # how often an idle writer checks that its supervisor still runs

_Item = tuple[socket.socket, int, Inbound, Normalized]


class IngestWriter:
    """Accept web workers, gather their deliveries, commit them in groups, answer."""

    def __init__(self, config: Config, socket_path: str,
                 environ: Mapping[str, str] | None = None) -> None:
        self.config = config
        self._paused: frozenset[str] = frozenset()
        self.rules: Rules = rules_from(config)
        self.socket_path = socket_path
        self.environ = dict(os.environ if environ is None else environ)
        self.db: Database = make_database(config.store, self.environ)
        self._lock: Any = None
        self._selector = selectors.DefaultSelector()
        self._frames: dict[socket.socket, wire.Frames] = {}
        self.stopping = False
        self.reload_pending = False
        self.groups_committed = 0

    def run(self) -> int:
        database.initialize(self.db)
        self.db.connect()
        migrations.check(self.db)  # the supervisor migrated before starting anyone
        self._lock = open(f"{self.db.database}.lock", "a+b")  # noqa: SIM115 (closed below)
        Path(self.socket_path).unlink(missing_ok=True)
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(self.socket_path)
        server.listen(64)
        self._selector.register(server, selectors.EVENT_READ)
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        self._selector.register(wake_r, selectors.EVENT_READ)
        previous = signal.set_wakeup_fd(wake_w.fileno())
        handlers = {signal.SIGTERM: self._on_stop, signal.SIGINT: self._on_stop,
                    signal.SIGHUP: self._on_hup}
        old = {sig: signal.signal(sig, h) for sig, h in handlers.items()}
        interval = systemd.watchdog_interval_s(self.environ)
        parent = os.getppid()
        log.info("ingest writer listening on %s", self.socket_path)
        systemd.notify("READY=1\nSTATUS=ingest writer", self.environ)
        pinged = time.monotonic()
        try:
            while not self.stopping:
                timeout = PARENT_CHECK_S if interval is None else min(
                    PARENT_CHECK_S, max(0.0, pinged + interval - time.monotonic()))
                items = self._gather(server, wake_r, timeout)
                if items:
                    self._answer(items, self._store([(i, n) for _, _, i, n in items]))
                if self.reload_pending:
                    self._reload()
                if interval is not None and time.monotonic() - pinged >= interval:
                    systemd.notify("WATCHDOG=1", self.environ)
                    pinged = time.monotonic()
                if os.getppid() != parent:
                    log.error("ingest writer: the supervisor is gone; stopping")
                    break
        finally:
            signal.set_wakeup_fd(previous)
            for sig, handler in old.items():
                signal.signal(sig, handler)
            for conn in list(self._frames):
                self._drop(conn)
            server.close()
            wake_r.close()
            wake_w.close()
            Path(self.socket_path).unlink(missing_ok=True)
            self._lock.close()
            self.db.close()
            log.info("ingest writer stopped after %d commits", self.groups_committed)
        return 0

    def _on_stop(self, signum: int, frame: Any) -> None:
        self.stopping = True

    def _on_hup(self, signum: int, frame: Any) -> None:
        self.reload_pending = True

    def _reload(self) -> None:
        self.reload_pending = False
        systemd.notify("RELOADING=1", self.environ)
        try:
            config = load_config(self.config.source)
        except ConfigError as exc:
            log.error("reload failed, keeping the running configuration: %s",
                      "; ".join(exc.problems))
        else:
            self.config, self.rules = config, rules_from(config, self._paused)
            log.info("ingest writer: configuration reloaded from %s", config.source)
        systemd.notify("READY=1", self.environ)

    # ---- reading ---------------------------------------------------------------------

    def _gather(self, server: socket.socket, wake: socket.socket,
                timeout: float | None) -> list[_Item]:
        """Wait for frames; return every delivery that arrived (normalized again: cheaper
        than shipping the normalized form)."""
        items: list[_Item] = []
        for key, _ in self._selector.select(timeout):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            if sock is wake:
                while True:
                    try:
                        if not wake.recv(4096):
                            break
                    except BlockingIOError:
                        break
            elif sock is server:
                conn, _ = server.accept()
                conn.settimeout(SEND_TIMEOUT_S)
                self._frames[conn] = wire.Frames()
                self._selector.register(conn, selectors.EVENT_READ)
            else:
                items.extend(self._read(sock))
        return items

    def _read(self, conn: socket.socket) -> list[_Item]:
        try:
            data = conn.recv(1 << 20)
        except OSError:
            data = b""
        if not data:
            self._drop(conn)
            return []
        items: list[_Item] = []
        try:
            for frame in self._frames[conn].feed(data):
                rid, inbound = wire.read_request(frame)
                try:
                    norm = normalize(parse_json_object(inbound.body), inbound.received_ms)
                except BadRequestError as exc:  # the web worker answers 400
                    self._send(conn, [wire.answer(wire.Answer(rid, wire.REJECTED, json.dumps(
                        {"code": exc.code, "message": exc.message, "details": exc.details})))])
                    continue
                except Exception as exc:  # a bug, not bad input: 503, Attesto retries
                    log.error("ingest writer cannot read event_id=%s: %s", inbound.event_id,
                              exc)
                    self._send(conn, [wire.answer(wire.Answer(rid, wire.FAILED, str(exc)))])
                    continue
                items.append((conn, rid, inbound, norm))
        except (wire.WireError, UnicodeDecodeError) as exc:
            log.error("ingest writer: dropping a connection that sent a bad frame: %s", exc)
            self._drop(conn)
        return items

    def _drop(self, conn: socket.socket) -> None:
        if self._frames.pop(conn, None) is not None:
            self._selector.unregister(conn)
        conn.close()

    # ---- storing ---------------------------------------------------------------------

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        with exclusive_write(self._lock), self.db.atomic("IMMEDIATE"):
            yield

    def _delivered(self, items: list[tuple[Inbound, Normalized]]) -> list[Delivered]:
        """The items with the rules of now: endpoints paused by any process hold their
        new rows (endpoint_state, read in the transaction), as the web workers' would."""
        paused = frozenset(outbox_db.paused_reasons())
        if paused != self._paused:
            self._paused, self.rules = paused, rules_from(self.config, paused)
        return [Delivered(i, n, self.rules, i.received_ms) for i, n in items]

    def _store(self, items: list[tuple[Inbound, Normalized]]) -> list[Outcome | Exception]:
        """One transaction for all; if one item spoils it, each alone, so only it fails."""
        try:
            with self._transaction():
                outcomes: list[Outcome | Exception] = list(ingest_many(self._delivered(items)))
            self.groups_committed += 1
            return outcomes
        except UNAVAILABLE as exc:  # disk full, I/O error: every one of them is refused
            log.error("commit of %d deliveries failed: %s", len(items), exc)
            return [exc] * len(items)
        except Exception:
            log.debug("group of %d failed; storing one by one", len(items), exc_info=True)
        alone: list[Outcome | Exception] = []
        for item in items:
            try:
                with self._transaction():
                    alone.append(ingest_many(self._delivered([item]))[0])
            except Exception as exc:
                log.error("delivery event_id=%s not stored: %s", item[0].event_id, exc)
                alone.append(exc)
        return alone

    def _answer(self, items: list[_Item], outcomes: list[Outcome | Exception]) -> None:
        by_conn: dict[socket.socket, list[bytes]] = {}
        for (conn, rid, _, _), out in zip(items, outcomes, strict=True):
            if isinstance(out, Exception):
                a = wire.Answer(rid, wire.FAILED, f"{type(out).__name__}: {out}")
            else:
                status = (wire.DUPLICATE if out.duplicate else
                          wire.STALE if out.stale else wire.ACCEPTED)
                a = wire.Answer(rid, status)
            by_conn.setdefault(conn, []).append(wire.answer(a))
        for conn, frames in by_conn.items():
            self._send(conn, frames)

    def _send(self, conn: socket.socket, frames: list[bytes]) -> None:
        if conn not in self._frames:
            return  # it went away; its worker answered 503 already
        try:
            conn.sendall(b"".join(frames))
        except OSError as exc:  # stuck or gone: its pending deliveries get 503
            log.error("ingest writer: dropping a web worker connection: %s", exc)
            self._drop(conn)


def serve_writer(config: Config, environ: Mapping[str, str] | None = None) -> int:
    """`relay ingest-writer`: run until SIGTERM; the socket path comes from the supervisor."""
    env = os.environ if environ is None else environ
    path = env.get(wire.SOCKET_ENV)
    if not path:
        log.error("relay ingest-writer is started by `relay serve` ([server] ingest_writer); "
                  "%s is not set", wire.SOCKET_ENV)
        return 2
    return IngestWriter(config, path, env).run()
