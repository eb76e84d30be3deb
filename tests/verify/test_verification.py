"""Verify + apply on a real store against the fake Attesto: orders of arrival, replays,
appUserId binding, Google upgrades, owner conflicts, restore."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from relay.attesto.simulator import AttestoSimulator
from relay.core.domain import State
from relay.core.errors import ConflictError, UpstreamError
from relay.store import pipeline
from relay.store.models import Event
from relay.verify.verifier import AppleItem, GoogleItem, Verifier
from tests.conftest import Clock
from tests.support.verify import (
    DAY_MS,
    UUID_A,
    apple_webhook_snapshot,
    complete,
    event_types,
    google_webhook_snapshot,
    open_verifier,
    row,
    verify_config,
    with_policy,
)


async def apply(verifier: Verifier, snap: object) -> pipeline.Applied:
    rules, now = verifier.runtime.rules, verifier.runtime.now_ms()
    return await verifier.store.write(lambda: pipeline.apply(snap, rules, now))  # type: ignore[arg-type]


async def test_apple_both_orders_end_with_the_same_complete_row(
        tmp_path: Path, sim: AttestoSimulator, attesto_url: str, clock: Clock) -> None:
    now = int(clock() * 1000)
    expires, purchased = now + 30 * DAY_MS, now - 60_000
    for key in ("o-vw", "o-wv"):
        sim.add_apple(transaction_id=f"t-{key}", original_transaction_id=key,
                      product_id="premium.monthly", expires_ms=expires, purchase_ms=purchased,
                      signed_ms=now, app_account_token=UUID_A)
    async with open_verifier(verify_config(tmp_path, attesto_url), clock) as v:
        def webhook(key: str) -> object:
            return apple_webhook_snapshot(key, f"t-{key}", "premium.monthly", expires,
                                          purchased + 1000, now)

        first = await v.verify("user-1", AppleItem("t-o-vw"))  # verify, then webhook
        assert first.valid and first.granted == ("premium",)
        await apply(v, webhook("o-vw"))
        await apply(v, webhook("o-wv"))  # webhook, then verify
        second = await v.verify("user-1", AppleItem("t-o-wv"))
        assert second.valid and [e.key for e in second.entitlements] == ["premium", "premium"]
        vw, wv = complete(await row(v, "apple", "o-vw")), complete(await row(v, "apple", "o-wv"))
        assert (vw.pop("latest_ref"), wv.pop("latest_ref")) == ("t-o-vw", "t-o-wv")
        assert vw == wv
        assert vw["user_id"] == "user-1" and vw["state"] == "active" and vw["auto_renew"]
        assert vw["expires_ms"] == expires and vw["app_user_id"] == UUID_A
        assert await event_types(v, "o-vw") == ["subscription.purchased"] * 2
        # The verify adds who the user is (defect 9 of issue 15), nothing else.
        assert await event_types(v, "o-wv") == ["subscription.purchased",
                                                "subscription.user_bound"]


async def test_google_both_orders_end_with_the_same_complete_row(
        tmp_path: Path, sim: AttestoSimulator, attesto_url: str, clock: Clock) -> None:
    now = int(clock() * 1000)
    for token in ("g-vw", "g-wv"):
        sim.add_google(token=token, product_id="premium", expiry_ms=now + 30 * DAY_MS,
                       start_ms=now - 60_000, account_id=UUID_A)
    async with open_verifier(verify_config(tmp_path, attesto_url), clock) as v:
        def item(token: str) -> GoogleItem:
            return GoogleItem("com.example.app", "premium", token, "subscription")

        await v.verify("user-1", item("g-vw"))
        await apply(v, google_webhook_snapshot("g-vw", "g-vw", "premium", now - 1000, now))
        await apply(v, google_webhook_snapshot("g-wv", "g-wv", "premium", now - 1000, now))
        await v.verify("user-1", item("g-wv"))
        vw, wv = complete(await row(v, "google", "g-vw")), complete(await row(v, "google", "g-wv"))
        assert (vw.pop("latest_ref"), wv.pop("latest_ref")) == ("g-vw", "g-wv")
        assert vw == wv
        assert (vw["user_id"], vw["state"], vw["base_plan_id"]) == ("user-1", "active", "monthly")
        assert vw["expires_ms"] == now + 30 * DAY_MS and vw["environment"] == "sandbox"
        # Learning the expiry after a webhook without one is not a renewal.
        assert "subscription.renewed" not in await event_types(v, "g-wv")


async def test_replaying_a_verify_is_idempotent(tmp_path: Path, sim: AttestoSimulator,
                                                attesto_url: str, clock: Clock) -> None:
    now = int(clock() * 1000)
    sim.add_apple(transaction_id="t1", original_transaction_id="o1", product_id="premium.monthly",
                  expires_ms=now + DAY_MS, purchase_ms=now - 1000)
    sim.add_google(token="g1", product_id="premium", expiry_ms=now + DAY_MS, start_ms=now)
    sim.add_google(token="p1", product_id="coins_100", kind="product", start_ms=now)
    async with open_verifier(verify_config(tmp_path, attesto_url), clock) as v:
        items = [("o1", AppleItem("t1")),
                 ("g1", GoogleItem("com.example.app", "premium", "g1", "subscription")),
                 ("p1", GoogleItem("com.example.app", "coins_100", "p1", "product"))]
        for key, it in items:
            first = await v.verify("user-1", it)
            clock.advance(5)
            again = await v.verify("user-1", it)
            assert first.events and again.events == ()
            assert again.purchase == (await row(v, first.purchase.platform, key))  # type: ignore[union-attr]
            assert len(await event_types(v, key)) == 1


async def test_stale_verify_does_not_roll_back_a_webhook(tmp_path: Path, sim: AttestoSimulator,
                                                         attesto_url: str, clock: Clock) -> None:
    now = int(clock() * 1000)
    expires = now + 10 * DAY_MS
    sim.add_apple(transaction_id="t1", original_transaction_id="o1", product_id="premium.monthly",
                  expires_ms=expires, purchase_ms=now - DAY_MS, signed_ms=now)
    async with open_verifier(verify_config(tmp_path, attesto_url), clock) as v:
        await apply(v, apple_webhook_snapshot(
            "o1", "t1", "premium.monthly", expires, now - 1000, now,
            event="subscription.cancellation_scheduled", state=State.ACTIVE_NOT_RENEWING,
            auto_renew=False))
        outcome = await v.verify("user-1", AppleItem("t1"))
        assert outcome.purchase is not None
        assert (outcome.purchase.state, outcome.purchase.auto_renew) == ("active_not_renewing",
                                                                        False)
        assert outcome.purchase.user_id == "user-1"
        assert outcome.events == ("subscription.user_bound",)  # only who the user is


async def test_newer_apple_period_and_refund_through_verify(
        tmp_path: Path, sim: AttestoSimulator, attesto_url: str, clock: Clock) -> None:
    now = int(clock() * 1000)
    sim.add_apple(transaction_id="t1", original_transaction_id="o1", product_id="premium.monthly",
                  expires_ms=now + DAY_MS, purchase_ms=now - DAY_MS)
    async with open_verifier(verify_config(tmp_path, attesto_url), clock) as v:
        await v.verify("user-1", AppleItem("t1"))
        sim.add_apple(transaction_id="t2", original_transaction_id="o1",
                      product_id="premium.monthly", expires_ms=now + 31 * DAY_MS,
                      purchase_ms=now + DAY_MS)
        renewed = await v.verify("user-1", AppleItem("t2"))
        assert renewed.events == ("subscription.renewed",)
        assert renewed.purchase and renewed.purchase.expires_ms == now + 31 * DAY_MS
        sim.apple["t2"].revocation_ms = now + 2 * DAY_MS
        refunded = await v.verify("user-1", AppleItem("t2"))
        assert refunded.events == ("subscription.refunded",) and refunded.granted == ()
        assert refunded.reason == "purchase_not_active" and refunded.entitlements == ()
        old = await v.verify("user-1", AppleItem("t1"))  # an older period changes nothing
        assert old.events == () and old.purchase and old.purchase.state == "refunded"


async def test_google_upgrade_keeps_one_row(tmp_path: Path, sim: AttestoSimulator,
                                            attesto_url: str, clock: Clock) -> None:
    now = int(clock() * 1000)
    sim.add_google(token="tok-1", product_id="premium", expiry_ms=now + DAY_MS, start_ms=now)
    async with open_verifier(verify_config(tmp_path, attesto_url), clock) as v:
        await v.verify("user-1", GoogleItem("com.example.app", "premium", "tok-1", None))
        sim.google["tok-1"].state = "SUBSCRIPTION_STATE_EXPIRED"  # replaced by the upgrade
        sim.add_google(token="tok-2", product_id="premium", base_plan_id="yearly",
                       linked_token="tok-1", expiry_ms=now + 365 * DAY_MS, start_ms=now)
        up = await v.verify("user-1", GoogleItem("com.example.app", "premium", "tok-2", None))
        assert up.purchase and up.purchase.subject_key == "tok-1"
        assert up.granted == ("premium", "yearly_badge")
        old = await v.verify("user-1", GoogleItem("com.example.app", "premium", "tok-1", None))
        assert old.events == () and old.purchase and old.purchase.state == "active"
        sim.google["tok-2"].state = "SUBSCRIPTION_STATE_ON_HOLD"
        again = await v.verify("user-1", GoogleItem("com.example.app", "premium", "tok-2", None))
        assert again.events == ("subscription.on_hold",) and again.purchase
        assert again.purchase.subject_key == "tok-1" and again.purchase.latest_ref == "tok-2"
        assert await row(v, "google", "tok-2") is None


async def test_app_user_id_binding_lands_an_early_webhook_on_the_user(
        tmp_path: Path, sim: AttestoSimulator, attesto_url: str, clock: Clock) -> None:
    now = int(clock() * 1000)
    async with open_verifier(verify_config(tmp_path, attesto_url), clock) as v:
        uuid = await v.app_user_id("user-7")
        assert await v.app_user_id("user-7") == uuid and await v.app_user_id("user-8") != uuid
        await apply(v, apple_webhook_snapshot("o9", "t9", "premium.monthly", now + DAY_MS,
                                              now, now, app_user_id=uuid))
        stored = await row(v, "apple", "o9")
        assert stored and stored.user_id == "user-7"
        assert [e.key for e in await v.entitlements("user-7")] == ["premium"]


@pytest.mark.parametrize("policy", ["transfer", "keep"])
async def test_owner_conflict_policy(policy: str, tmp_path: Path, sim: AttestoSimulator,
                                     attesto_url: str, clock: Clock) -> None:
    now = int(clock() * 1000)
    sim.add_apple(transaction_id="t1", original_transaction_id="o1", product_id="premium.monthly",
                  expires_ms=now + DAY_MS, purchase_ms=now)
    async with open_verifier(verify_config(tmp_path, attesto_url), clock) as v:
        with_policy(v, policy)
        await v.verify("user-1", AppleItem("t1"))
        if policy == "keep":
            with pytest.raises(ConflictError) as err:
                await v.verify("user-2", AppleItem("t1"))
            assert err.value.code == "purchase_owned_by_other_user"
            stored = await row(v, "apple", "o1")
            assert stored and stored.user_id == "user-1" and stored.sequence == 1
        else:
            moved = await v.verify("user-2", AppleItem("t1"))
            assert moved.events == ("subscription.transferred",)
            body = json.loads(await v.store.read(lambda: Event.select().order_by(
                Event.cursor.desc()).first().body))
            assert (body["user_id"], body["previous_user_id"], body["stale"]) == (
                "user-2", "user-1", False)
            assert [e.key for e in moved.entitlements] == ["premium"]
            assert await v.entitlements("user-1") == []


async def test_keep_refuses_a_purchase_made_for_another_users_app_user_id(
        tmp_path: Path, sim: AttestoSimulator, attesto_url: str, clock: Clock) -> None:
    now = int(clock() * 1000)
    async with open_verifier(verify_config(tmp_path, attesto_url), clock) as v:
        with_policy(v, "keep")
        uuid = await v.app_user_id("owner")
        sim.add_apple(transaction_id="t1", original_transaction_id="o1",
                      product_id="premium.monthly", expires_ms=now + DAY_MS, purchase_ms=now,
                      app_account_token=uuid)
        with pytest.raises(ConflictError):
            await v.verify("intruder", AppleItem("t1"))
        assert await row(v, "apple", "o1") is None
        assert (await v.verify("owner", AppleItem("t1"))).granted == ("premium",)


async def test_restore_reports_each_item(tmp_path: Path, sim: AttestoSimulator,
                                         attesto_url: str, clock: Clock) -> None:
    now = int(clock() * 1000)
    sim.add_apple(transaction_id="t1", original_transaction_id="o1", product_id="premium.monthly",
                  expires_ms=now + DAY_MS, purchase_ms=now)
    sim.add_apple(transaction_id="t2", original_transaction_id="o2", product_id="premium.monthly",
                  expires_ms=now - 10 * DAY_MS, purchase_ms=now - 40 * DAY_MS)
    sim.add_apple(transaction_id="t3", original_transaction_id="o3", product_id="unmapped",
                  expires_ms=None, purchase_ms=now, type="Non-Consumable")
    sim.add_google(token="p1", product_id="coins_100", kind="product", start_ms=now)
    async with open_verifier(verify_config(tmp_path, attesto_url), clock) as v:
        results, ents = await v.restore("user-1", [
            AppleItem("t1"), AppleItem("t2"), AppleItem("t3"), AppleItem("nope"),
            GoogleItem("com.example.app", "coins_100", "p1", None)])
        assert [(r.outcome.granted, r.outcome.reason) for r in results if r.outcome] == [
            (("premium",), None), ((), "purchase_not_active"), ((), "no_entitlement_mapping"),
            ((), "TRANSACTION_NOT_FOUND"), (("coins",), None)]
        assert sorted(e.key for e in ents) == ["coins", "premium"]
        assert sim.calls[-1][1]["type"] == "product"  # catalogue says consumable
        sim.fail_next(502, times=8, error="APPLE_API_ERROR")
        with pytest.raises(UpstreamError):  # nothing answered: the caller must retry
            await v.restore("user-1", [AppleItem("t1"), AppleItem("t2")])
