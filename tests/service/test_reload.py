"""SIGHUP reload: a valid new config replaces the running one; an invalid one is refused."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import socket
from pathlib import Path
from typing import Any

import pytest

from relay.attesto.simulator import AttestoSimulator
from relay.config import load_config
from relay.service import cli
from relay.web.app import create_app
from relay.web.appkeys import ATTESTO_KEY, RUNTIME_KEY


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


async def test_reload_adopts_a_new_attesto_key_and_url(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, aiohttp_client: Any,
        aiohttp_server: Any) -> None:
    """A rotated Attesto key (and a moved Attesto) apply on reload, without a restart."""
    sim = AttestoSimulator(api_key="attesto_test_" + "N" * 43)
    sim.add_apple(transaction_id="t1", original_transaction_id="o1", product_id="p",
                  expires_ms=4_000_000_000_000, purchase_ms=1_700_000_000_000)
    server = await aiohttp_server(sim.app(), host="127.0.0.1")
    path = tmp_path / "relay.toml"

    def write(base_url: str) -> None:
        path.write_text(f"[store]\npath = '{tmp_path}/r.sqlite3'\n"
                        f"[attesto]\nbase_url = '{base_url}'\n"
                        "[scheduler]\nenabled = false\n")

    write("http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("RELAY_CREDENTIAL_API_KEYS",
                       "backend:" + hashlib.sha256(b"service-key").hexdigest())
    monkeypatch.setenv("RELAY_CREDENTIAL_ATTESTO_API_KEY", "attesto_test_" + "O" * 43)
    app = create_app(load_config(path))
    client = await aiohttp_client(app)

    async def verify() -> tuple[int, dict[str, Any]]:
        resp = await client.post("/v1/verify/apple",
                                 headers={"Authorization": "Bearer service-key"},
                                 json={"user_id": "u1", "transaction_id": "t1"})
        return resp.status, await resp.json()

    for _ in range(3):  # enough failed attempts to open the breaker
        status, body = await verify()
        assert status == 503 and body["error"]["code"] == "attesto_unavailable"
    assert app[ATTESTO_KEY].breaker.state == "open"
    write(str(server.make_url("")).rstrip("/"))  # Attesto moved: a fresh breaker
    assert await cli.reload(app, str(path))
    status, body = await verify()  # the new URL, the old key: Attesto refuses it
    assert status == 502 and body["error"]["code"] == "attesto_unauthenticated", body
    monkeypatch.setenv("RELAY_CREDENTIAL_ATTESTO_API_KEY", sim.api_key)
    assert await cli.reload(app, str(path))
    status, body = await verify()
    assert status == 200 and body["valid"] is True and body["purchase"]["subject_key"] == "o1"
