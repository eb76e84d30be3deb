"""The transaction ledger and a purchase's history (issue 18), against payloads shaped as
the stores send them (tests/lifecycle/stores.py: Apple's app-store-server-library models,
Google's androidpublisher v3 discovery document). Runs on SQLite, and on PostgreSQL with
RELAY_TEST_POSTGRES_URL.

What a transaction is, from the stores' documentation:
- Apple, App Store Server API › JWSTransactionDecodedPayload.transactionId: "the unique
  identifier for a transaction such as an in-app purchase, restored in-app purchase, or
  subscription renewal"; originalTransactionId is the lineage (relay's subject key);
  revocationDate: "the date that the App Store refunded the transaction or revoked it
  from Family Sharing"; price in milli-units (attesto-contract §2.1).
- Google, androidpublisher v3 › VoidedPurchase.orderId: "the order id which uniquely
  identifies a one-time purchase, subscription purchase, or subscription renewal";
  SubscriptionPurchaseLineItem.latestSuccessfulOrderId: "the order id of the latest
  successful order associated with this item". Renewal orders are `GPA.…..N`.
"""

from __future__ import annotations

import json
from typing import Any

from tests.lifecycle.harness import Relay
from tests.lifecycle.stores import (
    DAY_MS,
    apple_notification,
    apple_renewal,
    apple_transaction,
    play_subscription,
    rtdn_subscription,
    rtdn_voided,
)

P, G = "com.example.premium", "premium_monthly"
ORDER = "GPA.3352-0306-9721-14048"


async def get(life: Relay, path: str) -> dict[str, Any]:
    resp = await life.client.get(path, headers=life._auth())
    body: dict[str, Any] = await resp.json()
    assert resp.status == 200, body
    return body


async def sync(life: Relay, after: str) -> tuple[list[tuple[str, str]], str]:
    """A consumer catching up by cursor, one row per page: (transaction id, change)."""
    seen: list[tuple[str, str]] = []
    while True:
        page = await get(life, f"/v1/transactions?after={after}&limit=1")
        if not page["transactions"]:
            assert page["next"] == after  # nothing new: the cursor stays
            return seen, after
        seen += [(t["transaction_id"], t["change"]) for t in page["transactions"]]
        after = page["next"]


async def history(life: Relay, platform: str, key: str, **query: str) -> list[dict[str, Any]]:
    """Every input of the purchase, page by page (3 per page)."""
    out: list[dict[str, Any]] = []
    after = "0"
    while True:
        qs = "&".join([f"after={after}", "limit=3"] + [f"{k}={v}" for k, v in query.items()])
        page = await get(life, f"/v1/purchases/{platform}/{key}/history?{qs}")
        if not page["inputs"]:
            return out
        out += page["inputs"]
        after = page["next"]


