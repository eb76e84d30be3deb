"""The crash harness: a real `relay serve` subprocess that tests kill -9 and restart.

`RelayProcess` owns one daemon (temp relay.toml, SQLite file, credentials from the
environment, a downstream pointing at a loopback receiver in the test process; a test may
add sections, environment variables and a retry schedule of its own);
`Ledger` records what relay acknowledged; `check_database` reads the file afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sqlite3
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from relay.attesto.simulator import AttestoSimulator

ROOT = Path(__file__).resolve().parents[2]
WEBHOOK_SECRET = "crash-secret-0123456789abcdefghijklmnopqrstuvwxyz"
DOWNSTREAM_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
WEBHOOK_PATH = "/v1/webhooks/attesto"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def write_config(state: Path, port: int, downstream_url: str,
                 retry_schedule: str = "[0.2, 0.5, 1]", extra: str = "") -> Path:
    """relay.toml for one test daemon; `extra` adds whole sections (keys of the sections
    written here are set through RELAY_<SECTION>__<KEY> instead)."""
    config = state / "relay.toml"
    config.write_text(
        f'[server]\nport = {port}\nshutdown_timeout_s = 1\n'
        f'[store]\npath = "{state / "relay.sqlite3"}"\n'
        '[scheduler]\nenabled = false\n'
        '[outbox]\nallow_networks = ["127.0.0.0/8"]\nclaim_timeout_s = 2\nsweep_s = 0.2\n'
        'retry_schedule_s = [0.2, 0.5, 1]\n'
        '[log]\nlevel = "info"\n'
        '[entitlements]\n"com.example.premium" = ["premium"]\n'
        f'[[downstream]]\nname = "billing"\nurl = "{downstream_url}"\ntimeout_s = 5\n'
        f'retry_schedule_s = {retry_schedule}\n' + extra)
    return config


@dataclass
class RelayProcess:
    """One `python -m relay serve`; start() waits for its 'listening on' log line."""

    state: Path
    downstream_url: str
    port: int = field(default_factory=free_port)
    retry_schedule: str = "[0.2, 0.5, 1]"
    extra_config: str = ""
    env: dict[str, str] = field(default_factory=dict)  # added to the daemon's environment
    proc: asyncio.subprocess.Process | None = None
    log_lines: list[str] = field(default_factory=list)
    _drain: asyncio.Task[None] | None = None
    _logged: asyncio.Condition = field(default_factory=asyncio.Condition)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{WEBHOOK_PATH}"

    async def start(self, timeout_s: float = 30.0) -> None:
        config = write_config(self.state, self.port, self.downstream_url, self.retry_schedule,
                              self.extra_config)
        env = {**os.environ, "PYTHONPATH": str(ROOT),
               "RELAY_CREDENTIAL_ATTESTO_WEBHOOK_SECRET": WEBHOOK_SECRET,
               "RELAY_CREDENTIAL_DOWNSTREAM_BILLING_SECRET": DOWNSTREAM_SECRET}
        for name in ("CREDENTIALS_DIRECTORY", "JOURNAL_STREAM", "NOTIFY_SOCKET", "WATCHDOG_USEC"):
            env.pop(name, None)
        env.update(self.env)
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "relay", "serve", "--config", str(config),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
            env=env, cwd=self.state)
        ready = asyncio.Event()
        self._drain = asyncio.create_task(self._read_log(ready))
        async with asyncio.timeout(timeout_s):
            waiter = asyncio.create_task(ready.wait())
            done, _ = await asyncio.wait({waiter, asyncio.create_task(self.proc.wait())},
                                         return_when=asyncio.FIRST_COMPLETED)
            if waiter not in done:
                raise RuntimeError("relay exited before listening:\n"
                                   + "\n".join(self.log_lines[-20:]))

    async def _read_log(self, ready: asyncio.Event) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        async for raw in self.proc.stderr:
            line = raw.decode(errors="replace").rstrip("\n")
            self.log_lines.append(line)
            if "listening on" in line:
                ready.set()
            async with self._logged:
                self._logged.notify_all()

    async def logged(self, text: str, timeout_s: float = 10.0) -> str:
        """Wait for the first log line that contains `text` and return it."""
        def found() -> str | None:
            return next((line for line in self.log_lines if text in line), None)

        async with asyncio.timeout(timeout_s), self._logged:
            await self._logged.wait_for(lambda: found() is not None)
        line = found()
        assert line is not None
        return line

    async def kill(self) -> None:
        """SIGKILL: no shutdown, no cleanup, whatever was in flight is cut."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()
        if self._drain is not None:
            await self._drain
        self.proc = None

    async def terminate(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        code = await self.proc.wait()
        if self._drain is not None:
            await self._drain
        self.proc = None
        return code


@dataclass
class Ledger:
    """Deliveries made and what relay answered: only a 2xx is a promise."""

    acked: set[str] = field(default_factory=set)
    sent: int = 0
    failed: int = 0
    ack_event: asyncio.Event = field(default_factory=asyncio.Event)


def make_deliveries(sim: AttestoSimulator, start: int, count: int,
                    now_ms: int) -> list[bytes]:
    """Unique signed-ready bodies: new Apple subscriptions, some renewals of earlier ones."""
    bodies = []
    for i in range(start, start + count):
        subject = i if i % 3 else i // 3  # every third one renews an older subject
        txn = sim.add_apple(transaction_id=str(3_000_000_000_000_000 + i),
                            original_transaction_id=str(2_000_000_000_000_000 + subject),
                            product_id="com.example.premium",
                            expires_ms=now_ms + 30 * 86_400_000 + i,
                            purchase_ms=now_ms - 3_600_000, environment="production")
        bodies.append(sim.apple_webhook("DID_RENEW" if i % 3 == 0 else "SUBSCRIBED", txn,
                                        signed_ms=now_ms - 3_600_000 + i, auto_renew=True))
    sim.apple.clear()
    return bodies


async def drive(session: aiohttp.ClientSession, sim: AttestoSimulator, url: str,
                bodies: list[bytes], ledger: Ledger, workers: int = 8) -> None:
    """Post every body (each once) from `workers` connections, recording 2xx answers."""
    queue = list(reversed(bodies))

    async def worker() -> None:
        while queue:
            body = queue.pop()
            event_id = json.loads(body)["eventId"]
            ledger.sent += 1
            try:
                status, _ = await sim.deliver(session, url, body)
            except (TimeoutError, aiohttp.ClientError):
                ledger.failed += 1
                continue
            if 200 <= status < 300:
                ledger.acked.add(event_id)
                ledger.ack_event.set()
            else:
                ledger.failed += 1

    await asyncio.gather(*(worker() for _ in range(workers)))


@dataclass
class Stored:
    inbox: dict[str, int]
    events: dict[str, list[str]]  # attesto event id -> relay event ids
    bodies: dict[str, str]  # relay event id -> body
    deliveries: dict[str, str]  # relay event id -> delivery status
    integrity: str


def read_database(path: Path) -> Stored:
    with contextlib.closing(sqlite3.connect(path)) as db:
        integrity = db.execute("PRAGMA integrity_check").fetchone()[0]
        inbox: dict[str, int] = {}
        for (event_id,) in db.execute("SELECT event_id FROM inbox"):
            inbox[event_id] = inbox.get(event_id, 0) + 1
        events: dict[str, list[str]] = {}
        bodies: dict[str, str] = {}
        for attesto_id, relay_id, body in db.execute(
                "SELECT attesto_event_id, id, body FROM event"):
            events.setdefault(attesto_id, []).append(relay_id)
            bodies[relay_id] = body
        deliveries = {relay_id: status for relay_id, status in db.execute(
            "SELECT e.id, d.status FROM delivery d JOIN event e ON e.cursor = d.event_cursor")}
    return Stored(inbox, events, bodies, deliveries, integrity)


def problems(ledger: Ledger, stored: Stored, received: dict[str, set[bytes]]) -> list[str]:
    """Every way the promise was broken; empty when every ack was kept."""
    out: list[str] = []
    if stored.integrity != "ok":
        out.append(f"integrity_check: {stored.integrity}")
    for event_id in sorted(ledger.acked):
        if stored.inbox.get(event_id) != 1:
            out.append(f"{event_id}: acked but {stored.inbox.get(event_id, 0)} inbox rows")
            continue
        relay_ids = stored.events.get(event_id, [])
        if not relay_ids:
            out.append(f"{event_id}: acked but no event")
        for relay_id in relay_ids:
            copies = received.get(relay_id)
            if not copies:
                out.append(f"{event_id}: event {relay_id} never reached downstream")
            elif copies != {stored.bodies[relay_id].encode()}:
                out.append(f"{event_id}: event {relay_id} arrived with another body")
    for event_id, n in stored.inbox.items():
        if n != 1:
            out.append(f"{event_id}: {n} inbox rows")
    return out


def summary(ledger: Ledger, stored: Stored, received: dict[str, Any]) -> str:
    return (f"sent {ledger.sent}, acked {len(ledger.acked)}, failed {ledger.failed}, "
            f"inbox {len(stored.inbox)}, events {len(stored.bodies)}, "
            f"received ids {len(received)}")
