"""Re-poll claims (in memory when the process owns the SQLite file, durable otherwise)
and the re-poll log line."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from relay.core.domain import PurchaseView, Snapshot, State
from relay.runtime import Runtime
from relay.scheduler.claims import CLAIM_MS
from relay.scheduler.ratelimit import TokenBucket
from relay.scheduler.repoll import Outcome, Poller, due_stats
from relay.store import pipeline
from relay.store.database import Store
from relay.store.models import Purchase
from tests.conftest import Clock, make_config
from tests.scheduler.test_repoll import ScriptedFetch, snap
from tests.support.store import sqlite_only


class GatedFetch:
    """Answers only when `gate` is set; records what it was asked."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.calls: list[str] = []

    async def __call__(self, view: PurchaseView) -> Snapshot | None:
        self.calls.append(view.subject_key)
        await self.gate.wait()
        return None  # no usable state: rescheduled by policy


async def _seed(store: Store, runtime: Runtime, keys: list[str]) -> int:
    """Rows due now, the first key oldest; return now."""
    now = runtime.now_ms()
    for i, key in enumerate(keys):
        await store.write(lambda key=key: pipeline.apply(  # type: ignore[misc]
            snap(now, subject_key=key), runtime.rules, now))
        await store.write(lambda key=key, i=i: Purchase.update(  # type: ignore[misc]
            next_poll_ms=now - len(keys) + i).where(Purchase.subject_key == key).execute())
    return now


async def _next_poll(store: Store, key: str) -> int | None:
    return await store.read(lambda: Purchase.get(Purchase.subject_key == key).next_poll_ms)


@pytest.fixture
async def owned(tmp_path: Path, clock: Clock) -> AsyncIterator[tuple[Store, Runtime]]:
    cfg = make_config(tmp_path)
    store = Store(cfg.store)
    await store.open()
    yield store, Runtime(cfg, clock)
    await store.close()


@sqlite_only
async def test_claim_in_memory_holds_a_row_while_its_poll_is_in_flight(
        owned: tuple[Store, Runtime]) -> None:
    store, runtime = owned
    now = await _seed(store, runtime, ["o1", "o2", "o3"])
    fetch = GatedFetch()
    p = Poller(store, runtime, fetch, TokenBucket(1000, 1000))
    assert p.claims.in_memory
    first = await p.claim(now, 2)
    assert [v.subject_key for v in first] == ["o1", "o2"]  # oldest first
    assert await _next_poll(store, "o1") == now - 3  # a read: nothing written
    tasks = [asyncio.create_task(p.poll_one(v)) for v in first]
    await asyncio.sleep(0.05)
    assert sorted(fetch.calls) == ["o1", "o2"]
    assert [v.subject_key for v in await p.claim(now, 10)] == ["o3"]
    assert await p.claim(now, 10) == []  # in flight or claimed: none taken twice
    fetch.gate.set()
    assert await asyncio.gather(*tasks) == [Outcome.NO_STATE, Outcome.NO_STATE]
    # The outcome ended the claim and set the next due time: not due before it.
    assert p.claims.held() == 1  # o3's, never polled
    due_at = await _next_poll(store, "o1")
    assert due_at is not None and due_at > now
    assert due_at > now + CLAIM_MS
    assert await p.claim(now + 1, 10) == []  # o3 still held, o1 and o2 not due
    assert [v.subject_key for v in await p.claim(due_at - 1, 10)] == ["o3"]  # lapsed
    assert [v.subject_key for v in await p.claim(due_at, 10)] == ["o1", "o2"]


@sqlite_only
async def test_claim_in_memory_lapses_after_claim_ms(owned: tuple[Store, Runtime]) -> None:
    store, runtime = owned
    now = await _seed(store, runtime, ["o1"])
    p = Poller(store, runtime, GatedFetch(), TokenBucket(1000, 1000))
    stale = await p.claim(now, 10)
    assert [v.subject_key for v in stale] == ["o1"]
    assert await p.claim(now + CLAIM_MS - 1, 10) == []
    fresh = await p.claim(now + CLAIM_MS, 10)  # its poll never stored an outcome
    assert [v.subject_key for v in fresh] == ["o1"]
    p.claims.release(stale[0])  # the lapsed claim's late end keeps the new claim
    assert await p.claim(now + CLAIM_MS, 10) == []
    p.claims.release(fresh[0])
    assert [v.subject_key for v in await p.claim(now + CLAIM_MS, 10)] == ["o1"]


