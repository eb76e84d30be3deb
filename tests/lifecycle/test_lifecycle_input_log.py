"""The input log (issue 15): every input that can change a purchase is kept with its raw
body (a webhook's stays in its inbox row), its source and time, the purchase it touched,
the states before and after and the events it relayed, in the transaction of its effect.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from relay.store.models import Inbox, InputLog, database
from relay.web.appkeys import RUNTIME_KEY, STORE_KEY
from tests.lifecycle.harness import Relay
from tests.lifecycle.stores import (
    DAY_MS,
    apple_notification,
    apple_renewal,
    apple_transaction,
    play_subscription,
    rtdn_subscription,
)

P, G = "com.example.premium", "premium_monthly"


async def _inputs(life: Relay, key: str) -> list[dict[str, Any]]:
    def run() -> list[dict[str, Any]]:
        return [dict(r.__data__) for r in InputLog.select().where(InputLog.subject_key == key)
                .order_by(InputLog.id)]
    return await life.client.app[STORE_KEY].read(run)


async def test_webhook_verify_and_poll_inputs_are_logged(life: Relay) -> None:
    now = life.now_ms
    t1 = apple_transaction("t1", "o1", P, now, now + 30 * DAY_MS)
    life.attesto.apple["t1"] = t1
    await life.apple_webhook(apple_notification(
        "SUBSCRIBED", "INITIAL_BUY", uuid="n1", signed_ms=now, txn=t1,
        renewal=apple_renewal("o1", P, auto_renew=True, signed_ms=now), status=1),
        eid="evt_01INPUTLOG000000000000001")
    answer = await life.verify_apple("u1", "t1")
    events = await life.new_events()
    [webhook, verify] = await _inputs(life, "o1")
    assert (webhook["platform"], webhook["source"], webhook["store_type"],
            webhook["store_subtype"], webhook["event_type"], webhook["ref"],
            webhook["expires_ms"], webhook["state_before"], webhook["state_after"]) == (
        "apple", "webhook", "SUBSCRIBED", "INITIAL_BUY", "subscription.purchased", "t1",
        now + 30 * DAY_MS, None, "active")
    assert webhook["received_ms"] == now and webhook["observed_ms"] == now
    assert webhook["body"] is None  # the raw bytes are the inbox row's
    assert webhook["inbox_event_id"] == "evt_01INPUTLOG000000000000001"
    assert webhook["event_ids"] == events[0]["id"]
    inbox = await life.client.app[STORE_KEY].read(
        lambda: bytes(Inbox.get(Inbox.event_id == webhook["inbox_event_id"]).body))
    assert json.loads(inbox)["data"]["notificationType"] == "SUBSCRIBED"
    assert (verify["source"], verify["user_id"], verify["ref"], verify["state_before"],
            verify["state_after"]) == ("verify", "u1", "t1", "active", "active")
    assert verify["event_ids"] == events[1]["id"]  # subscription.user_bound
    logged = json.loads(verify["body"])
    assert logged["transaction"]["transactionId"] == "t1" and logged["valid"] is True
    assert answer["purchase"]["subject_key"] == "o1"

    # Re-polls: the same answer twice is kept once, counted.
    def due() -> None:
        from relay.store.models import Purchase
        Purchase.update(next_poll_ms=0).execute()
    for _ in range(3):
        await life.client.app[STORE_KEY].write(due)
        await life.repoll()
        life.advance(60)
    polls = [r for r in await _inputs(life, "o1") if r["source"] == "poll"]
    assert len(polls) == 1 and polls[0]["repeats"] == 3
    assert polls[0]["last_ms"] > polls[0]["received_ms"]


async def test_a_write_group_logs_every_delivery(life: Relay) -> None:
    """Deliveries stored together (group commit) each get their row, referring to their
    own inbox row."""
    now = life.now_ms
    notes = [rtdn_subscription(4, f"tok{i}", G, now + i) for i in range(12)]
    for i in range(12):
        life.attesto.google[f"tok{i}"] = (play_subscription(
            "SUBSCRIPTION_STATE_ACTIVE", product=G, expiry_ms=now + DAY_MS, start_ms=now), G)
    await asyncio.gather(*(life.google_webhook(n, root=f"tok{i}", eid=f"evt_01GROUP{i:019d}")
                           for i, n in enumerate(notes)))

    def rows() -> list[tuple[str, str | None, str | None]]:
        return [(r.subject_key, r.inbox_event_id, r.store_type)
                for r in InputLog.select().order_by(InputLog.subject_key)]
    logged = await life.client.app[STORE_KEY].read(rows)
    assert sorted(logged) == sorted((f"tok{i}", f"evt_01GROUP{i:019d}", "subscription.4")
                                    for i in range(12))


async def test_an_input_whose_effect_is_refused_is_not_logged(life: Relay) -> None:
    """`owner_conflict = "keep"`: a verify by another user is refused (409) and rolled back
    whole: no row change, no event, no input-log row."""
    import dataclasses
    runtime = life.client.app[RUNTIME_KEY]
    runtime.replace(dataclasses.replace(runtime.config, purchases=dataclasses.replace(
        runtime.config.purchases, owner_conflict="keep")))
    now = life.now_ms
    life.attesto.apple["k1"] = apple_transaction("k1", "ok1", P, now, now + DAY_MS)
    await life.verify_apple("u1", "k1")
    resp = await life.client.post("/v1/verify/apple", json={
        "user_id": "u2", "transaction_id": "k1"}, headers=life._auth())
    assert resp.status == 409
    assert [r["user_id"] for r in await _inputs(life, "ok1")] == ["u1"]


async def test_the_log_is_indexed_for_history_and_retention(life: Relay) -> None:
    def indexes() -> list[tuple[str, ...]]:
        return [tuple(i.columns) for i in database.get_indexes("input_log")]
    found = await life.client.app[STORE_KEY].read(indexes)
    assert ("platform", "subject_key", "id") in found
    assert ("received_ms",) in found
