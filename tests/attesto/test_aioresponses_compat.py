"""Guard: aioresponses must keep working with the pinned aiohttp (0.7.9 broke on 3.14)."""

from __future__ import annotations

import aiohttp
import pytest
from aioresponses import aioresponses


async def test_aioresponses_mocks_a_call_and_a_connection_error() -> None:
    with aioresponses() as mocked:
        mocked.post("http://attesto.invalid/v1/apple/verify", status=200,
                    payload={"valid": True})
        mocked.post("http://attesto.invalid/v1/google/verify",
                    exception=aiohttp.ClientConnectionError("refused"))
        async with aiohttp.ClientSession() as session:
            async with session.post("http://attesto.invalid/v1/apple/verify") as resp:
                assert resp.status == 200
                assert await resp.json() == {"valid": True}
            with pytest.raises(aiohttp.ClientConnectionError):
                await session.post("http://attesto.invalid/v1/google/verify")
