"""The outbox SQL on a real SQLite file: claim order, leases, stale records, listeners."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from relay.config import StoreConfig
from relay.core.retry_policy import Verdict
from relay.core.rules import Route, Rules
from relay.outbox import queue as outbox_db
from relay.outbox.queue import Claimed, Outcome
from relay.store import pipeline
from relay.store.database import Store
from relay.store.models import Attempt, Delivery, EndpointState

NOW = 1_800_000_000_000
RULES = Rules(routes=(Route("billing"),))


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = Store(StoreConfig(path=str(tmp_path / "outbox.sqlite3")))
    await s.open()
    yield s
    await s.close()


async def add(store: Store, subject: str, seq: int) -> int:
    """One event for `subject` with sequence `seq`; return its delivery id."""
    def work() -> int:
        view = pipeline.record_event(f"rly_{subject}_{seq}", "subscription.renewed", "{}",
                                     "webhook", "apple", subject, seq, None, NOW, NOW, None,
                                     False, "production", RULES, NOW)
        row: Any = Delivery.get(Delivery.event == view.cursor)
        return int(row.id)
    return await store.write(work)


async def claim(store: Store, now: int = NOW, limit: int = 10) -> list[Claimed]:
    return await store.write(lambda: outbox_db.claim("billing", limit, now, now + 60_000))


async def set_status(store: Store, delivery_id: int, status: str) -> None:
    await store.write(lambda: Delivery.update(status=status, claimed_until_ms=None).where(
        Delivery.id == delivery_id).execute())


async def statuses(store: Store) -> list[str]:
    return await store.read(lambda: [d.status for d in Delivery.select().order_by(Delivery.id)])


def outcome(c: Claimed, verdict: Verdict = Verdict.DELIVERED, status: int = 200) -> Outcome:
    return Outcome(c.id, c.endpoint, c.token, verdict, NOW + 5_000, NOW, 3, status, None, "ok")


async def test_claim_takes_only_the_head_of_each_subject(store: Store) -> None:
    a1, a2 = await add(store, "a", 1), await add(store, "a", 2)
    b1 = await add(store, "b", 1)
    assert {c.id for c in await claim(store)} == {a1, b1}
    assert await claim(store) == []  # leased: not claimed twice
    await set_status(store, a1, "dead")  # dead does not block what follows
    assert [c.id for c in await claim(store)] == [a2]


async def test_a_held_earlier_row_blocks_the_next(store: Store) -> None:
    a1, a2 = await add(store, "a", 1), await add(store, "a", 2)
    await set_status(store, a1, "held")
    assert await claim(store) == []
    await set_status(store, a1, "delivered")
    assert [c.id for c in await claim(store)] == [a2]


async def test_an_expired_lease_is_claimed_again_with_a_new_token(store: Store) -> None:
    a1 = await add(store, "a", 1)
    [first] = await claim(store)
    assert await claim(store, now=NOW + 59_000) == []
    [again] = await claim(store, now=NOW + 61_000)
    assert again.id == a1 and again.token != first.token
    # The first worker's late answer keeps its attempt but not its verdict.
    applied, stale = await store.write(lambda: outbox_db.record([outcome(first)], NOW))
    assert (applied, stale) == ({}, 1)
    row = await store.read(lambda: Delivery.get_by_id(a1))
    assert row.status == "pending" and row.claimed_until_ms == again.token
    assert await store.read(lambda: Attempt.select().count()) == 1
    applied, stale = await store.write(lambda: outbox_db.record([outcome(again)], NOW))
    assert stale == 0
    assert (await store.read(lambda: Delivery.get_by_id(a1))).status == "delivered"


async def test_record_failure_schedules_and_release_makes_due(store: Store) -> None:
    a1, b1 = await add(store, "a", 1), await add(store, "b", 1)
    ca, cb = sorted(await claim(store), key=lambda c: c.id)
    applied, _ = await store.write(lambda: outbox_db.record(
        [outcome(ca, Verdict.RETRY, 500)], NOW))
    assert applied == {a1: "pending"}
    row = await store.read(lambda: Delivery.get_by_id(a1))
    assert (row.attempts, row.next_attempt_ms, row.last_status) == (1, NOW + 5_000, 500)
    assert await store.write(lambda: outbox_db.release([cb], NOW)) == 1
    assert [c.id for c in await claim(store)] == [b1]


async def test_write_without_notify_skips_the_commit_listeners(store: Store) -> None:
    calls: list[int] = []
    store.add_commit_listener(lambda: calls.append(1))
    await store.write(lambda: None, notify=False)
    await store.read(lambda: None)
    assert calls == []
    await store.write(lambda: None)
    await store.read(lambda: None)  # listener calls are queued before the future settles
    assert calls == [1]


async def test_cycle_never_claims_an_endpoint_paused_in_the_database(store: Store) -> None:
    a1, b1 = await add(store, "a", 1), await add(store, "b", 1)
    # Another process paused billing; this one has not seen it (billing is in its wants).
    await store.write(lambda: EndpointState.insert(name="billing", reason="paused",
                                                   since_ms=NOW).execute())
    leases = {"billing": NOW + 60_000}

    def run(wants: dict[str, int], **kw: Any) -> outbox_db.CycleResult:
        return outbox_db.cycle([], wants, NOW, leases, **kw)

    result = await store.write(lambda: run({"billing": 10}))
    assert (result.claimed, result.paused) == ([], {"billing": "paused"})
    assert await statuses(store) == ["held", "held"]  # routed as pending by a stale view
    await set_status(store, b1, "pending")  # routed later, by a process still unaware
    assert (await store.write(lambda: run({}))).claimed == []
    assert await statuses(store) == ["held", "pending"]  # only a sweep looks at it now
    await store.write(lambda: run({}, sweep=True))
    assert await statuses(store) == ["held", "held"]
    # A process that has not seen the pause never releases its held rows either.
    assert await store.write(lambda: outbox_db.release_held(["billing"], NOW)) == 0
    assert (await store.write(lambda: run({"billing": 10}, unhold=["billing"]))).claimed == []
    # Resumed elsewhere: the rows still held (routed as held meanwhile) are released.
    await store.write(lambda: EndpointState.delete().execute())
    result = await store.write(lambda: run({"billing": 10}, unhold=["billing"]))
    assert result.paused == {}
    assert {c.id for c in result.claimed} == {a1, b1}
