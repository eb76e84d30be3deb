"""Fixtures: relay on a temporary store (tests/store_support.py), and loopback peers."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import types
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import settings

from relay.attesto.simulator import AttestoSimulator
from relay.config import Config, Credentials, DownstreamConfig, Secret, load_config
from relay.outbox.receiver import DownstreamReceiver
from relay.web.app import create_app
from tests.support.store import (  # noqa: F401
    _drop_remaining_databases,
    _drop_test_databases,
    store_config,
)

# Hypothesis: in CI (CI set, or HYPOTHESIS_PROFILE=ci) every run draws the same examples
# (derandomize; no example database carried between runs), so a red build replays as it
# failed; elsewhere examples stay random (and failures are saved locally) to find new cases.
settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.register_profile("dev", print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE")
                      or ("ci" if os.environ.get("CI") else "dev"))

API_KEY = "relay-test-service-key"
ADMIN_TOKEN = "relay-test-admin-token"
JWT_SECRET = "relay-test-jwt-secret-0123456789abcdef"
DOWNSTREAM_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


class Clock:
    """A controllable wall clock (epoch seconds)."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def sim() -> AttestoSimulator:
    return AttestoSimulator()


@pytest.fixture
async def attesto_url(aiohttp_server: Any, sim: AttestoSimulator) -> str:
    server: TestServer = await aiohttp_server(sim.app(), host="127.0.0.1")
    return str(server.make_url("")).rstrip("/")


@pytest.fixture
def receiver() -> DownstreamReceiver:
    return DownstreamReceiver(secrets=[DOWNSTREAM_SECRET])


@pytest.fixture
async def receiver_url(aiohttp_server: Any, receiver: DownstreamReceiver) -> str:
    server: TestServer = await aiohttp_server(receiver.app(), host="127.0.0.1")
    return str(server.make_url(receiver.path))


def make_config(tmp_path: Path, *, attesto_url: str = "http://127.0.0.1:9",
                downstream: tuple[DownstreamConfig, ...] = (),
                webhook_secrets: tuple[str, ...] = (
                    "whsec-example-0123456789abcdefghijklmnopqrstuv",),
                **sections: dict[str, Any]) -> Config:
    """A test Config: store under tmp_path, every credential set, sections overridable."""
    base = load_config(None, environ={})
    changes: dict[str, Any] = {
        "store": store_config(tmp_path),
        "attesto": dataclasses.replace(base.attesto, base_url=attesto_url, timeout_s=5.0,
                                       connect_timeout_s=1.0),
        "outbox": dataclasses.replace(base.outbox, allow_networks=("127.0.0.0/8",)),
        # Tests drive re-polls directly; a test that wants the clock running enables it.
        "scheduler": dataclasses.replace(base.scheduler, enabled=False),
        "downstream": downstream,
        "credentials": Credentials(
            attesto_api_key=Secret(AttestoSimulator.api_key),
            attesto_webhook_secrets=tuple(Secret(s) for s in webhook_secrets),
            api_keys=(("backend", hashlib.sha256(API_KEY.encode()).hexdigest()),),
            admin_token=Secret(ADMIN_TOKEN),
            jwt_key=Secret(JWT_SECRET),
            downstream_secrets=types.MappingProxyType(
                {d.name: (Secret(DOWNSTREAM_SECRET),) for d in downstream}),
        ),
    }
    for name, values in sections.items():
        changes[name] = (dataclasses.replace(getattr(base, name), **values)
                         if isinstance(values, dict) else values)
    return dataclasses.replace(base, **changes)


@pytest.fixture
def clock() -> Clock:
    return Clock()


RelayFactory = Callable[..., Awaitable[TestClient[web.Request, web.Application]]]


@pytest.fixture
def relay_factory(aiohttp_client: Any, tmp_path: Path, clock: Clock) -> RelayFactory:
    """Start relay (real app, real cleanup contexts) on a temporary SQLite file."""

    async def start(config: Config | None = None, *, use_clock: bool = False,
                    **kw: Any) -> TestClient[web.Request, web.Application]:
        cfg = config or make_config(tmp_path, **kw)
        app = create_app(cfg, **({"clock": clock} if use_clock else {}))
        client: TestClient[web.Request, web.Application] = await aiohttp_client(app)
        return client

    return start


def auth(token: str = API_KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}



@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Keep each phase's report on the test item (`item.rep_setup`, `rep_call`, ...):
    fixtures that leave evidence behind on failure (browser screenshots) read it."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
