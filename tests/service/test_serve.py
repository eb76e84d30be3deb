"""The real serve loop: READY=1 after binding, graceful drain, STOPPING=1, clean close."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from relay import systemd
from relay.service import cli
from tests.conftest import make_config
from tests.support.service import free_port


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield sock
    sock.close()


async def recv(sock: socket.socket, timeout_s: float = 5.0) -> str:
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(timeout_s):
        data = await loop.sock_recv(sock, 4096)
    return data.decode()


async def test_ready_then_stop(tmp_path: Path, notify_socket: socket.socket) -> None:
    """1. serve binds, then sends READY=1  2. it answers  3. stop: STOPPING=1
    4. serve returns and the port is closed."""
    port = free_port()
    cfg = make_config(tmp_path, server={"port": port, "shutdown_timeout_s": 5.0})
    stop = asyncio.Event()
    task = asyncio.create_task(cli.serve(cfg, stop))
    assert (await recv(notify_socket)).startswith("READY=1")
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}/healthz") as resp:
            assert resp.status == 200
    stop.set()
    assert await recv(notify_socket) == "STOPPING=1"
    await asyncio.wait_for(task, 10)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=0.5)


async def test_in_flight_handler_finishes_before_close(tmp_path: Path,
                                                       notify_socket: socket.socket,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from aiohttp import web

    from relay.web.routes import health

    entered, release = asyncio.Event(), asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        entered.set()
        await release.wait()
        return web.json_response({"slow": True})

    monkeypatch.setattr(health, "handle_healthz", slow)
    port = free_port()
    cfg = make_config(tmp_path, server={"port": port, "shutdown_timeout_s": 5.0})
    stop = asyncio.Event()
    task = asyncio.create_task(cli.serve(cfg, stop))
    await recv(notify_socket)
    async with aiohttp.ClientSession() as session:
        req = asyncio.create_task(session.get(f"http://127.0.0.1:{port}/healthz"))
        await asyncio.wait_for(entered.wait(), 5)
        stop.set()
        assert await recv(notify_socket) == "STOPPING=1"
        assert not task.done()
        release.set()
        resp = await req
        assert resp.status == 200 and await resp.json() == {"slow": True}
    await asyncio.wait_for(task, 10)


def test_notify_is_a_noop_without_socket() -> None:
    assert systemd.notify("READY=1", environ={}) is False


def test_notify_abstract_socket() -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"relay-test-{id(sock)}"
    sock.bind("\0" + name)
    try:
        assert systemd.notify("WATCHDOG=1", environ={"NOTIFY_SOCKET": "@" + name})
        assert sock.recv(100) == b"WATCHDOG=1"
    finally:
        sock.close()


def test_watchdog_interval() -> None:
    import os

    assert systemd.watchdog_interval_s({"WATCHDOG_USEC": "30000000",
                                        "WATCHDOG_PID": str(os.getpid())}) == 15.0
    assert systemd.watchdog_interval_s({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) \
        is None
    assert systemd.watchdog_interval_s({}) is None
