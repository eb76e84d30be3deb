"""Re-polls through the real app and the loopback Attesto simulator, on a controllable clock."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from relay.attesto.sim_records import GooglePurchase
from relay.attesto.simulator import AttestoSimulator
from relay.core.domain import iso
from relay.scheduler.ratelimit import TokenBucket
from relay.store.models import Delivery, Event, Purchase
from relay.web.appkeys import ATTESTO_KEY, SCHEDULER_KEY, STORE_KEY
from tests.conftest import Clock, RelayFactory, auth
from tests.support.scheduler import due_now
from tests.support.verify import DAY_MS, verify_config
from tests.support.webhooks import post


async def start(relay_factory: RelayFactory, tmp_path: Path, attesto_url: str) -> Any:
    return await relay_factory(verify_config(tmp_path, attesto_url), use_clock=True)


async def events(client: Any) -> list[dict[str, Any]]:
    rows = await client.app[STORE_KEY].read(lambda: list(Event.select().order_by(Event.cursor)))
    return [json.loads(r.body) for r in rows]


async def row(client: Any) -> Purchase:
    return await client.app[STORE_KEY].read(lambda: Purchase.get())


async def verified_google(client: Any, sim: AttestoSimulator, token: str,
                          now: int) -> GooglePurchase:
    """A Google subscription (one day left) that user u1 has verified through relay."""
    sub = sim.add_google(token=token, product_id="premium", expiry_ms=now + DAY_MS,
                         start_ms=now)
    resp = await client.post("/v1/verify/google", headers=auth(), json={
        "user_id": "u1", "package_name": sim.package_name, "product_id": "premium",
        "purchase_token": token, "type": "subscription"})
    assert resp.status == 200
    return sub


async def test_google_renewal_never_delivered_is_found_by_the_poll(
        relay_factory: RelayFactory, tmp_path: Path, sim: AttestoSimulator, attesto_url: str,
        clock: Clock) -> None:
    now = int(clock() * 1000)
    client = await start(relay_factory, tmp_path, attesto_url)
    sub = await verified_google(client, sim, "tok-1", now)
    assert await due_now(client) == 0  # nothing due before expiry
    sub.expiry_ms = now + 31 * DAY_MS  # the store renewed; no webhook reached relay
    clock.advance(DAY_MS / 1000 + 601)
    assert await due_now(client) == 1
    last = (await events(client))[-1]
    assert (last["type"], last["source"], last["state"]) == ("subscription.renewed", "poll",
                                                             "active")
    assert (await row(client)).expires_ms == now + 31 * DAY_MS


async def test_google_expiry_only_after_a_poll_confirms_it(
        relay_factory: RelayFactory, tmp_path: Path, sim: AttestoSimulator, attesto_url: str,
        clock: Clock) -> None:
    now = int(clock() * 1000)
    sub = sim.add_google(token="tok-2", product_id="premium", expiry_ms=now + DAY_MS,
                         start_ms=now)
    client = await start(relay_factory, tmp_path, attesto_url)
    await client.post("/v1/verify/google", headers=auth(), json={
        "user_id": "u1", "package_name": sim.package_name, "product_id": "premium",
        "purchase_token": "tok-2", "type": "subscription"})
    clock.advance(DAY_MS / 1000 + 601)
    assert (await row(client)).state == "active"  # not expired by the clock alone
    sub.state = "SUBSCRIPTION_STATE_EXPIRED"
    assert await due_now(client) == 1
    assert (await row(client)).state == "expired"
    assert (await events(client))[-1]["type"] == "subscription.expired"


async def test_apple_refund_found_by_poll_and_429_changes_nothing(
        relay_factory: RelayFactory, tmp_path: Path, sim: AttestoSimulator, attesto_url: str,
        clock: Clock) -> None:
    now = int(clock() * 1000)
    txn = sim.add_apple(transaction_id="t1", original_transaction_id="o1",
                        product_id="premium.monthly", expires_ms=now + DAY_MS,
                        purchase_ms=now - 1000)
    client = await start(relay_factory, tmp_path, attesto_url)
    await client.post("/v1/verify/apple", headers=auth(),
                      json={"user_id": "u1", "transaction_id": "t1"})
    await client.app[STORE_KEY].write(lambda: Purchase.update(next_poll_ms=now).execute())
    sim.fail_next(429, times=10, error="RATE_LIMITED", message="Rate limit exceeded",
                  retry_after=30)
    before = await row(client)
    assert await due_now(client) == 1
    after = await row(client)
    assert (after.state, after.sequence) == (before.state, before.sequence)
    assert after.poll_failures == 1 and after.next_poll_ms >= now + 30_000
    poller = client.app[SCHEDULER_KEY].poller
    assert poller.bucket.delay_s() > 20  # the poller honours Retry-After before its next call
    poller.bucket = TokenBucket(100, 100)  # ...which this test does not wait out in real time
    client.app[ATTESTO_KEY]._not_before = 0.0
    sim.faults.clear()
    txn.revocation_ms = now + 5000
    clock.advance(3600)
    assert await due_now(client) == 1
    r = await row(client)
    assert r.state == "refunded" and r.next_poll_ms is None
    last = (await events(client))[-1]
    assert (last["type"], last["source"], last["entitlements"]) == (
        "subscription.refunded", "poll", [])


async def test_admin_due_and_resync(relay_factory: RelayFactory, tmp_path: Path,
                                    sim: AttestoSimulator, attesto_url: str,
                                    clock: Clock) -> None:
    from tests.conftest import ADMIN_TOKEN

    now = int(clock() * 1000)
    txn = sim.add_apple(transaction_id="t9", original_transaction_id="o9",
                        product_id="premium.monthly", expires_ms=now + DAY_MS,
                        purchase_ms=now - 1000)
    client = await start(relay_factory, tmp_path, attesto_url)
    await client.post("/v1/verify/apple", headers=auth(),
                      json={"user_id": "u9", "transaction_id": "t9"})
    admin = auth(ADMIN_TOKEN)
    resp = await client.get("/v1/admin/due", headers=admin)
    assert await resp.json() == {"due": 0, "oldest_due_at": None, "overdue_s": None,
                                 "scheduler": "stopped"}
    await client.app[STORE_KEY].write(lambda: Purchase.update(next_poll_ms=now - 5000)
                                      .execute())
    body = await (await client.get("/v1/admin/due", headers=admin)).json()
    assert (body["due"], body["overdue_s"]) == (1, 5)
    assert (await client.get("/v1/admin/due", headers=auth())).status == 401
    txn.revocation_ms = now + 1
    resp = await client.post("/v1/admin/resync", headers=admin, json={"user_id": "u9"})
    assert resp.status == 200
    assert (await resp.json())["results"] == [{"platform": "apple", "subject_key": "o9",
                                               "outcome": "changed", "state": "refunded"}]
    resp = await client.post("/v1/admin/resync", headers=admin,
                             json={"platform": "apple", "subject_key": "nope"})
    assert resp.status == 404
    resp = await client.post("/v1/admin/resync", headers=admin, json={"platform": "x"})
    assert resp.status == 400


async def test_renewal_found_by_poll_is_relayed_downstream(
        relay_factory: RelayFactory, tmp_path: Path, sim: AttestoSimulator, attesto_url: str,
        clock: Clock, receiver: Any, receiver_url: str) -> None:
    from relay.config import DownstreamConfig

    now = int(clock() * 1000)
    sub = sim.add_google(token="tok-r", product_id="premium", expiry_ms=now + DAY_MS,
                         start_ms=now)
    cfg = verify_config(tmp_path, attesto_url,
                        downstream=(DownstreamConfig(name="app", url=receiver_url),))
    receiver.clock = clock  # relay signs with the test clock
    client = await relay_factory(cfg, use_clock=True)
    await client.post("/v1/verify/google", headers=auth(), json={
        "user_id": "u1", "package_name": sim.package_name, "product_id": "premium",
        "purchase_token": "tok-r", "type": "subscription"})
    await receiver.wait_for(1)
    store = client.app[STORE_KEY]
    async with asyncio.timeout(5):  # recorded as delivered before time moves on
        while await store.read(lambda: Delivery.select().where(
                Delivery.status == "delivered").count()) < 1:
            await asyncio.sleep(0.01)
    sub.expiry_ms = now + 31 * DAY_MS
    clock.advance(DAY_MS / 1000 + 601)
    assert await due_now(client) == 1
    received = await receiver.wait_for(2)
    bodies = [r.json for r in received]
    assert [(b["type"], b["source"]) for b in bodies] == [
        ("subscription.purchased", "verify"), ("subscription.renewed", "poll")]
    assert all(r.signature_ok for r in received)
    assert bodies[1]["expires_at"] is not None and bodies[1]["sequence"] == 2


async def test_google_renewal_by_webhook_is_announced_once(
        relay_factory: RelayFactory, tmp_path: Path, sim: AttestoSimulator, attesto_url: str,
        clock: Clock) -> None:
    """The webhook relays `subscription.renewed` (no expiry in it); the re-verify that reads
    the new expiry relays it as `subscription.state_changed`, not as a second renewal."""
    now = int(clock() * 1000)
    client = await start(relay_factory, tmp_path, attesto_url)
    sub = await verified_google(client, sim, "tok-w", now)
    sub.expiry_ms = now + 31 * DAY_MS  # the store renewed, and Attesto says so
    clock.advance(60)
    body = sim.google_webhook(2, sub, event_time_ms=int(clock() * 1000))
    status, _ = await post(client, sim, body, t=int(clock()))
    assert status == 200
    assert (await row(client)).period_pending
    assert await due_now(client) == 1  # the webhook asked for a re-verify at once
    got = await events(client)
    assert [(e["type"], e["source"]) for e in got] == [
        ("subscription.purchased", "verify"), ("subscription.renewed", "webhook"),
        ("subscription.state_changed", "poll")]
    assert got[2]["reason"] == "renewal_confirmed"
    assert got[1]["expires_at"] == iso(now + DAY_MS)  # the webhook could not know it
    assert got[2]["expires_at"] == iso(now + 31 * DAY_MS)
    assert not (await row(client)).period_pending
    sub.expiry_ms = now + 61 * DAY_MS  # the next renewal, with no webhook: a renewal again
    clock.advance(31 * DAY_MS / 1000 + 601)
    assert await due_now(client) == 1
    assert (await events(client))[-1]["type"] == "subscription.renewed"
