"""Real relay processes for the tests: free ports, `relay serve` (with workers), its notify
socket and its log, signed deliveries to it, and what it stored."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
import socket
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from relay.attesto.simulator import AttestoSimulator
from tests.conftest import ADMIN_TOKEN, API_KEY, DOWNSTREAM_SECRET


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Calls(list[Any]):
    """The simulator's call log, with an event set on every append."""

    def __init__(self) -> None:
        super().__init__()
        self.arrived = asyncio.Event()

    def append(self, item: Any) -> None:
        super().append(item)
        self.arrived.set()


ROOT = Path(__file__).resolve().parents[2]
WEBHOOK_SECRET = "whsec-example-0123456789abcdefghijklmnopqrstuv"


def write_config(tmp_path: Path, attesto: str, downstream: str) -> Path:
    path = tmp_path / "relay.toml"
    path.write_text(f"""
[server]
host = "127.0.0.1"
port = {free_port()}
shutdown_timeout_s = 2.0
workers = 2
[store]
path = "{tmp_path / 'relay.sqlite3'}"
[attesto]
base_url = "{attesto}"
[scheduler]
tick_s = 0.2
[outbox]
allow_networks = ["127.0.0.0/8"]
[log]
level = "info"
[[downstream]]
name = "billing"
url = "{downstream}"
timeout_s = 1.0
""")
    return path


def env(tmp_path: Path, notify: Path, watchdog_usec: int | None = None) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items()
         if k not in ("WATCHDOG_USEC", "WATCHDOG_PID", "CREDENTIALS_DIRECTORY")}
    e.update({"PYTHONPATH": str(ROOT), "NOTIFY_SOCKET": str(notify),
              "RUNTIME_DIRECTORY": str(tmp_path / "run"),
              "RELAY_CREDENTIAL_ATTESTO_API_KEY": AttestoSimulator.api_key,
              "RELAY_CREDENTIAL_ATTESTO_WEBHOOK_SECRET": WEBHOOK_SECRET,
              "RELAY_CREDENTIAL_ADMIN_TOKEN": ADMIN_TOKEN,
              "RELAY_CREDENTIAL_API_KEYS":
                  "backend:" + hashlib.sha256(API_KEY.encode()).hexdigest(),
              "RELAY_CREDENTIAL_DOWNSTREAM_BILLING_SECRET": DOWNSTREAM_SECRET})
    if watchdog_usec is not None:
        e["WATCHDOG_USEC"] = str(watchdog_usec)
    return e


class Service:
    """`relay serve` with workers, its notify socket and its log."""

    def __init__(self, tmp_path: Path, config: Path, watchdog_usec: int | None = None) -> None:
        self.tmp_path, self.config = tmp_path, config
        self.port = int(config.read_text().split("port = ")[1].split()[0])
        (tmp_path / "run").mkdir(exist_ok=True)
        self.notify_path = tmp_path / "notify.sock"
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(self.notify_path))
        self.notify.setblocking(False)
        self.log_path = tmp_path / "relay.log"
        self.watchdog_usec = watchdog_usec
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self.log_path.open("wb") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "relay", "serve", "--config", str(self.config),
                env=env(self.tmp_path, self.notify_path, self.watchdog_usec), stderr=log,
                start_new_session=True)  # kill(): the whole group, workers included

    async def kill(self) -> None:
        """After the test: no worker may outlive it, even one whose supervisor died."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            await self.proc.wait()

    async def message(self, timeout_s: float = 20.0) -> str:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout_s):
            return (await loop.sock_recv(self.notify, 4096)).decode()

    async def until(self, prefix: str, timeout_s: float = 20.0) -> list[str]:
        """Every message up to and including the first that starts with `prefix`."""
        seen: list[str] = []
        while not seen or not seen[-1].startswith(prefix):
            seen.append(await self.message(timeout_s))
        return seen

    def worker_pids(self) -> list[int]:
        assert self.proc is not None
        text = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        return [int(p) for p in text.split()]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def log_shows(self, text: str, times: int = 1) -> None:
        """Wait for `text` to be in the log `times` times (log lines are written in
        batches, a little after the fact)."""
        async with asyncio.timeout(10):
            while self.log().count(text) < times:
                await asyncio.sleep(0.05)

    async def stop(self) -> int:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(self.proc.wait(), 30)
        self.notify.close()
        return code


async def deliver(sim: AttestoSimulator, body: bytes, port: int) -> str:
    """One delivery on its own connection, so the kernel picks a worker for each."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
        async with session.post(f"http://127.0.0.1:{port}/v1/webhooks/attesto", data=body,
                                headers=sim.headers_for(body, t=int(time.time()))) as resp:
            assert resp.status == 200, await resp.text()
            return str((await resp.json())["status"])


def subscriptions(sim: AttestoSimulator, apple: int,
                  google: int) -> tuple[list[bytes], list[bytes]]:
    """Signed first-purchase deliveries: `apple` Apple subscriptions, `google` Google ones."""
    now_ms = int(time.time() * 1000)
    return ([sim.apple_webhook("SUBSCRIBED", sim.add_apple(
                original_transaction_id=f"o{i}", transaction_id=f"t{i}", product_id="premium",
                expires_ms=now_ms + 86_400_000, purchase_ms=now_ms),
                subtype="INITIAL_BUY", auto_renew=True) for i in range(apple)],
            [sim.google_webhook(4, sim.add_google(token=f"g{i}", product_id="premium_monthly"),
                                root_token=f"root{i}") for i in range(google)])


def sqlite_rows(path: Path) -> tuple[set[str], list[str]]:
    with sqlite3.connect(path) as db:
        inbox = {r[0] for r in db.execute("SELECT event_id FROM inbox")}
        events = [r[0] for r in db.execute("SELECT id FROM event ORDER BY cursor")]
    return inbox, events


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True
