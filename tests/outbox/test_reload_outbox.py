"""SIGHUP reload reaches the outbox: a new downstream secret signs the next delivery; an
invalid config is refused and the running secret keeps signing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from relay.config import load_config
from relay.core.signing import generate_secret
from relay.outbox.receiver import DownstreamReceiver
from relay.service import cli
from relay.web.app import create_app
from relay.web.appkeys import OUTBOX_KEY
from tests.support.outbox import emit, now_clock

OLD, NEW = generate_secret(), generate_secret()


def write_config(path: Path, url: str, extra: str = "") -> None:
    path.write_text(f"[store]\npath = '{path.parent}/r.sqlite3'\n"
                    f"[outbox]\nallow_networks = ['127.0.0.0/8']\n"
                    f"[[downstream]]\nname = 'app'\nurl = '{url}'\n{extra}")


async def start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, aiohttp_client: Any,
                aiohttp_server: Any, extra: str = "") -> tuple[DownstreamReceiver, str, Path, Any]:
    """A receiver, and relay from a config file with one endpoint to it (secret OLD)."""
    receiver = DownstreamReceiver(secrets=[OLD])
    server = await aiohttp_server(receiver.app(), host="127.0.0.1")
    url = str(server.make_url(receiver.path))
    path = tmp_path / "relay.toml"
    write_config(path, url, extra)
    monkeypatch.setenv("RELAY_CREDENTIAL_DOWNSTREAM_APP_SECRET", OLD)
    client = await aiohttp_client(create_app(load_config(path), clock=now_clock()))
    return receiver, url, path, client


async def test_new_downstream_secret_signs_the_next_delivery(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, aiohttp_client: Any,
        aiohttp_server: Any) -> None:
    receiver, url, path, client = await start(tmp_path, monkeypatch, aiohttp_client,
                                              aiohttp_server)
    with_new = DownstreamReceiver(secrets=[NEW])

    await emit(client, "s1")
    [first] = await receiver.wait_for(1)
    assert first.signature_ok and not with_new._verify(first.headers, first.body)

    monkeypatch.setenv("RELAY_CREDENTIAL_DOWNSTREAM_APP_SECRET", NEW)
    assert await cli.reload(client.app, str(path))
    await emit(client, "s2")
    second = (await receiver.wait_for(2))[1]
    assert not second.signature_ok  # the old secret no longer signs
    assert with_new._verify(second.headers, second.body)

    # an invalid config (unknown key) and an unusable endpoint are both refused
    write_config(path, url, "prot = 1\n")
    monkeypatch.setenv("RELAY_CREDENTIAL_DOWNSTREAM_APP_SECRET", OLD)
    assert not await cli.reload(client.app, str(path))
    write_config(path, "ftp://127.0.0.1/hook")
    assert not await cli.reload(client.app, str(path))
    await emit(client, "s3")
    third = (await receiver.wait_for(3))[2]
    assert with_new._verify(third.headers, third.body)  # still the running (new) secret
    assert not third.signature_ok


async def test_an_endpoint_enabled_by_reload_sends_its_held_rows(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, aiohttp_client: Any,
        aiohttp_server: Any) -> None:
    """Disabled: its events are held. Enabled by a reload: they are sent, no resume needed."""
    receiver, url, path, client = await start(tmp_path, monkeypatch, aiohttp_client,
                                              aiohttp_server, "enabled = false\n")
    await emit(client, "s1")
    await emit(client, "s2")
    outbox = client.app[OUTBOX_KEY]
    await outbox.settle()
    assert receiver.received == []
    write_config(path, url)
    assert await cli.reload(client.app, str(path))
    got = await receiver.wait_for(2)
    assert sorted(json.loads(r.body)["subject_key"] for r in got) == ["s1", "s2"]
    assert all(r.signature_ok for r in got)
