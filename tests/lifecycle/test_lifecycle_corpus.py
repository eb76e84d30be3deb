"""The lifecycle corpus runner (tests/lifecycle/corpus.py): one runner, every scenario.

In order: after each step, the stored purchase row (read from the store), what
`GET /v1/users/{id}/entitlements` grants, and the events relayed by that step (type,
state, user) are what the scenario says; a failure names the scenario and the step.

Out of order: for every pair of webhook deliveries (i, j) of a scenario, j is delivered
right before i (everything else in place), as Attesto's retries and the stores' own
delivery reorder them. What the store answers moves with the notification it explains
(the `play`/`apple_store` steps right before j), and a store answer never goes back to an
older one (a Play answer set earlier in the scenario does not replace a newer one). The
scenario must end where it ends in order (a Google purchase after a final re-verify),
and no delivery may be lost: each one is relayed.
"""

from __future__ import annotations

from itertools import combinations
from typing import Any

import pytest

from relay.store.models import Event, Purchase
from relay.web.appkeys import STORE_KEY
from tests.lifecycle.corpus import SCENARIOS, T0, Expect, Scenario, Step, store_time_ms
from tests.lifecycle.harness import Relay


async def run_step(life: Relay, s: Scenario, index: int, step: Step,
                   answered: dict[str, int] | None = None) -> None:
    """`answered`: the index of the newest store answer set per id (out-of-order runs)."""
    eid = f"evt_{s.key}_{index:02d}"
    sent = store_time_ms(step)
    if sent is not None and sent > life.now_ms:  # the store sent it then: the clock is there
        life.clock.now = sent / 1000
    if step.kind == "apple":
        await life.apple_webhook(step.payload, eid=eid)
    elif step.kind == "google":
        note, root = step.payload
        await life.google_webhook(note, root=root, eid=eid)
    elif step.kind == "void":
        await life.google_webhook(step.payload, root=None, eid=eid)
    elif step.kind == "verify_apple":
        await life.verify_apple(s.user, step.payload["transactionId"])
    elif step.kind == "verify_google":
        token, product = step.payload
        await life.verify_google(s.user, token, product)
    elif step.kind == "apple_store":
        tid = step.payload["transactionId"]
        if answered is None or answered.setdefault(tid, index) <= index:
            life.attesto.apple[tid] = step.payload
            if answered is not None:
                answered[tid] = index
    elif step.kind == "play":
        token, sub, product = step.payload
        if answered is None or answered.setdefault(token, index) <= index:
            life.attesto.google[token] = (sub, product)
            if answered is not None:
                answered[token] = index
    elif step.kind == "repoll":
        await life.repoll()
    elif step.kind == "clock":  # to T0 + payload seconds, unless a delivery moved it later
        life.clock.now = max(life.clock.now, T0 / 1000 + step.payload)
    else:  # pragma: no cover - a corpus typo
        raise AssertionError(f"unknown step kind {step.kind!r}")


async def observe(life: Relay, s: Scenario) -> tuple[dict[str, Any] | None, list[str]]:
    return await life.row(s.platform, s.key), await life.entitlements(s.user)


def check(s: Scenario, index: int, step: Step, expect: Expect, row: dict[str, Any] | None,
          entitled: list[str], events: list[dict[str, Any]] | None) -> None:
    where = f"{s.name!r} step {index} ({step.name}) [{s.cite}]"
    assert row is not None, f"{where}: no purchase row"
    if expect.state is not None:
        assert row["state"] == expect.state, f"{where}: state {row['state']!r}"
    if expect.entitled is not None:
        assert entitled == sorted(expect.entitled), f"{where}: entitlements {entitled}"
    if expect.expires_ms is not None:
        assert row["expires_ms"] == expect.expires_ms, f"{where}: expires {row['expires_ms']}"
    if expect.latest_ref is not None:
        assert row["latest_ref"] == expect.latest_ref, f"{where}: latest {row['latest_ref']}"
    if expect.product is not None:
        assert row["product_id"] == expect.product, f"{where}: product {row['product_id']}"
    if expect.events is not None and events is not None:
        got = [(e["type"], e["state"]) for e in events]
        assert got == list(expect.events), f"{where}: relayed {got}"
    for e in events or ():
        assert e["subject_key"] == s.key and e["platform"] == s.platform, f"{where}: {e}"
        assert e["user_id"] == row["user_id"], f"{where}: event user {e['user_id']}"


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
async def test_in_order(life: Relay, scenario: Scenario) -> None:
    for index, step in enumerate(scenario.steps):
        await run_step(life, scenario, index, step)
        events = await life.new_events()
        if step.expect is not None:
            row, entitled = await observe(life, scenario)
            check(scenario, index, step, step.expect, row, entitled, events)


def _pairs() -> list[tuple[Scenario, int, int]]:
    out = []
    for s in SCENARIOS:
        deliveries = [i for i, step in enumerate(s.steps) if step.delivery]
        out.extend((s, i, j) for i, j in combinations(deliveries, 2))
    return out


PAIRS = _pairs()


def _final(s: Scenario) -> Expect:
    last = next(step.expect for step in reversed(s.steps)
                if step.expect is not None and step.expect.state is not None)
    return Expect(last.state, last.entitled)


@pytest.mark.parametrize(("scenario", "i", "j"), PAIRS,
                         ids=[f"{s.name}: {s.steps[j].name} before {s.steps[i].name}"
                              for s, i, j in PAIRS])
async def test_pair_out_of_order(life: Relay, scenario: Scenario, i: int, j: int) -> None:
    moved = [j]
    while moved[0] - 1 > i and scenario.steps[moved[0] - 1].kind in ("play", "apple_store"):
        moved.insert(0, moved[0] - 1)
    order = [k for k in range(len(scenario.steps)) if k not in moved]
    at = order.index(i)
    order[at:at] = moved
    answered: dict[str, int] = {}
    for index in order:
        await run_step(life, scenario, index, scenario.steps[index], answered)
    if scenario.platform == "google":  # Play's answer now is the truth: re-verify once more
        await life.client.app[STORE_KEY].write(
            lambda: Purchase.update(next_poll_ms=0).execute())
        await life.repoll()
    expect, why = scenario.order_exceptions.get((i, j), (_final(scenario), ""))
    row, entitled = await observe(life, scenario)
    where = (f"{scenario.name!r}: {scenario.steps[j].name!r} delivered before "
             f"{scenario.steps[i].name!r} {why}")
    assert row is not None, where
    assert row["state"] == expect.state, f"{where}: state {row['state']!r}"
    if expect.entitled is not None:
        assert entitled == sorted(expect.entitled), f"{where}: entitlements {entitled}"
    # Nothing lost: every delivery was stored and relayed (stale or not).
    delivered = {f"evt_{scenario.key}_{k:02d}" for k in order if scenario.steps[k].delivery}

    def relayed() -> set[str]:
        return {e.attesto_event_id for e in Event.select(Event.attesto_event_id)
                if e.attesto_event_id}
    assert delivered <= await life.client.app[STORE_KEY].read(relayed), where
