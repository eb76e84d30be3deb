"""The systemd watchdog, on a real unix datagram socket: pings while healthy, stops when stuck."""

from __future__ import annotations

import asyncio
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from relay.web.appkeys import OUTBOX_KEY
from tests.conftest import RelayFactory


@pytest.fixture
def notify_socket(monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A NOTIFY_SOCKET relay talks to, with systemd's watchdog asking for a ping every 0.1 s."""
    with tempfile.TemporaryDirectory(prefix="relay-wd-") as tmp:  # short: AF_UNIX path limit
        path = str(Path(tmp) / "notify")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        sock.setblocking(False)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        monkeypatch.setenv("WATCHDOG_USEC", "200000")
        monkeypatch.delenv("WATCHDOG_PID", raising=False)
        try:
            yield sock
        finally:
            sock.close()


async def next_message(sock: socket.socket) -> str:
    data = await asyncio.wait_for(asyncio.get_running_loop().sock_recv(sock, 4096), 5)
    return data.decode()


async def wait_for(sock: socket.socket, prefix: str) -> list[str]:
    """Every message up to and including the first that starts with `prefix`."""
    seen = []
    while True:
        seen.append(await next_message(sock))
        if seen[-1].startswith(prefix):
            return seen


async def test_pings_while_healthy_and_stops_when_the_outbox_is_stuck(
        relay_factory: RelayFactory, notify_socket: socket.socket) -> None:
    client = await relay_factory()
    await wait_for(notify_socket, "WATCHDOG=1")
    await wait_for(notify_socket, "WATCHDOG=1")  # it keeps pinging

    outbox = client.app[OUTBOX_KEY]
    stuck = asyncio.Event()

    async def hang() -> bool:
        stuck.set()
        await asyncio.Event().wait()  # a cycle that never returns
        return True

    outbox._cycle = hang  # type: ignore[method-assign]
    outbox.wake()
    await asyncio.wait_for(stuck.wait(), 5)
    outbox.beat -= 3600  # ...and has not come round for an hour

    await wait_for(notify_socket, "STATUS=unhealthy: outbox worker stalled")
    following = [await next_message(notify_socket) for _ in range(3)]
    assert following == ["STATUS=unhealthy: outbox worker stalled"] * 3  # no WATCHDOG=1


async def test_no_watchdog_task_without_watchdog_usec(
        relay_factory: RelayFactory, notify_socket: socket.socket,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WATCHDOG_USEC")
    client = await relay_factory()
    assert await client.get("/healthz")  # the app is up
    names = {t.get_name() for t in asyncio.all_tasks()}
    assert "relay-watchdog" not in names
    with pytest.raises(BlockingIOError):
        notify_socket.recv(4096)


async def test_a_dead_outbox_lane_stops_the_pings(relay_factory: RelayFactory,
                                                  notify_socket: socket.socket,
                                                  receiver_url: str) -> None:
    from relay.config import DownstreamConfig

    client = await relay_factory(downstream=(DownstreamConfig(name="billing",
                                                              url=receiver_url),))
    await wait_for(notify_socket, "WATCHDOG=1")
    assert client.app[OUTBOX_KEY].healthy(30.0)
    lane = next(t for t in asyncio.all_tasks() if t.get_name().startswith("relay-outbox-billing"))
    lane.cancel()
    await asyncio.gather(lane, return_exceptions=True)
    async with asyncio.timeout(10):
        await wait_for(notify_socket, "STATUS=unhealthy: outbox lane billing is dead")
