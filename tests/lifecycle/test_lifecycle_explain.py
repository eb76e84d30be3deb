"""Explain (issue 18): `GET /v1/users/{id}/entitlements/{key}/explain` and `relay explain`
state the reason that applies, the rule and its end time, and the input that set the
state, for every case the issue lists; and its verdict is always the entitlements
answer's. The inputs are the stores' payloads (tests/lifecycle/stores.py), the times
those the stores' documentation gives them: Apple's `gracePeriodExpiresDate` ends the
billing grace period (App Store Server Notifications › JWSRenewalInfoDecodedPayload),
`revocationDate` is when the App Store refunded the transaction.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path
from typing import Any

from relay.core.domain import iso
from relay.web.appkeys import RUNTIME_KEY
from tests.lifecycle.harness import ENTITLEMENTS, Relay
from tests.lifecycle.stores import (
    DAY_MS,
    apple_notification,
    apple_renewal,
    apple_transaction,
    play_subscription,
)
from tests.support.store import ON_POSTGRES, store_config

P, G = "com.example.premium", "premium_monthly"
LEEWAY_MS = 60_000  # [purchases] clock_leeway_s, the default


async def explain(life: Relay, user: str, key: str = "premium") -> dict[str, Any]:
    resp = await life.client.get(f"/v1/users/{user}/entitlements/{key}/explain",
                                 headers=life._auth())
    body: dict[str, Any] = await resp.json()
    assert resp.status == 200, body
    # The verdict is the entitlements answer's, whatever the reason.
    assert body["entitled"] == (key in await life.entitlements(user))
    return body


async def buy_apple(life: Relay, user: str, tid: str, otid: str, product: str = P,
                    days: int = 30) -> dict[str, Any]:
    now = life.now_ms
    txn = apple_transaction(tid, otid, product, now, now + days * DAY_MS)
    life.attesto.apple[tid] = txn
    await life.verify_apple(user, tid)
    return txn


async def test_entitled_active(life: Relay) -> None:
    now = life.now_ms
    life.attesto.google["g1"] = (play_subscription(
        "SUBSCRIPTION_STATE_ACTIVE", product=G, start_ms=now, expiry_ms=now + 30 * DAY_MS),
        G)
    await life.verify_google("u1", "g1", G)
    body = await explain(life, "u1")
    assert (body["entitled"], body["reason"]) == (True, "active")
    [p] = body["purchases"]
    assert (p["rule"], p["access_until"], p["state_set_by"]["source"]) == (
        "clock_leeway", iso(now + 30 * DAY_MS + LEEWAY_MS), "verify")
    assert f"until {iso(now + 30 * DAY_MS + LEEWAY_MS)}" in body["explanation"]
    assert body["explanation"].startswith("u1 has premium: google purchase g1 ")


async def test_entitled_in_grace_until_the_grace_end(life: Relay) -> None:
    """DID_FAIL_TO_RENEW/GRACE_PERIOD, status 4: access until gracePeriodExpiresDate."""
    t0 = life.now_ms
    txn = await buy_apple(life, "u1", "t1", "o1")
    life.advance(30 * 86400)
    grace_end = t0 + 46 * DAY_MS
    await life.apple_webhook(apple_notification(
        "DID_FAIL_TO_RENEW", "GRACE_PERIOD", uuid="g1", signed_ms=life.now_ms, txn=txn,
        renewal=apple_renewal("o1", P, auto_renew=True, signed_ms=life.now_ms,
                              grace_expires_ms=grace_end, in_billing_retry=True), status=4))
    life.advance(5 * 86400)  # past the period's expiry, inside the grace
    body = await explain(life, "u1")
    assert (body["entitled"], body["reason"]) == (True, "grace")
    [p] = body["purchases"]
    assert (p["state"], p["rule"], p["access_until"]) == (
        "grace", "grace_end", iso(grace_end + LEEWAY_MS))
    assert f"grace period until {iso(grace_end + LEEWAY_MS)}" in body["explanation"]
    assert "DID_FAIL_TO_RENEW/GRACE_PERIOD" in p["state_set_by"]["summary"]


async def test_entitled_by_the_renewal_grace_past_expiry(life: Relay) -> None:
    t0 = life.now_ms
    await buy_apple(life, "u1", "t1", "o1")
    life.advance(30 * 86400 + 3600)  # an hour past expiresDate, no DID_RENEW yet
    body = await explain(life, "u1")
    assert (body["entitled"], body["reason"]) == (True, "leeway")
    assert body["purchases"][0]["rule"] == "renewal_grace"
    assert body["purchases"][0]["access_until"] == iso(t0 + 31 * DAY_MS)


async def test_not_entitled_expired_at(life: Relay) -> None:
    t0 = life.now_ms
    txn = await buy_apple(life, "u1", "t1", "o1")
    life.advance(30 * 86400 + 60)
    await life.apple_webhook(apple_notification(
        "EXPIRED", "VOLUNTARY", uuid="e1", signed_ms=life.now_ms, txn=txn,
        renewal=apple_renewal("o1", P, auto_renew=False, signed_ms=life.now_ms), status=2))
    body = await explain(life, "u1")
    assert (body["entitled"], body["reason"]) == (False, "expired")
    assert f"expired at {iso(t0 + 30 * DAY_MS)}" in body["explanation"]
    assert body["purchases"][0]["state_set_by"]["summary"].startswith("webhook EXPIRED/")


async def test_not_entitled_refunded_by_input(life: Relay) -> None:
    t0 = life.now_ms
    await buy_apple(life, "u1", "t1", "o1")
    life.advance(86400)
    refunded = apple_transaction("t1", "o1", P, t0, t0 + 30 * DAY_MS,
                                 revocation_ms=life.now_ms)
    await life.apple_webhook(apple_notification(
        "REFUND", None, uuid="r1", signed_ms=life.now_ms, txn=refunded, status=2))
    body = await explain(life, "u1")
    assert (body["entitled"], body["reason"]) == (False, "refunded")
    resp = await life.client.get("/v1/purchases/apple/o1/history", headers=life._auth())
    refund_input = (await resp.json())["inputs"][-1]
    assert refund_input["store_type"] == "REFUND"
    by = body["purchases"][0]["state_set_by"]
    assert by["id"] == refund_input["id"]
    assert (f"was refunded at {iso(life.now_ms)} by input #{refund_input['id']} "
            f"(webhook REFUND") in body["explanation"]


async def test_no_purchase(life: Relay) -> None:
    body = await explain(life, "nobody")
    assert (body["entitled"], body["reason"], body["purchases"]) == (
        False, "no_purchase", [])
    assert body["explanation"] == ("nobody does not have premium: relay knows no purchase "
                                   "of this user")


async def test_product_not_mapped_to_the_key(life: Relay) -> None:
    await buy_apple(life, "u1", "t1", "o1", product="com.example.stickers")
    body = await explain(life, "u1")
    assert (body["entitled"], body["reason"]) == (False, "product_not_mapped")
    assert "com.example.stickers grants []" in body["explanation"]
    # premium maps; pro does not come with com.example.premium
    await buy_apple(life, "u2", "t2", "o2")
    body = await explain(life, "u2", "pro")
    assert (body["reason"], body["purchases"][0]["keys"]) == ("product_not_mapped",
                                                              ["premium"])


async def test_owned_by_another_user(life: Relay) -> None:
    """`owner_conflict = "transfer"` (the default): u2 verifies u1's purchase, it moves."""
    await buy_apple(life, "u1", "t1", "o1")
    await life.verify_apple("u2", "t1")
    body = await explain(life, "u1")
    assert (body["entitled"], body["reason"]) == (False, "owned_by_another_user")
    assert body["purchases"][0]["owner_user_id"] == "u2"
    assert "belongs to user u2" in body["explanation"]
    resp = await life.client.get("/v1/users/u1/purchases", headers=life._auth())
    [moved] = (await resp.json())["purchases"]
    assert (moved["subject_key"], moved["user_id"], moved["entitled"],
            moved["entitlement_keys"]) == ("o1", "u2", False, ["premium"])


