"""The queue subcommands of `relay` against a running relay (httpx over loopback)."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

import pytest

from relay.config import DownstreamConfig
from relay.core.signing import (
    parse_public_key,
    parse_secret,
    parse_signing_key,
)
from relay.outbox.receiver import DownstreamReceiver
from relay.service import cli
from tests.conftest import ADMIN_TOKEN, Clock, RelayFactory, make_config
from tests.support.outbox import App, deliveries, emit, now_clock, outbox_of


@pytest.fixture
def clock() -> Clock:
    return now_clock()


@pytest.fixture
def empty_config(tmp_path: Path) -> str:
    path = tmp_path / "cli.toml"
    path.write_text("")
    return str(path)


async def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = await asyncio.to_thread(cli.main, list(argv))  # httpx is blocking: off the loop
    out, err = capsys.readouterr()
    return code, out, err


async def relay_with_failures(relay_factory: RelayFactory, receiver: DownstreamReceiver,
                              receiver_url: str, tmp_path: Path) -> tuple[App, str]:
    cfg = make_config(tmp_path, downstream=(
        DownstreamConfig(name="billing", url=receiver_url, retry_schedule_s=(0.0,)),))
    client = await relay_factory(cfg, use_clock=True)
    receiver.reply_next(500, times=2)
    await emit(client, "a")
    await outbox_of(client).settle()
    return client, str(client.make_url("")).rstrip("/")


def test_gen_secret_prints_usable_keys(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["gen-secret"]) == 0
    secret = capsys.readouterr().out.strip()
    assert len(parse_secret(secret)) == 32
    assert cli.main(["gen-secret"]) == 0
    assert capsys.readouterr().out.strip() != secret
    assert cli.main(["gen-secret", "--ed25519"]) == 0
    private, comment = capsys.readouterr().out.strip().splitlines()
    public = comment.rsplit(" ", 1)[1]
    signature = parse_signing_key(private).sign(b"m")
    parse_public_key(public).verify(signature, b"m")  # the printed pair belongs together


async def test_queue_commands_end_to_end(
        relay_factory: RelayFactory, receiver: DownstreamReceiver, receiver_url: str,
        tmp_path: Path, empty_config: str, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAY_ADMIN_TOKEN", ADMIN_TOKEN)
    client, url = await relay_with_failures(relay_factory, receiver, receiver_url, tmp_path)
    common = ("--config", empty_config, "--url", url)

    code, out, _ = await run(capsys, "endpoints", *common)
    assert code == 0
    header, row = out.strip().splitlines()
    assert header.split()[:4] == ["NAME", "STATE", "PENDING", "HELD"]
    assert row.split()[:5] == ["billing", "active", "0", "0", "1"]

    code, out, _ = await run(capsys, "deliveries", "--status", "dead", "--json", *common)
    [dead] = json.loads(out)["deliveries"]
    assert dead["subject"] == "apple:a"

    code, out, _ = await run(capsys, "delivery", str(dead["id"]), *common)
    assert [h["status_code"] for h in json.loads(out)["history"]] == [500, 500]

    code, out, _ = await run(capsys, "recover", "--since", "2000-01-01T00:00:00Z",
                             "--dry-run", *common)
    assert (code, out.strip()) == (0, "1 deliveries match (dry run)")

    code, out, _ = await run(capsys, "retry", str(dead["id"]), *common)
    assert (code, out.strip()) == (0, f"delivery {dead['id']}: pending")
    await outbox_of(client).settle()
    assert [r["status"] for r in await deliveries(client)] == ["delivered"]

    code, out, _ = await run(capsys, "pause", "billing", *common)
    assert (code, out.strip()) == (0, "billing: paused (0 deliveries held)")
    code, out, _ = await run(capsys, "replay", "--endpoint", "billing", "--subject", "apple:a",
                             *common)
    assert (code, out.strip()) == (0, "1 events queued to billing (held: the endpoint is paused)")
    code, out, _ = await run(capsys, "resume", "billing", *common)
    assert (code, out.strip()) == (0, "billing: active (1 deliveries released)")
    await outbox_of(client).settle()
    assert len(receiver.received) == 4  # 500, 500, retry, replay


async def test_errors_are_one_line_with_an_exit_code(
        relay_factory: RelayFactory, receiver: DownstreamReceiver, receiver_url: str,
        tmp_path: Path, empty_config: str, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    _, url = await relay_with_failures(relay_factory, receiver, receiver_url, tmp_path)
    common = ("--config", empty_config, "--url", url)
    monkeypatch.delenv("RELAY_ADMIN_TOKEN", raising=False)
    code, _, err = await run(capsys, "endpoints", *common)
    assert code == 78 and "RELAY_ADMIN_TOKEN" in err

    monkeypatch.setenv("RELAY_ADMIN_TOKEN", "wrong")
    code, _, err = await run(capsys, "endpoints", *common)
    assert (code, err.strip()) == (1, "relay: unauthorized: invalid admin token")

    monkeypatch.setenv("RELAY_ADMIN_TOKEN", ADMIN_TOKEN)
    code, _, err = await run(capsys, "pause", "nope", *common)
    assert (code, err.strip()) == (1, "relay: not_found: no downstream endpoint named 'nope'")

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
    code, _, err = await run(capsys, "endpoints", "--config", empty_config, "--url", closed)
    assert code == 1 and err.startswith("relay: unreachable: cannot reach relay at")
