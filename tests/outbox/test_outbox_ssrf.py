"""The SSRF guard on downstream URLs: at load (literal IPs), at start and at connect (names)."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from relay.config import ConfigError, DownstreamConfig, load_config
from relay.outbox.receiver import DownstreamReceiver
from relay.web.app import create_app
from relay.web.appkeys import RESOLVER_KEY
from tests.conftest import Clock, make_config
from tests.support.outbox import deliveries, emit, now_clock, outbox_of

REFUSED = ["127.0.0.1", "10.0.0.1", "169.254.169.254"]
ALLOW_ALL = ["127.0.0.0/8", "10.0.0.0/8", "169.254.169.254/32"]


@pytest.fixture
def clock() -> Clock:
    return now_clock()


class MapResolver(AbstractResolver):
    """Resolve names from a table (a list of answers per name, the last one repeats)."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table
        self.calls = 0

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        answers = self.table.get(host)
        if not answers:
            raise OSError(f"no such host {host}")
        self.calls += 1
        address = answers.pop(0) if len(answers) > 1 else answers[0]
        return [ResolveResult(hostname=host, host=address, port=port, family=socket.AF_INET,
                              proto=0, flags=socket.AI_NUMERICHOST)]

    async def close(self) -> None:
        pass


def _toml(tmp_path: Path, url: str, allow: list[str]) -> Path:
    path = tmp_path / "relay.toml"
    nets = ", ".join(f'"{n}"' for n in allow)
    path.write_text(f'[outbox]\nallow_networks = [{nets}]\n\n'
                    f'[[downstream]]\nname = "billing"\nurl = "{url}"\n')
    return path


@pytest.mark.parametrize(("address", "rule"), [
    ("127.0.0.1", "loopback"), ("10.0.0.1", "private"), ("169.254.169.254", "metadata")])
def test_literal_address_is_a_config_error_naming_rule_and_setting(
        tmp_path: Path, address: str, rule: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(_toml(tmp_path, f"http://{address}/hook", []), environ={})
    [line] = err.value.problems
    assert "[[downstream]] #1 (billing)" in line
    assert f"({rule})" in line and "[outbox] allow_networks" in line


@pytest.mark.parametrize("address", REFUSED)
def test_literal_address_is_allowed_when_listed(tmp_path: Path, address: str) -> None:
    cfg = load_config(_toml(tmp_path, f"http://{address}/hook", ALLOW_ALL), environ={})
    assert cfg.downstream[0].url == f"http://{address}/hook"


def test_metadata_needs_its_own_entry(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="metadata"):
        load_config(_toml(tmp_path, "http://169.254.169.254/", ["169.254.0.0/16"]), environ={})


@pytest.mark.parametrize("address", REFUSED)
async def test_hostname_resolving_to_refused_address_stops_the_start(
        tmp_path: Path, address: str) -> None:
    cfg = make_config(tmp_path, downstream=(
        DownstreamConfig(name="billing", url="http://hooks.internal/hook"),),
        outbox={"allow_networks": ()})
    app = create_app(cfg)
    app[RESOLVER_KEY] = MapResolver({"hooks.internal": [address]})
    app.on_startup.freeze()  # as AppRunner does before startup
    with pytest.raises(ConfigError) as err:
        await app.startup()
    await app.cleanup()  # what serve's runner does: close the store and session opened so far
    [line] = err.value.problems
    assert f"hooks.internal ({address})" in line and "[outbox] allow_networks" in line


async def test_hostname_allowed_when_listed_is_delivered(
        aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path, clock: Clock) -> None:
    receiver = DownstreamReceiver(secrets=["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"])
    server = await aiohttp_server(receiver.app(), host="127.0.0.1")
    cfg = make_config(tmp_path, downstream=(
        DownstreamConfig(name="billing", url=f"http://hooks.internal:{server.port}/hook"),),
        outbox={"allow_networks": tuple(ALLOW_ALL)})
    app = create_app(cfg, clock=clock)
    app[RESOLVER_KEY] = MapResolver({"hooks.internal": ["127.0.0.1"]})
    client = await aiohttp_client(app)
    await emit(client)
    [got] = await receiver.wait_for(1)
    assert got.signature_ok


async def test_rebinding_at_connect_time_is_a_recorded_failure(
        aiohttp_client: Any, tmp_path: Path, clock: Clock) -> None:
    cfg = make_config(tmp_path, downstream=(
        DownstreamConfig(name="billing", url="http://hooks.internal/hook"),),
        outbox={"allow_networks": ("127.0.0.0/8",)})
    app = create_app(cfg, clock=clock)
    # Public-looking at start, then the name moves onto a private address.
    resolver = MapResolver({"hooks.internal": ["127.0.0.1", "10.0.0.1"]})
    app[RESOLVER_KEY] = resolver
    client = await aiohttp_client(app)
    await emit(client)
    await outbox_of(client).settle()
    [row] = await deliveries(client)
    assert (row["status"], row["attempts"], row["last_status"]) == ("pending", 1, None)
    assert row["last_error"].startswith("ssrf_refused (private): ")
    assert "hooks.internal (10.0.0.1)" in row["last_error"]
    assert "[outbox] allow_networks" in row["last_error"]


def test_bad_key_material_and_shared_slots_are_config_errors(tmp_path: Path) -> None:
    path = tmp_path / "relay.toml"
    path.write_text('[outbox]\nconcurrency = 8\nper_endpoint_concurrency = 8\n\n'
                    '[[downstream]]\nname = "a"\nurl = "https://a.example/hook"\n\n'
                    '[[downstream]]\nname = "b"\nurl = "https://b.example/hook"\n')
    env = {"RELAY_CREDENTIAL_DOWNSTREAM_A_SECRET": "whsec_c2hvcnQ=",
           "RELAY_CREDENTIAL_DOWNSTREAM_B_SECRET": "whsk_bm90LWEta2V5"}
    with pytest.raises(ConfigError) as err:
        load_config(path, environ=env)
    text = "\n".join(err.value.problems)
    assert "credential downstream-a-secret line 1: webhook secret must decode to 24..64" in text
    assert "credential downstream-b-secret line 1: signing key must decode to 32" in text
    assert "per_endpoint_concurrency (8) must be below concurrency (8)" in text
    assert "c2hvcnQ" not in text  # key material never echoed
