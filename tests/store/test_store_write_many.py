"""Store.write_many: items queued while the thread is busy share one batch call and commit;
a failing item fails alone; a database failure fails the whole group."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from peewee import OperationalError

from relay.core.errors import StoreUnavailableError
from relay.store.database import Store
from relay.store.models import Meta
from tests.support.store import store_config


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = Store(store_config(tmp_path, "w"))
    await s.open()
    yield s
    await s.close()


async def hold_thread(store: Store) -> tuple[threading.Event, asyncio.Task[None]]:
    """Keep the store thread busy until the returned event is set."""
    started, release = threading.Event(), threading.Event()

    def block() -> None:
        started.set()
        release.wait(5)

    task = asyncio.ensure_future(store.read(block))
    await asyncio.get_running_loop().run_in_executor(None, started.wait, 5)
    return release, task


async def keys(store: Store) -> set[str]:
    return await store.read(lambda: {m.key for m in Meta.select()} - {"schema_version"})


async def test_queued_items_share_one_call_in_order(store: Store) -> None:
    calls: list[list[str]] = []

    def batch(items: list[str]) -> list[str]:
        calls.append(list(items))
        Meta.insert_many([{"key": k, "value": "v"} for k in items]).execute()
        return [k.upper() for k in items]

    release, held = await hold_thread(store)
    futures = [asyncio.ensure_future(store.write_many(batch, f"k{i}")) for i in range(5)]
    await asyncio.sleep(0)  # let every write reach the queue
    release.set()
    async with asyncio.timeout(5):
        results = await asyncio.gather(*futures)
        await held
    assert results == ["K0", "K1", "K2", "K3", "K4"]
    assert calls == [["k0", "k1", "k2", "k3", "k4"]]
    assert await keys(store) == {f"k{i}" for i in range(5)}


async def test_a_failing_item_fails_alone(store: Store) -> None:
    calls: list[list[str]] = []

    def batch(items: list[str]) -> list[str]:
        calls.append(list(items))
        for k in items:
            Meta.insert(key=k, value="v").execute()
            if k == "bad":
                raise ValueError("bad item")
        return items

    release, held = await hold_thread(store)
    futures = [asyncio.ensure_future(store.write_many(batch, k)) for k in ("a", "bad", "c")]
    await asyncio.sleep(0)
    release.set()
    async with asyncio.timeout(5):
        results = await asyncio.gather(*futures, return_exceptions=True)
        await held
    assert results[0] == "a" and results[2] == "c"
    assert isinstance(results[1], ValueError)
    assert calls == [["a", "bad", "c"], ["a"], ["bad"], ["c"]]  # batch, then one by one
    assert await keys(store) == {"a", "c"}  # the bad item's insert was rolled back


async def test_a_wrong_result_count_is_a_failed_batch(store: Store) -> None:
    def batch(items: list[str]) -> list[str]:
        return items[:1]

    release, held = await hold_thread(store)
    futures = [asyncio.ensure_future(store.write_many(batch, k)) for k in ("x", "y")]
    await asyncio.sleep(0)
    release.set()
    async with asyncio.timeout(5):
        assert await asyncio.gather(*futures) == ["x", "y"]  # retried item by item
        await held


async def test_a_database_failure_fails_the_group(store: Store) -> None:
    def batch(items: list[str]) -> list[str]:
        Meta.insert_many([{"key": k, "value": "v"} for k in items]).execute()
        raise OperationalError("disk I/O error")

    release, held = await hold_thread(store)
    futures = [asyncio.ensure_future(store.write_many(batch, k)) for k in ("p", "q")]
    await asyncio.sleep(0)
    release.set()
    async with asyncio.timeout(5):
        results = await asyncio.gather(*futures, return_exceptions=True)
        await held
    assert all(isinstance(r, StoreUnavailableError) for r in results)
    assert await keys(store) == set()


async def test_a_lone_item_runs_without_a_batch_peer(store: Store) -> None:
    def batch(items: list[str]) -> list[int]:
        Meta.insert(key=items[0], value="v").execute()
        return [len(items)]

    assert await store.write_many(batch, "solo") == 1
    assert await keys(store) == {"solo"}
