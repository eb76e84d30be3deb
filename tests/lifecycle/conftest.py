"""The `life` fixture: relay, the scripted Attesto and a fake clock (tests/lifecycle/harness.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from relay.config import DownstreamConfig
from tests.conftest import Clock
from tests.lifecycle.harness import Relay, start_relay

# Two endpoints that filter on the environment (defect 6) and one that takes everything.
DOWNSTREAM = (
    DownstreamConfig(name="all", url="http://127.0.0.1:9/all"),
    DownstreamConfig(name="prod", url="http://127.0.0.1:9/prod",
                     environments=("production",)),
    DownstreamConfig(name="sandbox", url="http://127.0.0.1:9/sandbox",
                     environments=("sandbox",)),
)


@pytest.fixture
async def life(aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path,
               clock: Clock) -> Relay:
    return await start_relay(aiohttp_client, aiohttp_server, tmp_path, clock,
                             downstream=DOWNSTREAM)