@sqlite_only
async def test_claim_in_memory_skips_many_held_rows(owned: tuple[Store, Runtime]) -> None:
    store, runtime = owned
    now = runtime.now_ms()
    keys = [f"k{i:04d}" for i in range(1200)]
    await store.write(lambda: pipeline.apply(snap(now, subject_key="first"), runtime.rules,
                                             now))
    template = await store.read(lambda: Purchase.get().__data__)

    def seed() -> None:
        Purchase.update(next_poll_ms=now - 5000).execute()
        Purchase.insert_many([{**template, "subject_key": k, "next_poll_ms": now - 1200 + i}
                              for i, k in enumerate(keys)]).execute()

    await store.write(seed)
    p = Poller(store, runtime, GatedFetch(), TokenBucket(1000, 1000))
    taken: list[str] = []
    for size in (1, 700, 300, 500):
        taken.extend(v.subject_key for v in await p.claim(now, size))
    assert taken == ["first", *keys]
    assert await p.claim(now, 10) == []


async def test_shared_file_or_postgres_keeps_the_durable_claim(
        tmp_path: Path, clock: Clock) -> None:
    cfg = make_config(tmp_path)
    store = Store(cfg.store, shared=True)  # worker processes (PostgreSQL: always)
    await store.open()
    try:
        runtime = Runtime(cfg, clock)
        now = await _seed(store, runtime, ["o1", "o2"])
        p = Poller(store, runtime, GatedFetch(), TokenBucket(1000, 1000))
        assert not p.claims.in_memory
        assert [v.subject_key for v in await p.claim(now, 1)] == ["o1"]
        assert await _next_poll(store, "o1") == now + CLAIM_MS  # written and committed
        assert await _next_poll(store, "o2") == now - 1
        assert p.claims.held() == 0
        assert [v.subject_key for v in await p.claim(now, 10)] == ["o2"]
        assert await p.claim(now, 10) == []
    finally:
        await store.close()


async def test_an_unchanged_poll_logs_at_debug_a_change_at_info(
        owned: tuple[Store, Runtime], caplog: pytest.LogCaptureFixture) -> None:
    store, runtime = owned
    now = await _seed(store, runtime, ["o1", "o2"])
    fetch = ScriptedFetch()
    fetch.results += [snap(now, source="poll"), snap(now, source="poll", subject_key="o2",
                                                     state=State.REFUNDED)]
    p = Poller(store, runtime, fetch, TokenBucket(1000, 1000))
    with caplog.at_level(logging.DEBUG, logger="relay.repoll"):
        assert await p.run_due(1) == [Outcome.UNCHANGED]
        assert await p.run_due(1) == [Outcome.CHANGED]
    lines = [(r.levelno, r.getMessage().split()[-2]) for r in caplog.records
             if r.name == "relay.repoll"]
    assert lines == [(logging.DEBUG, "outcome=unchanged"), (logging.INFO, "outcome=changed")]


@sqlite_only
async def test_after_a_crash_rows_in_flight_are_due_at_once(
        owned: tuple[Store, Runtime]) -> None:
    store, runtime = owned
    now = await _seed(store, runtime, ["o1", "o2"])
    crashed = Poller(store, runtime, GatedFetch(), TokenBucket(1000, 1000))
    assert len(await crashed.claim(now, 10)) == 2  # its polls never finish
    restarted = Poller(store, runtime, GatedFetch(), TokenBucket(1000, 1000))
    assert [v.subject_key for v in await restarted.claim(now, 10)] == ["o1", "o2"]


@pytest.mark.parametrize("durable", [False, True])
async def test_rows_in_flight_are_not_counted_as_due(
        owned: tuple[Store, Runtime], durable: bool) -> None:
    """`relay due`, /metrics and the console count what waits for a poll, as before the
    in-memory claims: a claimed row whose poll is in flight is not due."""
    store, runtime = owned
    now = await _seed(store, runtime, ["d1", "d2", "d3"])
    p = Poller(store, runtime, GatedFetch(), TokenBucket(1000, 1000))
    if durable:
        p.claims.in_memory = False  # what a shared file or PostgreSQL does
    assert await store.read(lambda: due_stats(now, p.claims.held_rowids(now))) == (3, now - 3)
    await p.claim(now, 2)  # d1 and d2, the oldest
    assert await store.read(lambda: due_stats(now, p.claims.held_rowids(now))) == (1, now - 1)
    later = now + CLAIM_MS  # the claims lapsed: due again
    due_later = await store.read(lambda: due_stats(later, p.claims.held_rowids(later)))
    assert due_later[0] == 3
