"""Re-poll mechanics with a controllable clock and a scripted fetcher (Attesto wiring: later)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from relay.core.domain import PurchaseView, Snapshot, State
from relay.core.errors import UpstreamUnavailableError
from relay.runtime import Runtime
from relay.scheduler.clock import Scheduler
from relay.scheduler.ratelimit import TokenBucket
from relay.scheduler.repoll import Outcome, Polled, Poller, apply_polls, claim_due, due_stats
from relay.store import pipeline
from relay.store.database import Store
from relay.store.housekeeping import prune
from relay.store.leases import take_lease
from relay.store.models import Delivery, Event, Inbox, Purchase
from tests.conftest import Clock, make_config

HOUR = 3_600_000
DAY = 24 * HOUR


@pytest.fixture
async def env(tmp_path: Path, clock: Clock) -> AsyncIterator[tuple[Store, Runtime]]:
    cfg = make_config(tmp_path)
    store = Store(cfg.store)
    await store.open()
    yield store, Runtime(cfg, clock)
    await store.close()


def snap(now_ms: int, **kw: object) -> Snapshot:
    base: dict[str, object] = dict(platform="apple", subject_key="o1", source="verify",
                                   observed_ms=now_ms, received_ms=now_ms, state=State.ACTIVE,
                                   expires_ms=now_ms + DAY, latest_ref="t1",
                                   product_id="premium")
    base.update(kw)
    return Snapshot(**base)  # type: ignore[arg-type]


class ScriptedFetch:
    def __init__(self) -> None:
        self.results: list[object] = []
        self.calls: list[PurchaseView] = []

    async def __call__(self, view: PurchaseView) -> Snapshot | None:
        self.calls.append(view)
        result = self.results.pop(0) if self.results else None
        if isinstance(result, BaseException):
            raise result
        return result  # type: ignore[return-value]


def poller(store: Store, runtime: Runtime, fetch: ScriptedFetch) -> Poller:
    return Poller(store, runtime, fetch, TokenBucket(1000, 1000))


async def row(store: Store) -> Purchase:
    return await store.read(lambda: Purchase.get())


async def test_apple_keeps_access_through_grace_then_expires_renewal_not_seen(
        env: tuple[Store, Runtime], clock: Clock) -> None:
    store, runtime = env
    now = runtime.now_ms()
    await store.write(lambda: pipeline.apply(snap(now), runtime.rules, now))
    fetch = ScriptedFetch()
    p = poller(store, runtime, fetch)
    # After expiry (+ poll delay) the row is due; Attesto still shows the old transaction.
    clock.advance(DAY / 1000 + runtime.config.scheduler.poll_after_expiry_s)
    fetch.results.append(snap(now, source="poll"))
    assert await p.run_due(10) == [Outcome.UNCHANGED]
    r = await row(store)
    assert r.state == "active"
    assert r.next_poll_ms == r.expires_ms + runtime.config.scheduler.apple_renewal_grace_s * 1000
    # At grace end: expired with renewal_not_seen, and an event says so.
    clock.now = r.next_poll_ms / 1000
    fetch.results.append(snap(now, source="poll"))
    assert await p.run_due(10) == [Outcome.EXPIRED_NO_RENEWAL]
    r = await row(store)
    assert (r.state, r.state_reason) == ("expired", "renewal_not_seen")
    last = await store.read(lambda: Event.select().order_by(Event.cursor.desc()).get())
    body = json.loads(last.body)
    assert body["type"] == "subscription.expired" and body["reason"] == "renewal_not_seen"
    assert body["source"] == "poll"
    # A later renewal (webhook) makes it active again.
    later = runtime.now_ms() + 1000
    await store.write(lambda: pipeline.apply(snap(later, source="webhook",
                                                   expires_ms=later + 30 * DAY,
                                                   event_type="subscription.renewed",
                                                   latest_ref="t2"), runtime.rules, later))
    assert (await row(store)).state == "active"


async def test_refund_found_by_poll_revokes_at_once(env: tuple[Store, Runtime]) -> None:
    store, runtime = env
    now = runtime.now_ms()
    await store.write(lambda: pipeline.apply(snap(now), runtime.rules, now))
    await store.write(lambda: Purchase.update(next_poll_ms=now).execute())
    fetch = ScriptedFetch()
    fetch.results.append(snap(now, state=State.REFUNDED))
    assert await poller(store, runtime, fetch).run_due(10) == [Outcome.CHANGED]
    r = await row(store)
    assert r.state == "refunded" and r.next_poll_ms is None  # terminal: never polled again
    assert fetch.calls[0].latest_ref == "t1"


async def test_poll_results_stored_together_are_applied_as_one_by_one(
        env: tuple[Store, Runtime]) -> None:
    store, runtime = env
    now = runtime.now_ms()
    for key in ("o1", "o2", "o3"):
        await store.write(lambda key=key: pipeline.apply(  # type: ignore[misc]
            snap(now, subject_key=key), runtime.rules, now))
    views = {r.subject_key: r for r in await store.read(
        lambda: [pipeline.view_of(p) for p in Purchase.select()])}
    gone = dataclasses.replace(views["o1"], subject_key="gone")
    items = [Polled(views["o1"], snap(now, source="poll", state=State.REFUNDED), runtime, now),
             Polled(views["o2"], snap(now, source="poll", subject_key="o2"), runtime, now),
             Polled(views["o3"], None, runtime, now), Polled(gone, None, runtime, now)]
    assert [o for o, _ in await store.write(lambda: apply_polls(items))] == [
        Outcome.CHANGED, Outcome.UNCHANGED, Outcome.NO_STATE, Outcome.GONE]
    rows = {r.subject_key: r for r in await store.read(lambda: list(Purchase.select()))}
    assert rows["o1"].state == "refunded" and rows["o1"].next_poll_ms is None
    assert rows["o2"].state == rows["o3"].state == "active"
    assert rows["o2"].next_poll_ms == rows["o3"].next_poll_ms is not None
    # The same purchase twice in one batch: item by item, the second sees the first.
    again = [Polled(views["o2"], snap(now, source="poll", subject_key="o2"), runtime, now)] * 2
    assert [o for o, _ in await store.write(lambda: apply_polls(again))] == [
        Outcome.UNCHANGED, Outcome.UNCHANGED]
    assert await store.read(lambda: Event.select().count()) == 4  # 3 purchases, 1 refund


async def test_failed_call_changes_nothing_and_backs_off(env: tuple[Store, Runtime]) -> None:
    store, runtime = env
    now = runtime.now_ms()
    await store.write(lambda: pipeline.apply(snap(now), runtime.rules, now))
    await store.write(lambda: Purchase.update(next_poll_ms=now).execute())
    before = await row(store)
    fetch = ScriptedFetch()
    fetch.results.append(UpstreamUnavailableError("429", retry_after_s=120))
    p = poller(store, runtime, fetch)
    assert await p.run_due(10) == [Outcome.FAILED]
    after = await row(store)
    assert (after.state, after.expires_ms, after.sequence) == (
        before.state, before.expires_ms, before.sequence)
    assert after.poll_failures == 1 and after.next_poll_ms >= now + 120_000
    assert p.bucket.delay_s() > 100  # the bucket honours Retry-After
    assert await store.read(lambda: Event.select().count()) == 1


async def test_claim_takes_due_rows_once_oldest_first(env: tuple[Store, Runtime]) -> None:
    store, runtime = env
    now = runtime.now_ms()
    for i in range(5):
        s = snap(now, subject_key=f"o{i}")
        await store.write(lambda s=s: pipeline.apply(s, runtime.rules, now))
        await store.write(lambda i=i: Purchase.update(next_poll_ms=now - i).where(
            Purchase.subject_key == f"o{i}").execute())
    assert await store.read(lambda: due_stats(now)) == (5, now - 4)
    first = await store.write(lambda: claim_due(now, 3))
    assert [v.subject_key for v in first] == ["o4", "o3", "o2"]
    second = await store.write(lambda: claim_due(now, 10))
    assert [v.subject_key for v in second] == ["o1", "o0"]
    assert await store.write(lambda: claim_due(now, 10)) == []


async def test_terminal_rows_are_not_polled(env: tuple[Store, Runtime]) -> None:
    store, runtime = env
    now = runtime.now_ms()
    await store.write(lambda: pipeline.apply(snap(now, state=State.REVOKED), runtime.rules,
                                             now))
    assert (await row(store)).next_poll_ms is None
    assert await store.write(lambda: claim_due(now + 365 * DAY, 10)) == []


async def test_lease_is_exclusive_until_it_lapses(env: tuple[Store, Runtime]) -> None:
    store, _ = env
    assert await store.write(lambda: take_lease("repoll", "a", 1000, 0))
    assert not await store.write(lambda: take_lease("repoll", "b", 1000, 500))
    assert await store.write(lambda: take_lease("repoll", "a", 1000, 600))  # renew
    assert await store.write(lambda: take_lease("repoll", "b", 1000, 1601))  # lapsed


async def test_prune_deletes_delivered_in_batches_never_pending(
        env: tuple[Store, Runtime]) -> None:
    store, runtime = env
    now = runtime.now_ms()
    for i in range(7):
        s = snap(now, subject_key=f"o{i}")
        await store.write(lambda s=s: pipeline.apply(s, runtime.rules, now))

    def seed() -> None:
        ev = Event.select().first()
        Delivery.insert_many([
            {"event": ev.cursor, "endpoint": f"e{i}", "subject": "s", "sequence": 1,
             "status": "delivered" if i < 5 else ("pending" if i == 5 else "dead"),
             "next_attempt_ms": 0, "created_ms": 0, "delivered_ms": 0 if i < 5 else None}
            for i in range(7)]).execute()
        Inbox.insert_many([{"event_id": f"evt_{i}", "event_type": "t", "received_ms": i,
                            "signature_t": 0, "headers": "{}", "body": b"{}"}
                           for i in range(3)]).execute()

    await store.write(seed)
    pruned = await prune(store, now, 1, 1, batch=2)
    assert pruned.deliveries == 5 and pruned.inbox_bodies == 3
    left = await store.read(lambda: sorted(d.status for d in Delivery.select()))
    assert left == ["dead", "pending"]
    # The inbox rows stay: their eventIds are the dedupe keys; only the bodies went.
    inbox = await store.read(lambda: [(r.event_id, bytes(r.body)) for r in Inbox.select()
                                      .order_by(Inbox.event_id)])
    assert inbox == [("evt_0", b""), ("evt_1", b""), ("evt_2", b"")]


async def test_scheduler_starts_ticks_and_stops_cleanly(env: tuple[Store, Runtime]) -> None:
    store, runtime = env
    now = runtime.now_ms()
    await store.write(lambda: pipeline.apply(snap(now), runtime.rules, now))
    await store.write(lambda: Purchase.update(next_poll_ms=now).execute())
    fetch = ScriptedFetch()
    sched = Scheduler(store, runtime, poller(store, runtime, fetch))
    sched.start()
    assert sched.running
    assert await sched.repoll_tick() == 1
    assert await sched.repoll_tick() == 0  # claimed: not taken twice
    await sched.stop()
    assert not sched.running
    assert len(fetch.calls) <= 1


async def test_a_stored_answer_resets_the_failure_count(env: tuple[Store, Runtime]) -> None:
    store, runtime = env
    now = runtime.now_ms()
    for key in ("o1", "o2"):
        await store.write(lambda key=key: pipeline.apply(  # type: ignore[misc]
            snap(now, subject_key=key), runtime.rules, now))
    views = {r.subject_key: r for r in await store.read(
        lambda: [pipeline.view_of(p) for p in Purchase.select()])}
    await store.write(lambda: Purchase.update(poll_failures=3).execute())
    items = [Polled(views["o1"], snap(now, source="poll"), runtime, now),
             Polled(views["o2"], snap(now, source="poll", subject_key="o2",
                                      state=State.REFUNDED), runtime, now)]
    assert [o for o, _ in await store.write(lambda: apply_polls(items))] == [
        Outcome.UNCHANGED, Outcome.CHANGED]
    rows = {r.subject_key: r for r in await store.read(lambda: list(Purchase.select()))}
    assert rows["o1"].poll_failures == rows["o2"].poll_failures == 0
    assert rows["o1"].next_poll_ms is not None and rows["o1"].next_poll_ms > now