async def test_purchase_two_renewals_refund_of_the_middle_one_and_expiry(life: Relay) -> None:
    """Apple: bought (verify, then its SUBSCRIBED), renewed twice (DID_RENEW), the middle
    period refunded (REFUND naming t2 while t3 is current: status 1), then expired
    (EXPIRED/VOLUNTARY). The history shows every input, the ledger three transactions,
    t2 refunded; a consumer syncing by cursor sees each once and the refund as a change."""
    t0 = life.now_ms
    t1 = apple_transaction("t1", "o1", P, t0, t0 + 30 * DAY_MS)
    life.attesto.apple["t1"] = t1
    await life.verify_apple("u1", "t1")
    await life.apple_webhook(apple_notification(
        "SUBSCRIBED", "INITIAL_BUY", uuid="n1", signed_ms=t0, txn=t1,
        renewal=apple_renewal("o1", P, auto_renew=True, signed_ms=t0), status=1))
    seen, cursor = await sync(life, "0")
    assert seen == [("t1", "recorded")]

    life.advance(30 * 86400)
    t2 = apple_transaction("t2", "o1", P, t0 + 30 * DAY_MS, t0 + 60 * DAY_MS, renewal=True)
    await life.apple_webhook(apple_notification(
        "DID_RENEW", None, uuid="n2", signed_ms=life.now_ms, txn=t2,
        renewal=apple_renewal("o1", P, auto_renew=True, signed_ms=life.now_ms), status=1))
    life.advance(30 * 86400)
    t3 = apple_transaction("t3", "o1", P, t0 + 60 * DAY_MS, t0 + 90 * DAY_MS, renewal=True)
    await life.apple_webhook(apple_notification(
        "DID_RENEW", None, uuid="n3", signed_ms=life.now_ms, txn=t3,
        renewal=apple_renewal("o1", P, auto_renew=True, signed_ms=life.now_ms), status=1))
    got, cursor = await sync(life, cursor)
    seen += got
    assert got == [("t2", "recorded"), ("t3", "recorded")]

    life.advance(86400)
    refunded_ms = life.now_ms
    t2_refunded = apple_transaction("t2", "o1", P, t0 + 30 * DAY_MS, t0 + 60 * DAY_MS,
                                    renewal=True, revocation_ms=refunded_ms)
    await life.apple_webhook(apple_notification(
        "REFUND", None, uuid="n4", signed_ms=refunded_ms, txn=t2_refunded, status=1))
    assert await life.entitlements("u1") == ["premium"]  # t3 is still paid for
    got, cursor = await sync(life, cursor)
    seen += got
    assert got == [("t2", "refunded")]

    life.advance(30 * 86400)
    await life.apple_webhook(apple_notification(
        "EXPIRED", "VOLUNTARY", uuid="n5", signed_ms=life.now_ms, txn=t3,
        renewal=apple_renewal("o1", P, auto_renew=False, signed_ms=life.now_ms), status=2))
    got, cursor = await sync(life, cursor)
    assert got == []  # EXPIRED names t3 again: nothing about it changed
    assert seen == [("t1", "recorded"), ("t2", "recorded"), ("t3", "recorded"),
                    ("t2", "refunded")]

    inputs = await history(life, "apple", "o1")
    assert [(i["source"], i["store_type"], i["transaction_id"], i["state_after"])
            for i in inputs] == [
        ("verify", "transaction", "t1", "active"), ("webhook", "SUBSCRIBED", "t1", "active"),
        ("webhook", "DID_RENEW", "t2", "active"), ("webhook", "DID_RENEW", "t3", "active"),
        ("webhook", "REFUND", "t2", "active"), ("webhook", "EXPIRED", "t3", "expired")]
    assert [int(i["id"]) for i in inputs] == sorted(int(i["id"]) for i in inputs)
    assert inputs[2]["summary"].startswith("webhook DID_RENEW (subscription.renewed): "
                                           "transaction t2, expires ")
    assert inputs[5]["state_before"] == "active" and inputs[5]["event_ids"]
    assert "raw" not in inputs[0]
    raw = await history(life, "apple", "o1", raw="1")
    assert json.loads(raw[0]["raw"])["transaction"]["transactionId"] == "t1"  # the answer
    webhook = json.loads(raw[4]["raw"])  # the inbox bytes, as Attesto signed them
    assert (webhook["event"], webhook["data"]["notificationType"]) == (
        "subscription.refunded", "REFUND")

    rows = (await get(life, "/v1/users/u1/transactions"))["transactions"]
    assert [(r["transaction_id"], r["refunded_at"] is not None) for r in rows] == [
        ("t1", False), ("t3", False), ("t2", True)]  # in cursor order: t2 moved last
    by_id = {r["transaction_id"]: r for r in rows}
    assert by_id["t2"]["refunded_at"] == _iso(refunded_ms)
    assert (by_id["t2"]["period_start"], by_id["t2"]["period_end"]) == (
        _iso(t0 + 30 * DAY_MS), _iso(t0 + 60 * DAY_MS))
    assert all((r["user_id"], r["subject_key"], r["product_id"], r["price"], r["currency"],
                r["ownership"]) == ("u1", "o1", P, "9.99", "USD", "purchased")
               for r in rows)

    # Migration 9's backfill, run over this input log, derives the same rows.
    from relay.store import ledger, ledger_backfill
    from relay.store.models import Ledger
    from relay.web.appkeys import STORE_KEY

    def rebuilt() -> list[dict[str, Any]]:
        Ledger.delete().execute()
        ledger_backfill.backfill()
        return [r.to_json() for r in ledger.page(0, 100)]

    again = await life.client.app[STORE_KEY].write(rebuilt)
    volatile = ("cursor", "recorded_at", "updated_at")
    assert sorted(({k: v for k, v in r.items() if k not in volatile} for r in again),
                  key=lambda r: r["transaction_id"]) == sorted(
        ({k: v for k, v in r.items() if k not in volatile} for r in rows),
        key=lambda r: r["transaction_id"])


