"""Verifies that queue up behind a busy store share one `apply_verifies` call: the
result is what the same verifies one at a time give, and a refused one fails alone."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from relay.attesto.simulator import AttestoSimulator
from relay.core.errors import ConflictError
from relay.verify import verifier as verification
from relay.verify.verifier import AppleItem, GoogleItem, Item, Outcome, Verifier
from tests.conftest import Clock
from tests.support.verify import (
    DAY_MS,
    complete,
    event_types,
    open_verifier,
    row,
    verify_config,
    with_policy,
)

CALLS: list[tuple[str, Item]] = [
    ("user-1", AppleItem("t1")),
    ("user-1", AppleItem("t1")),  # the same purchase again: no new event
    ("user-2", AppleItem("t2")),
    ("user-2", AppleItem("t3")),  # o2 renewed, in the same batch as its purchase
    ("user-2", AppleItem("t2")),  # an older period after a newer one: changes nothing
    ("user-3", GoogleItem("com.example.app", "premium", "g1", "subscription")),
    ("user-3", GoogleItem("com.example.app", "premium", "g2", "subscription")),  # upgrade
    ("user-3", GoogleItem("com.example.app", "premium", "g3", "subscription")),  # again
    ("user-3", AppleItem("t4")),
    ("user-1", AppleItem("t5")),  # user-1's second purchase: both in the entitlements
]
KEYS = ("o1", "o2", "g1", "g2", "g3", "o4", "o5")


def stock(sim: AttestoSimulator, now: int) -> None:
    for txn, orig, days in (("t1", "o1", 30), ("t2", "o2", 30), ("t3", "o2", 60),
                            ("t4", "o4", 30), ("t5", "o5", 30)):
        sim.add_apple(transaction_id=txn, original_transaction_id=orig,
                      product_id="premium.monthly", expires_ms=now + days * DAY_MS,
                      purchase_ms=now - 60_000)
    sim.add_google(token="g1", product_id="premium", expiry_ms=now + DAY_MS, start_ms=now)
    # g2 replaces g1, g3 replaces g2: one row (key g1), found through its newest token
    sim.add_google(token="g2", product_id="premium", expiry_ms=now + 2 * DAY_MS,
                   start_ms=now, linked_token="g1")
    sim.add_google(token="g3", product_id="premium", expiry_ms=now + 3 * DAY_MS,
                   start_ms=now, linked_token="g2")


async def hold(verifier: Verifier) -> tuple[threading.Event, asyncio.Future[None]]:
    started, release = threading.Event(), threading.Event()

    def block() -> None:
        started.set()
        release.wait(10)

    held = asyncio.ensure_future(verifier.store.read(block))
    await asyncio.get_running_loop().run_in_executor(None, started.wait, 10)
    return release, held


async def batched(verifier: Verifier, calls: Sequence[tuple[str, Item]]
                  ) -> list[Outcome | BaseException]:
    """Start each verify once the one before has queued its write, then let the store go."""
    release, held = await hold(verifier)
    queue = verifier.store._queue
    tasks = []
    for user, item in calls:
        before = queue.qsize()
        tasks.append(asyncio.ensure_future(verifier.verify(user, item)))
        async with asyncio.timeout(10):
            while queue.qsize() == before and not tasks[-1].done():
                await asyncio.sleep(0.005)
    release.set()
    async with asyncio.timeout(10):
        results = await asyncio.gather(*tasks, return_exceptions=True)
        await held
    return results


def summary(outcome: Outcome | BaseException) -> Any:
    if isinstance(outcome, BaseException):
        return type(outcome).__name__
    assert outcome.purchase is not None
    return (outcome.purchase.subject_key, outcome.purchase.state, outcome.events,
            outcome.granted, sorted(e.key for e in outcome.entitlements))


async def test_a_batch_gives_what_one_at_a_time_gives(
        tmp_path: Path, sim: AttestoSimulator, attesto_url: str, clock: Clock,
        monkeypatch: pytest.MonkeyPatch) -> None:
    stock(sim, int(clock() * 1000))
    sizes: list[int] = []
    real = verification.apply_verifies

    def spy(writes: list[verification.VerifyWrite]) -> Any:
        sizes.append(len(writes))
        return real(writes)

    monkeypatch.setattr(verification, "apply_verifies", spy)
    async with open_verifier(verify_config(tmp_path / "one", attesto_url), clock) as one:
        alone = [await one.verify(user, item) for user, item in CALLS]
        rows_alone = {k: complete(await row(one, p, k)) for p, k in
                      (("apple", "o1"), ("apple", "o2"), ("google", "g1"), ("apple", "o4"))}
        events_alone = {k: await event_types(one, k) for k in KEYS}
    assert sizes == [1] * len(CALLS)
    sizes.clear()
    async with open_verifier(verify_config(tmp_path / "many", attesto_url), clock) as many:
        together = await batched(many, CALLS)
        rows_together = {k: complete(await row(many, p, k)) for p, k in
                         (("apple", "o1"), ("apple", "o2"), ("google", "g1"), ("apple", "o4"))}
        events_together = {k: await event_types(many, k) for k in KEYS}
    assert sizes[0] == len(CALLS)  # one call for all of them
    # The answers agree, except that entitlements are read once the whole batch is in:
    # every answer shows its user's after the last verify (user-1's first ones count t5).
    last = {user: summary(alone[i])[4] for i, (user, _) in enumerate(CALLS)}
    for (user, _), a, b in zip(CALLS, alone, together, strict=True):
        assert summary(a)[:4] == summary(b)[:4]
        assert summary(b)[4] == last[user]
    assert last["user-1"] == ["premium", "premium"]  # one per purchase
    assert rows_together == rows_alone
    assert events_together == events_alone
    assert events_together["o1"] == ["subscription.purchased"]
    assert events_together["o2"] == ["subscription.purchased", "subscription.renewed"]
    assert events_together["g2"] == events_together["g3"] == []  # g1's row took them


async def test_a_refused_verify_in_a_batch_fails_alone(
        tmp_path: Path, sim: AttestoSimulator, attesto_url: str, clock: Clock) -> None:
    stock(sim, int(clock() * 1000))
    async with open_verifier(verify_config(tmp_path, attesto_url), clock) as verifier:
        with_policy(verifier, "keep")
        await verifier.verify("user-1", AppleItem("t1"))
        results = await batched(verifier, [("user-2", AppleItem("t2")),
                                           ("user-9", AppleItem("t1")),  # user-1's purchase
                                           ("user-3", AppleItem("t4"))])
        assert isinstance(results[1], ConflictError)
        assert [summary(results[0])[0], summary(results[2])[0]] == ["o2", "o4"]
        assert (await row(verifier, "apple", "o1")).user_id == "user-1"  # type: ignore[union-attr]
        assert await event_types(verifier, "o1") == ["subscription.purchased"]
