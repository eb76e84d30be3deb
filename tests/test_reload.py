"""SIGHUP reload: a valid new config replaces the running one; an invalid one is refused."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from pathlib import Path

import pytest

from relay import cli
from relay.app import create_app
from relay.appkeys import RUNTIME_KEY
from relay.config import load_config


def write(path: Path, port: int, audience: str) -> None:
    path.write_text(f"[server]\nport = {port}\n[store]\npath = '{path.parent}/r.sqlite3'\n"
                    f"[auth.jwt]\naudience = '{audience}'\n")


async def test_reload_replaces_or_keeps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("RELAY_CREDENTIAL_ADMIN_TOKEN", "first")
    path = tmp_path / "relay.toml"
    write(path, 8787, "one")
    app = create_app(load_config(path))
    runtime = app[RUNTIME_KEY]
    write(path, 8787, "two")
    monkeypatch.setenv("RELAY_CREDENTIAL_ADMIN_TOKEN", "second")
    assert await cli.reload(app, str(path))
    assert runtime.config.jwt.audience == "two"
    assert runtime.config.credentials.admin_token.reveal() == "second"  # type: ignore[union-attr]
    path.write_text("[server]\nprot = 1\n")
    assert not await cli.reload(app, str(path))
    assert runtime.config.jwt.audience == "two"
    assert "reload refused, keeping the running configuration" in caplog.text
    assert "unknown key 'prot'" in caplog.text


async def test_sighup_reaches_the_running_server(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """1. serve runs from a file  2. the file changes  3. SIGHUP  4. reload ran."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = tmp_path / "relay.toml"
    write(path, port, "one")
    reloaded = asyncio.Event()
    original = cli.reload

    async def spy(app, p):  # type: ignore[no-untyped-def]
        ok = await original(app, p)
        if app[RUNTIME_KEY].config.jwt.audience == "two":
            reloaded.set()
        return ok

    monkeypatch.setattr(cli, "reload", spy)
    stop = asyncio.Event()
    task = asyncio.create_task(cli.serve(load_config(path), stop, str(path)))
    for _ in range(200):
        try:
            _, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            break
        except OSError:
            await asyncio.sleep(0.02)
    write(path, port, "two")
    os.kill(os.getpid(), signal.SIGHUP)
    await asyncio.wait_for(reloaded.wait(), 5)
    stop.set()
    await asyncio.wait_for(task, 10)