async def test_a_refund_relays_transaction_events_only_where_asked(
        aiohttp_client: Any, aiohttp_server: Any, tmp_path: Any, clock: Any) -> None:
    """`transaction.*` is opt-in: an endpoint with the default `events = ["*"]` gets none,
    one that names `transaction.*` gets transaction.recorded per row and
    transaction.refunded for the refund, each on its transaction's own ordering lane."""
    from relay.config import DownstreamConfig
    from relay.store.models import Delivery, Event
    from relay.web.appkeys import STORE_KEY
    from tests.lifecycle.harness import start_relay

    life = await start_relay(aiohttp_client, aiohttp_server, tmp_path, clock, downstream=(
        DownstreamConfig(name="all", url="http://127.0.0.1:9/all"),
        DownstreamConfig(name="credits", url="http://127.0.0.1:9/credits",
                         events=("transaction.*",))))
    t0 = life.now_ms
    t1 = apple_transaction("k1", "ok", P, t0, t0 + 30 * DAY_MS)
    life.attesto.apple["k1"] = t1
    await life.verify_apple("u1", "k1")
    t1_refunded = apple_transaction("k1", "ok", P, t0, t0 + 30 * DAY_MS,
                                    revocation_ms=t0 + 1000)
    life.advance(2)
    await life.apple_webhook(apple_notification(
        "REFUND", None, uuid="r1", signed_ms=t0 + 1000, txn=t1_refunded, status=2))

    def read() -> list[tuple[str, list[str], list[tuple[str, int]]]]:
        return [(e.type, sorted(d.endpoint for d in Delivery.select().where(
                    Delivery.event == e.cursor)),
                 [(d.subject, d.sequence) for d in Delivery.select().where(
                     Delivery.event == e.cursor)])
                for e in Event.select().order_by(Event.cursor)]
    events = await life.client.app[STORE_KEY].read(read)
    assert [(t, ends) for t, ends, _ in events] == [
        ("subscription.purchased", ["all"]), ("transaction.recorded", ["credits"]),
        ("subscription.refunded", ["all"]), ("transaction.refunded", ["credits"])]
    assert events[1][2] == [("transaction:apple:k1", 1)]
    assert events[3][2] == [("transaction:apple:k1", 2)]
    body = json.loads(await life.client.app[STORE_KEY].read(
        lambda: Event.get(Event.type == "transaction.refunded").body))
    assert (body["transaction"]["transaction_id"], body["transaction"]["change"],
            body["user_id"], body["sequence"], body["source"]) == (
        "k1", "refunded", "u1", 2, "webhook")
    assert body["transaction"]["refunded_at"] == _iso(t0 + 1000)

    # Replayed after its delivered rows were pruned: back on the transaction's lane.
    await life.client.app[STORE_KEY].write(
        lambda: Delivery.delete().where(Delivery.endpoint == "credits").execute())
    resp = await life.client.post(
        "/v1/admin/replay", json={"endpoint": "credits", "subject": "apple:ok"},
        headers={"Authorization": "Bearer lifecycle-admin"})
    assert resp.status == 200, await resp.text()
    assert [lanes for t, _, lanes in await life.client.app[STORE_KEY].read(read)
            if t.startswith("transaction.")] == [[("transaction:apple:k1", 1)],
                                                 [("transaction:apple:k1", 2)]]


async def test_apple_renewal_webhook_and_verify_in_either_order_make_one_row(
        life: Relay) -> None:
    t0 = life.now_ms
    for otid, first in (("oa", "webhook"), ("ob", "verify")):
        txn = apple_transaction(f"{otid}-2", otid, P, t0, t0 + 30 * DAY_MS, renewal=True)
        life.attesto.apple[f"{otid}-2"] = txn
        note = apple_notification("DID_RENEW", None, uuid=f"{otid}-n", signed_ms=t0, txn=txn,
                                  renewal=apple_renewal(otid, P, auto_renew=True,
                                                        signed_ms=t0), status=1)
        if first == "webhook":
            await life.apple_webhook(note)
            await life.verify_apple("u1", f"{otid}-2")
        else:
            await life.verify_apple("u1", f"{otid}-2")
            await life.apple_webhook(note)
    rows = (await get(life, "/v1/transactions"))["transactions"]
    assert sorted(r["transaction_id"] for r in rows) == ["oa-2", "ob-2"]
    assert all(r["user_id"] == "u1" for r in rows)
    # Webhook first: recorded without a user, then the verify bound it (a change to see).
    assert {r["transaction_id"]: r["change"] for r in rows} == {"oa-2": "user_bound",
                                                                "ob-2": "recorded"}


