"""pipeline.apply / apply_many on a real SQLite store, through the prebuilt statements."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from relay.core import relayed
from relay.core.domain import Snapshot, State
from relay.core.errors import ConflictError
from relay.core.rules import Route, Rules
from relay.store import pipeline, statements
from relay.store.database import Store
from relay.store.models import AppUser, Delivery, Event, Purchase
from tests.support.store import store_config

NOW = 1_800_000_000_000
RULES = Rules(
    routes=(Route("all"), Route("apple-only", platforms=("apple",)),
            Route("refunds", events=("subscription.refunded",)),
            Route("paused", active=False)),
    entitlements={"premium": ("gold",)})


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = Store(store_config(tmp_path, "p"))
    await s.open()
    yield s
    await s.close()


def snap(**kw: Any) -> Snapshot:
    values: dict[str, Any] = {"platform": "apple", "subject_key": "o1", "source": "verify",
                              "observed_ms": NOW, "received_ms": NOW, "kind": "subscription",
                              "product_id": "premium", "state": State.ACTIVE,
                              "expires_ms": NOW + 86_400_000, "auto_renew": True}
    values.update(kw)
    return Snapshot(**values)


async def rows(store: Store) -> dict[str, Any]:
    def run() -> dict[str, Any]:
        return {
            "purchases": [pipeline.view_of(p) for p in Purchase.select().order_by(
                Purchase.platform, Purchase.subject_key)],
            "events": [json.loads(e.body) for e in Event.select().order_by(Event.cursor)],
            "deliveries": sorted((d.endpoint, d.status, d.subject, d.sequence)
                                 for d in Delivery.select()),
        }
    return await store.read(run)


async def test_new_purchase_event_and_fan_out(store: Store) -> None:
    applied = await store.write(lambda: pipeline.apply(snap(), RULES, NOW))
    assert applied.purchase is not None and applied.purchase.state == "active"
    [event] = applied.events
    assert event.type == "subscription.purchased" and event.sequence == 1
    assert event.deliveries == 3
    got = await rows(store)
    assert got["deliveries"] == [("all", "pending", "apple:o1", 1),
                                 ("apple-only", "pending", "apple:o1", 1),
                                 ("paused", "held", "apple:o1", 1)]
    assert got["events"][0]["entitlements"] == ["gold"]
    assert got["purchases"][0] == dataclasses.replace(applied.purchase)


async def test_round_trip_matches_the_model(store: Store) -> None:
    await store.write(lambda: pipeline.apply(snap(auto_renew=False), RULES, NOW))
    view = await store.read(lambda: statements.load_purchase("apple", "o1"))
    peewee_view = (await rows(store))["purchases"][0]
    assert view == peewee_view and view is not None and view.auto_renew is False
    assert await store.read(lambda: statements.load_purchase("apple", "nope")) is None


async def test_stale_is_recorded_and_keeps_state(store: Store) -> None:
    await store.write(lambda: pipeline.apply(snap(), RULES, NOW))
    old = snap(observed_ms=NOW - 1, state=State.EXPIRED, event_type="subscription.expired",
               source="webhook")
    applied = await store.write(lambda: pipeline.apply(old, RULES, NOW + 5))
    assert applied.stale and applied.purchase is not None
    assert applied.purchase.state == "active" and applied.purchase.sequence == 2
    assert (await rows(store))["events"][-1]["stale"] is True


async def test_nothing_new_writes_nothing_but_poll_now_schedules(store: Store) -> None:
    await store.write(lambda: pipeline.apply(snap(), RULES, NOW))
    same = await store.write(lambda: pipeline.apply(snap(), RULES, NOW + 10))
    assert same.events == ()
    again = await store.write(lambda: pipeline.apply(snap(poll_now=True), RULES, NOW + 20))
    assert again.events == ()
    view = await store.read(lambda: statements.load_purchase("apple", "o1"))
    assert view is not None and view.next_poll_ms == NOW + 20 and view.sequence == 1


async def test_app_user_binding_and_owner_conflict(store: Store) -> None:
    await store.write(lambda: AppUser.insert(user_id="alice", app_user_id="u-1",
                                             created_ms=1).execute())
    applied = await store.write(lambda: pipeline.apply(snap(app_user_id="u-1"), RULES, NOW))
    assert applied.purchase is not None and applied.purchase.user_id == "alice"
    keep = dataclasses.replace(RULES, owner_conflict="keep")
    for rules in (keep, RULES):  # bound to alice: refused whatever the policy (issue 16)
        with pytest.raises(ConflictError):
            await store.write(lambda r=rules: pipeline.apply(snap(user_id="bob"), r, NOW + 1))
    assert (await rows(store))["purchases"][0].user_id == "alice"


# Who may take a purchase on a verify: (stored owner, binding's user, policy) -> outcome.
# "?" is a binding relay did not mint; None: no binding / no owner yet.
@pytest.mark.parametrize(("owner", "binding", "policy", "outcome"), [
    (None, None, "transfer", "bob"), (None, None, "keep", "bob"),
    ("alice", None, "transfer", "transferred"), ("alice", None, "keep", 409),
    (None, "alice", "transfer", 409), (None, "alice", "keep", 409),
    ("alice", "alice", "transfer", 409), ("alice", "alice", "keep", 409),
    ("alice", "bob", "transfer", "transferred"), ("alice", "bob", "keep", 409),
    (None, "bob", "keep", "bob"), ("bob", "bob", "keep", "bob"),
    (None, "?", "transfer", "bob"), ("alice", "?", "transfer", 409),
])
async def test_ownership_rule(store: Store, owner: str | None, binding: str | None,
                              policy: str, outcome: Any) -> None:
    for user in ("alice", "bob"):
        await store.write(lambda u=user: AppUser.insert(user_id=u, app_user_id=f"uuid-{u}",
                                                        created_ms=1).execute())
    app_user_id = {None: None, "?": "uuid-unknown"}.get(binding, f"uuid-{binding}")
    rules = dataclasses.replace(RULES, owner_conflict=policy)
    if owner is not None:  # verified before the store reported a binding
        await store.write(lambda: pipeline.apply(snap(user_id=owner), RULES, NOW))
    # bob's verify, where Attesto reports the binding (appUserId)
    bobs = snap(user_id="bob", app_user_id=app_user_id, observed_ms=NOW + 1)
    if outcome == 409:
        with pytest.raises(ConflictError) as err:
            await store.write(lambda: pipeline.apply(bobs, rules, NOW + 1))
        assert err.value.code == "purchase_owned_by_other_user"
        return
    applied = await store.write(lambda: pipeline.apply(bobs, rules, NOW + 1))
    assert applied.purchase is not None and applied.purchase.user_id == "bob"
    assert ("subscription.transferred" in [e.type for e in applied.events]) == (
        outcome == "transferred")


async def test_apply_many_equals_one_by_one(tmp_path: Path) -> None:
    """Several snapshots of one purchase chain: same rows as applying them in turn."""
    batch = [snap(source="webhook", event_type="subscription.purchased"),
             snap(subject_key="o2", source="webhook", event_type="subscription.purchased"),
             snap(observed_ms=NOW + 5, state=State.GRACE, source="webhook",
                  event_type="subscription.in_grace_period"),
             snap(observed_ms=NOW + 1, state=State.EXPIRED, source="webhook",
                  event_type="subscription.expired"),  # stale within the batch
             snap(platform="google", subject_key="g1", poll_now=True, source="webhook",
                  event_type="subscription.renewed")]
    results = []
    for name, many in (("one", False), ("many", True)):
        s = Store(store_config(tmp_path, name))
        await s.open()
        if many:
            applied = await s.write(lambda: pipeline.apply_many(batch, RULES, NOW))
        else:
            applied = [await s.write(lambda x=x: pipeline.apply(x, RULES, NOW))  # type: ignore[misc]
                       for x in batch]
        got = await rows(s)
        await s.close()
        for e in got["events"]:
            e.pop("id")
        results.append((got, [(a.stale, [e.sequence for e in a.events]) for a in applied]))
    assert results[0] == results[1]
    got, shape = results[1]
    assert shape == [(False, [1]), (False, [1]), (False, [2]), (True, [3]), (False, [1])]
    states = {(p.platform, p.subject_key): p.state for p in got["purchases"]}
    assert states == {("apple", "o1"): "grace", ("apple", "o2"): "active",
                      ("google", "g1"): "active"}
    assert [p.next_poll_ms for p in got["purchases"] if p.platform == "google"] == [NOW]


async def test_record_event_without_subject(store: Store) -> None:
    body = relayed.event_body("rly_x", "test", None, "webhook", NOW, NOW, "apple", None, None,
                               None, None, False, "evt_1", [], {})
    view = await store.write(lambda: pipeline.record_event(
        "rly_x", "test", body, "webhook", "apple", None, None, None, NOW, NOW, "evt_1", False,
        None, RULES, NOW))
    assert view.deliveries == 3 and view.cursor >= 1
    assert (await rows(store))["deliveries"][0] == ("all", "pending", "rly_x", 0)