async def test_relay_explain_prints_the_same_words(life: Relay, tmp_path: Path,
                                                   capsys: Any) -> None:
    """`relay explain` reads the store the serving relay writes, with the rules of the
    same relay.toml, and prints the API's explanation (plain words, or --json)."""
    from relay.service.cli import main

    # Bought for a century: the command's clock is the wall clock, not the test's.
    await buy_apple(life, "u1", "t1", "o1", days=36500)
    api = await explain(life, "u1")
    cfg = life.client.app[RUNTIME_KEY].config
    store = store_config(tmp_path, "relay")
    where = f'url = "{store.url}"' if ON_POSTGRES else f'path = "{store.path}"'
    toml = tmp_path / "relay.toml"
    toml.write_text(f"[store]\n{where}\n\n[entitlements]\n" + "\n".join(
        f'"{k}" = {json.dumps(list(v))}' for k, v in ENTITLEMENTS.items()) + "\n")
    assert dataclasses.asdict(cfg.purchases)["clock_leeway_s"] == 60

    async def cli(*args: str) -> int:  # the command runs its own event loop
        return await asyncio.to_thread(main, ["explain", "--config", str(toml), *args])

    assert await cli("u1", "premium") == 0
    text = capsys.readouterr().out
    # The same words (its clock is the wall clock, the API's the test's: times differ).
    assert text.splitlines()[0].startswith("u1 has premium: apple purchase o1 "
                                           "(com.example.premium) is active until ")
    assert "state set by input #" in text and "(verify transaction: transaction t1" in text
    assert await cli("--json", "u1", "premium") == 0
    printed = json.loads(capsys.readouterr().out)
    assert (printed["reason"], printed["entitled"]) == (api["reason"], api["entitled"])
    assert printed["purchases"][0]["state_set_by"] == api["purchases"][0]["state_set_by"]
    assert await cli("u1") == 0  # every key
    text = capsys.readouterr().out
    assert "u1 has premium: " in text and "u1 does not have pro: " in text