async def test_google_renewal_repoll_and_verify_in_either_order_make_one_row(
        life: Relay) -> None:
    """SUBSCRIPTION_RENEWED carries no order; the re-verify reads the renewal order
    (`latestSuccessfulOrderId` `…..0`) and a client verify of the same token reads it
    again: one row, whichever comes first. A full-refund void of that order refunds it."""
    t0 = life.now_ms
    first = play_subscription("SUBSCRIPTION_STATE_ACTIVE", product=G, start_ms=t0,
                              expiry_ms=t0 + 30 * DAY_MS, order_id=ORDER)
    life.attesto.google["gtok"] = (first, G)
    await life.verify_google("u1", "gtok", G)
    life.advance(30 * 86400)
    renewed = play_subscription("SUBSCRIPTION_STATE_ACTIVE", product=G, start_ms=t0,
                                expiry_ms=t0 + 60 * DAY_MS, order_id=f"{ORDER}..0")
    life.attesto.google["gtok"] = (renewed, G)
    await life.google_webhook(rtdn_subscription(2, "gtok", G, life.now_ms), root="gtok")
    await life.repoll()  # the notification's re-verify
    await life.verify_google("u1", "gtok", G)  # the app verifies the renewal too
    rows = (await get(life, "/v1/users/u1/transactions"))["transactions"]
    assert [(r["transaction_id"], r["period_start"], r["period_end"]) for r in rows] == [
        (ORDER, _iso(t0), _iso(t0 + 30 * DAY_MS)),
        (f"{ORDER}..0", _iso(t0 + 30 * DAY_MS), _iso(t0 + 60 * DAY_MS))]

    # The other order: the app's verify first, then the notification and its re-verify.
    life.advance(30 * 86400)
    third = play_subscription("SUBSCRIPTION_STATE_ACTIVE", product=G, start_ms=t0,
                              expiry_ms=t0 + 90 * DAY_MS, order_id=f"{ORDER}..1")
    life.attesto.google["gtok"] = (third, G)
    await life.verify_google("u1", "gtok", G)
    await life.google_webhook(rtdn_subscription(2, "gtok", G, life.now_ms), root="gtok")
    await life.repoll()
    orders = [r["transaction_id"] for r in
              (await get(life, "/v1/users/u1/transactions"))["transactions"]]
    assert orders == [ORDER, f"{ORDER}..0", f"{ORDER}..1"]

    # Play voids the middle order (a full refund): that row, and only it, is refunded.
    _, cursor = await sync(life, "0")
    life.advance(3600)
    voided_ms = life.now_ms
    await life.google_webhook(rtdn_voided("gtok", f"{ORDER}..0", voided_ms), root=None)
    seen, _ = await sync(life, cursor)
    assert seen == [(f"{ORDER}..0", "refunded")]
    rows = (await get(life, "/v1/users/u1/transactions"))["transactions"]
    assert [(r["transaction_id"], r["refunded_at"]) for r in rows] == [
        (ORDER, None), (f"{ORDER}..1", None), (f"{ORDER}..0", _iso(voided_ms))]


def _iso(ms: int) -> str:
    from relay.core.domain import iso
    out = iso(ms)
    assert out is not None
    return out


def test_migration_9_records_the_transactions_of_a_store_older_than_the_ledger(
        tmp_path: Any, capsys: Any) -> None:
    """`relay migrate` on the store relay at 52d9077 wrote (no input log, no ledger): the
    ledger is filled from the inbox's webhooks and the baseline rows, refunds included (a
    REFUND of last month's transaction refunds that one; a Google void its order), and
    nothing is relayed for it."""
    from tests.lifecycle.test_lifecycle_reproject import _old_store, _query, _relay

    config = _old_store(tmp_path)
    _relay(capsys, "migrate", "--config", str(config))
    rows = _query(config, "SELECT transaction_id, subject_key, user_id, refunded_ms, cursor "
                          "FROM ledger ORDER BY cursor")
    assert {(r[0], r[1], r[2], r[3] is not None) for r in rows} == {
        ("a-normal-1", "a-normal", "u-normal", False),
        ("a-normal-2", "a-normal", "u-normal", False),
        ("a-grace-1", "a-grace", "u-grace", False),
        ("a-oldrefund-1", "a-oldrefund", "u-oldrefund", True),  # REFUND of the old period
        ("a-oldrefund-2", "a-oldrefund", "u-oldrefund", False),
        ("a-status-1", "a-status", "u-status", False),
        ("GPA.2000-0000-0000-00002..0", "g-void", "u-gvoid", True),  # voidedPurchase
        ("a-expired-1", "a-expired", "u-expired", False)}  # its baseline's latest_ref
    assert len({r[4] for r in rows}) == len(rows)
    assert _query(config, "SELECT COUNT(*) FROM event WHERE substr(type, 1, 12) = "
                          "'transaction.'") == [(0,)]


