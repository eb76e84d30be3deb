"""The one path: monotonic apply, derived events, owner conflicts, binding, fan-out."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from relay.core.domain import Snapshot, State
from relay.core.errors import ConflictError
from relay.core.rules import Route, Rules
from relay.store import pipeline
from relay.store.database import Store
from relay.store.models import AppUser, Delivery, Event, Purchase
from tests.support.store import store_config

DAY = 86_400_000
T0 = 1_800_000_000_000


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = Store(store_config(tmp_path, "p"))
    await s.open()
    yield s
    await s.close()


RULES = Rules(routes=(Route("all"), Route("apple-subs", events=("subscription.*",),
                                          platforms=("apple",)),
                      Route("paused", active=False)),
              entitlements={"premium.monthly": ("premium",)})


def snap(**kw: object) -> Snapshot:
    base: dict[str, object] = dict(platform="apple", subject_key="o1", source="verify",
                                   observed_ms=T0, received_ms=T0, product_id="premium.monthly",
                                   state=State.ACTIVE, expires_ms=T0 + 30 * DAY,
                                   latest_ref="t1")
    base.update(kw)
    return Snapshot(**base)  # type: ignore[arg-type]


async def apply(store: Store, s: Snapshot, rules: Rules = RULES,
                now_ms: int = T0) -> pipeline.Applied:
    return await store.write(lambda: pipeline.apply(s, rules, now_ms))


async def test_first_verify_creates_row_event_and_deliveries(store: Store) -> None:
    applied = await apply(store, snap(user_id="u1"))
    assert [e.type for e in applied.events] == ["subscription.purchased"]
    body = json.loads(applied.events[0].body)
    assert body["state"] == "active" and body["previous_state"] is None
    assert body["entitlements"] == ["premium"] and body["sequence"] == 1
    assert body["user_id"] == "u1" and body["source"] == "verify"
    rows = await store.read(lambda: sorted((d.endpoint, d.status) for d in Delivery.select()))
    assert rows == [("all", "pending"), ("apple-subs", "pending"), ("paused", "held")]


async def test_replaying_the_same_verify_is_idempotent(store: Store) -> None:
    await apply(store, snap(user_id="u1"))
    again = await apply(store, snap(user_id="u1"))
    assert again.events == ()
    assert await store.read(lambda: Event.select().count()) == 1


async def test_older_snapshot_never_rolls_back_but_is_recorded_stale(store: Store) -> None:
    await apply(store, snap(observed_ms=T0 + 10, expires_ms=T0 + 60 * DAY))
    old = await apply(store, snap(source="webhook", observed_ms=T0, state=State.EXPIRED,
                                  expires_ms=T0 + 30 * DAY, event_type="subscription.expired"))
    assert old.stale and [e.type for e in old.events] == ["subscription.expired"]
    assert json.loads(old.events[0].body)["stale"] is True
    row = await store.read(lambda: Purchase.get())
    assert row.state == "active" and row.expires_ms == T0 + 60 * DAY
    assert row.sequence == 2


async def test_renewal_and_expiry_are_derived_for_polls(store: Store) -> None:
    await apply(store, snap())
    renewed = await apply(store, snap(source="poll", observed_ms=T0 + DAY,
                                      expires_ms=T0 + 60 * DAY))
    assert [e.type for e in renewed.events] == ["subscription.renewed"]
    expired = await apply(store, snap(source="poll", observed_ms=T0 + 2 * DAY,
                                      state=State.EXPIRED, expires_ms=T0 + 60 * DAY))
    assert [e.type for e in expired.events] == ["subscription.expired"]
    body = json.loads(expired.events[0].body)
    assert body["previous_state"] == "active" and body["entitlements"] == []


async def test_webhook_never_erases_the_user_and_fills_in_either_order(store: Store) -> None:
    hook = snap(source="webhook", user_id=None, event_type="subscription.renewed",
                observed_ms=T0 + 5)
    verify = snap(user_id="u1", observed_ms=T0)
    await apply(store, hook)
    await apply(store, verify)
    row_a = await store.read(lambda: Purchase.get())
    assert (row_a.user_id, row_a.state, row_a.expires_ms) == ("u1", "active", T0 + 30 * DAY)


async def test_owner_conflict_keep_and_transfer(store: Store) -> None:
    await apply(store, snap(user_id="u1"))
    keep = Rules(routes=RULES.routes, owner_conflict="keep")
    with pytest.raises(ConflictError) as err:
        await apply(store, snap(user_id="u2", observed_ms=T0 + 1), keep)
    assert err.value.code == "purchase_owned_by_other_user"
    assert (await store.read(lambda: Purchase.get())).user_id == "u1"
    moved = await apply(store, snap(user_id="u2", observed_ms=T0 + 1))
    assert [e.type for e in moved.events] == ["subscription.transferred"]
    assert json.loads(moved.events[0].body)["previous_user_id"] == "u1"
    assert (await store.read(lambda: Purchase.get())).user_id == "u2"


async def test_app_user_id_binds_a_webhook_to_its_user(store: Store) -> None:
    await store.write(lambda: AppUser.insert(user_id="u9", app_user_id="uuid-9",
                                             created_ms=T0).execute())
    applied = await apply(store, snap(source="webhook", user_id=None, app_user_id="uuid-9",
                                      event_type="subscription.purchased"))
    assert applied.purchase is not None and applied.purchase.user_id == "u9"


async def test_fan_out_respects_event_and_platform_filters(store: Store) -> None:
    applied = await apply(store, snap(platform="google", subject_key="tok",
                                      kind="product", state=State.OWNED, expires_ms=None))
    assert [e.type for e in applied.events] == ["product.purchased"]
    endpoints = await store.read(lambda: sorted(d.endpoint for d in Delivery.select()))
    assert endpoints == ["all", "paused"]


async def test_subjectless_event_is_stored_and_routed(store: Store) -> None:
    view = await store.write(lambda: pipeline.record_event(
        "rly_x", "test", '{"id":"rly_x"}', "webhook", "apple", None, None, None, T0, T0,
        "evt_1", False, None, RULES, T0))
    assert view.deliveries == 2  # "all" and "paused"; not the subscription.* filter
    assert await store.read(lambda: Purchase.select().count()) == 0


async def test_a_failing_apply_leaves_nothing_half_written(store: Store) -> None:
    def boom() -> None:
        pipeline.apply(snap(), RULES, T0)
        raise RuntimeError("crash after apply, before commit")

    with pytest.raises(RuntimeError):
        await store.write(boom)
    counts = await store.read(lambda: (Purchase.select().count(), Event.select().count(),
                                       Delivery.select().count()))
    assert counts == (0, 0, 0)


@pytest.mark.parametrize("value", [533216569697924546560, "533216569697924546560", -1,
                                   float("inf"), float("nan"), True, "not a time"])
def test_times_outside_1970_to_9999_are_refused(value: object) -> None:
    from relay.core.domain import parse_time_ms

    with pytest.raises(ValueError):
        parse_time_ms(value)


def test_times_in_range_parse() -> None:
    from relay.core.domain import parse_time_ms

    assert parse_time_ms("2026-04-18T12:00:03.412Z") == 1_776_513_603_412
    assert parse_time_ms("1776513600000") == 1_776_513_600_000
    assert parse_time_ms(None) is None