async def test_transaction_events_wait_for_the_environment_like_the_purchases_do(
        aiohttp_client: Any, aiohttp_server: Any, tmp_path: Any, clock: Any) -> None:
    """Google notifications carry no environment (issue 15, defect 6): a void recorded
    before the re-verify read Play's `testPurchase` waits `unrouted` for an endpoint that
    filters on the environment, and the re-verify releases it (and fills in the row)."""
    from relay.config import DownstreamConfig
    from relay.store.models import Delivery, Event
    from relay.web.appkeys import STORE_KEY
    from tests.lifecycle.harness import start_relay

    life = await start_relay(aiohttp_client, aiohttp_server, tmp_path, clock, downstream=(
        DownstreamConfig(name="credits", url="http://127.0.0.1:9/credits",
                         events=("transaction.*",), environments=("production",)),))
    t0 = life.now_ms
    life.attesto.google["vt"] = (play_subscription(
        "SUBSCRIPTION_STATE_EXPIRED", product=G, start_ms=t0, expiry_ms=t0 + DAY_MS,
        order_id=ORDER), G)
    await life.google_webhook(rtdn_subscription(4, "vt", G, t0), root="vt")
    await life.google_webhook(rtdn_voided("vt", ORDER, t0 + 1), root=None)

    def statuses() -> list[tuple[str, str, str]]:
        return [(e.type, d.subject, d.status) for e in Event.select().order_by(Event.cursor)
                for d in Delivery.select().where(Delivery.event == e.cursor)]
    assert await life.client.app[STORE_KEY].read(statuses) == [
        ("transaction.recorded", f"transaction:google:{ORDER}", "unrouted"),
        ("transaction.refunded", f"transaction:google:{ORDER}", "unrouted")]
    await life.repoll()  # Play's answer: no testPurchase, production
    assert await life.client.app[STORE_KEY].read(statuses) == [
        ("transaction.recorded", f"transaction:google:{ORDER}", "pending"),
        ("transaction.refunded", f"transaction:google:{ORDER}", "pending")]
    [row] = (await get(life, "/v1/transactions"))["transactions"]
    assert (row["environment"], row["refunded_at"]) == ("production", _iso(t0 + 1))


async def test_apple_refund_declined_reversed_and_revoke(life: Relay) -> None:
    """[ASN] REFUND_DECLINED changes nothing; REFUND_REVERSED ("the App Store reversed a
    previously granted refund") un-refunds the transaction, a change delivered again; a
    notification signed before the reversal cannot refund it again; REVOKE of a Family
    Sharing transaction (`inAppOwnershipType` FAMILY_SHARED) revokes it."""
    t0 = life.now_ms
    t1 = apple_transaction("r1", "or", P, t0, t0 + 30 * DAY_MS)
    life.attesto.apple["r1"] = t1
    await life.verify_apple("u1", "r1")
    _, cursor = await sync(life, "0")

    def note(kind: str, signed: int, revoked: int | None, n: str) -> dict[str, Any]:
        txn = apple_transaction("r1", "or", P, t0, t0 + 30 * DAY_MS, revocation_ms=revoked)
        return apple_notification(kind, None, uuid=n, signed_ms=signed, txn=txn,
                                  status=1 if revoked is None else 2)

    await life.apple_webhook(note("REFUND_DECLINED", t0 + 10, None, "d"))
    assert (await sync(life, cursor))[0] == []
    await life.apple_webhook(note("REFUND", t0 + 20, t0 + 20, "r"))
    got, cursor = await sync(life, cursor)
    assert got == [("r1", "refunded")]
    await life.apple_webhook(note("REFUND_REVERSED", t0 + 30, None, "v"))
    got, cursor = await sync(life, cursor)
    assert got == [("r1", "refund_reversed")]
    await life.apple_webhook(note("REFUND", t0 + 25, t0 + 20, "late"))  # signed before
    assert (await sync(life, cursor))[0] == []
    [row] = (await get(life, "/v1/transactions"))["transactions"]
    assert (row["refunded_at"], row["revoked_at"], row["change"]) == (
        None, None, "refund_reversed")

    shared = apple_transaction("f1", "of", P, t0, t0 + 30 * DAY_MS, family_shared=True,
                               revocation_ms=t0 + 40)
    await life.apple_webhook(apple_notification("REVOKE", None, uuid="rv", signed_ms=t0 + 40,
                                                txn=shared, status=5))
    got, _ = await sync(life, cursor)
    assert got == [("f1", "recorded")]
    rows = {r["transaction_id"]: r for r in (await get(life, "/v1/transactions"))[
        "transactions"]}
    assert (rows["f1"]["revoked_at"], rows["f1"]["refunded_at"], rows["f1"]["ownership"]) == (
        _iso(t0 + 40), None, "family_shared")
