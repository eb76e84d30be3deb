"""Write a store with relay as it was at 52d9077 (before issue 15), through the defective
sequences, for the `relay reproject` acceptance test (test_lifecycle_reproject.py).

The committed store (data/store-52d9077.sqlite3) was made with that commit's own code:

    rm -rf /tmp/relay-52d9077 && mkdir /tmp/relay-52d9077
    git archive 52d9077 relay | tar -x -C /tmp/relay-52d9077
    RELAY_OLD_TREE=/tmp/relay-52d9077 .venv/bin/python tests/lifecycle/old_store.py \\
        tests/lifecycle/data/store-52d9077.sqlite3

(`RELAY_OLD_TREE` goes first on sys.path, ahead of the editable install of this tree.)

Every time is on a fixed clock in 2096, so that what a purchase grants "now" (whenever
the test runs, before then) depends on its state only. Purchases (subject keys):
  a-normal   SUBSCRIBED + verify, DID_RENEW: right then and now (no diff expected)
  a-grace    DID_FAIL_TO_RENEW/GRACE_PERIOD: old relay stored no grace end (defect 1)
  a-oldrefund REFUND of last month's transaction: old relay refunded the row (defect 2)
  a-status   AUTO_RENEW_ENABLED with status 3: old relay granted access (defect 3)
  a-expired  first verify of a transaction that ended 5 days before: old relay said
             active (defect 8)
  g-normal   PURCHASED + verify, RENEWED + re-poll, CANCELED + re-poll (no diff)
  g-void     void of an old renewal order while Play still says active: old relay
             refunded (defect 4)
  g-root     upgrade to g-root-b, then a late EXPIRED about the root token and its
             re-poll: old relay moved back to the root (defect 5)
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import tempfile
from pathlib import Path

if __name__ == "__main__" and os.environ.get("RELAY_OLD_TREE"):
    # The editable install's finder would hand out this tree's relay: drop it.
    sys.meta_path[:] = [f for f in sys.meta_path
                        if "editable" not in str(getattr(f, "__module__", ""))]
    sys.path[:0] = [os.environ["RELAY_OLD_TREE"], str(Path(__file__).resolve().parents[2])]

import relay  # noqa: E402
from tests.conftest import Clock  # noqa: E402
from tests.lifecycle.harness import Relay, start_relay  # noqa: E402
from tests.lifecycle.stores import (  # noqa: E402
    DAY_MS,
    apple_notification,
    apple_renewal,
    apple_transaction,
    play_subscription,
    rtdn_subscription,
    rtdn_voided,
)

CLOCK_S = 4_000_000_000.0  # 2096-10-02
P, G, PRO = "com.example.premium", "premium_monthly", "pro_monthly"


async def _apple_subscribe(life: Relay, otid: str, user: str, *, days: int = 30) -> dict:
    now = life.now_ms
    t1 = apple_transaction(f"{otid}-1", otid, P, now - DAY_MS, now + days * DAY_MS)
    life.attesto.apple[t1["transactionId"]] = t1
    await life.apple_webhook(apple_notification(
        "SUBSCRIBED", "INITIAL_BUY", uuid=f"{otid}-sub", signed_ms=now, txn=t1,
        renewal=apple_renewal(otid, P, auto_renew=True, signed_ms=now), status=1))
    await life.verify_apple(user, t1["transactionId"])
    return t1


async def sequences(life: Relay) -> None:
    t0 = life.now_ms
    # a-normal
    await _apple_subscribe(life, "a-normal", "u-normal", days=1)
    life.advance(86_400)
    t2 = apple_transaction("a-normal-2", "a-normal", P, t0 + DAY_MS, t0 + 31 * DAY_MS,
                           renewal=True)
    await life.apple_webhook(apple_notification(
        "DID_RENEW", None, uuid="a-normal-renew", signed_ms=life.now_ms, txn=t2,
        renewal=apple_renewal("a-normal", P, auto_renew=True, signed_ms=life.now_ms),
        status=1))
    # a-grace
    now = life.now_ms
    g1 = apple_transaction("a-grace-1", "a-grace", P, now - 29 * DAY_MS, now + 3_600_000)
    life.attesto.apple["a-grace-1"] = g1
    await life.apple_webhook(apple_notification(
        "SUBSCRIBED", "INITIAL_BUY", uuid="a-grace-sub", signed_ms=now, txn=g1,
        renewal=apple_renewal("a-grace", P, auto_renew=True, signed_ms=now), status=1))
    await life.verify_apple("u-grace", "a-grace-1")
    life.advance(3_660)
    await life.apple_webhook(apple_notification(
        "DID_FAIL_TO_RENEW", "GRACE_PERIOD", uuid="a-grace-fail", signed_ms=life.now_ms,
        txn=g1, renewal=apple_renewal("a-grace", P, auto_renew=True, signed_ms=life.now_ms,
                                      grace_expires_ms=life.now_ms + 16 * DAY_MS,
                                      in_billing_retry=True), status=4))
    # a-oldrefund
    r1 = await _apple_subscribe(life, "a-oldrefund", "u-oldrefund", days=1)
    life.advance(86_460)
    r2 = apple_transaction("a-oldrefund-2", "a-oldrefund", P, r1["expiresDate"],
                           r1["expiresDate"] + 30 * DAY_MS, renewal=True)
    await life.apple_webhook(apple_notification(
        "DID_RENEW", None, uuid="a-oldrefund-renew", signed_ms=life.now_ms, txn=r2,
        renewal=apple_renewal("a-oldrefund", P, auto_renew=True, signed_ms=life.now_ms),
        status=1))
    life.advance(86_400)
    await life.apple_webhook(apple_notification(
        "REFUND", None, uuid="a-oldrefund-refund", signed_ms=life.now_ms,
        txn=dict(r1, revocationDate=life.now_ms, revocationReason=1),
        renewal=apple_renewal("a-oldrefund", P, auto_renew=True, signed_ms=life.now_ms),
        status=1))
    # a-status
    now = life.now_ms
    s1 = apple_transaction("a-status-1", "a-status", P, now - 29 * DAY_MS, now + 60_000)
    life.attesto.apple["a-status-1"] = s1
    await life.apple_webhook(apple_notification(
        "SUBSCRIBED", "INITIAL_BUY", uuid="a-status-sub", signed_ms=now, txn=s1,
        renewal=apple_renewal("a-status", P, auto_renew=True, signed_ms=now), status=1))
    await life.verify_apple("u-status", "a-status-1")
    life.advance(120)
    for uuid, ntype, subtype in (("a-status-fail", "DID_FAIL_TO_RENEW", None),
                                 ("a-status-on", "DID_CHANGE_RENEWAL_STATUS",
                                  "AUTO_RENEW_ENABLED")):
        await life.apple_webhook(apple_notification(
            ntype, subtype, uuid=uuid, signed_ms=life.now_ms, txn=s1,
            renewal=apple_renewal("a-status", P, auto_renew=True, signed_ms=life.now_ms,
                                  in_billing_retry=True), status=3))
        life.advance(60)
    # g-normal
    now = life.now_ms
    life.attesto.google["g-normal"] = (play_subscription(
        "SUBSCRIPTION_STATE_ACTIVE", product=G, expiry_ms=now + DAY_MS, start_ms=now,
        order_id="GPA.1000-0000-0000-00001"), G)
    await life.google_webhook(rtdn_subscription(4, "g-normal", G, now), root="g-normal")
    await life.verify_google("u-gnormal", "g-normal", G)
    life.advance(86_400)
    life.attesto.google["g-normal"] = (play_subscription(
        "SUBSCRIPTION_STATE_ACTIVE", product=G, expiry_ms=now + 31 * DAY_MS, start_ms=now,
        order_id="GPA.1000-0000-0000-00001..0"), G)
    await life.google_webhook(rtdn_subscription(2, "g-normal", G, life.now_ms),
                              root="g-normal")
    await life.repoll()
    life.advance(3_600)
    life.attesto.google["g-normal"] = (play_subscription(
        "SUBSCRIPTION_STATE_CANCELED", product=G, expiry_ms=now + 31 * DAY_MS, start_ms=now,
        auto_renew=False, order_id="GPA.1000-0000-0000-00001..0", canceled_by_user=True), G)
    await life.google_webhook(rtdn_subscription(3, "g-normal", G, life.now_ms),
                              root="g-normal")
    await life.repoll()
    # g-void
    now = life.now_ms
    life.attesto.google["g-void"] = (play_subscription(
        "SUBSCRIPTION_STATE_ACTIVE", product=G, expiry_ms=now + 30 * DAY_MS, start_ms=now,
        order_id="GPA.2000-0000-0000-00002..1"), G)
    await life.google_webhook(rtdn_subscription(4, "g-void", G, now), root="g-void")
    await life.verify_google("u-gvoid", "g-void", G)
    life.advance(60)
    await life.google_webhook(rtdn_voided("g-void", "GPA.2000-0000-0000-00002..0",
                                          life.now_ms), root=None)
    # g-root
    now = life.now_ms
    life.attesto.google["g-root"] = (play_subscription(
        "SUBSCRIPTION_STATE_ACTIVE", product=G, expiry_ms=now + 30 * DAY_MS, start_ms=now), G)
    await life.google_webhook(rtdn_subscription(4, "g-root", G, now), root="g-root")
    await life.verify_google("u-groot", "g-root", G)
    life.advance(60)
    life.attesto.google["g-root-b"] = (play_subscription(
        "SUBSCRIPTION_STATE_ACTIVE", product=PRO, expiry_ms=life.now_ms + 30 * DAY_MS,
        start_ms=life.now_ms, linked="g-root"), PRO)
    life.attesto.google["g-root"] = (play_subscription(
        "SUBSCRIPTION_STATE_EXPIRED", product=G, expiry_ms=life.now_ms, start_ms=now,
        replaced=True), G)
    await life.google_webhook(rtdn_subscription(4, "g-root-b", PRO, life.now_ms),
                              root="g-root")
    await life.repoll()
    life.advance(60)
    await life.google_webhook(rtdn_subscription(13, "g-root", G, life.now_ms),
                              root="g-root")
    await life.repoll()
    # a-expired (last: no re-poll of old relay's may heal it before the store is copied)
    now = life.now_ms
    x1 = apple_transaction("a-expired-1", "a-expired", P, now - 35 * DAY_MS, now - 5 * DAY_MS)
    life.attesto.apple["a-expired-1"] = x1
    await life.verify_apple("u-expired", "a-expired-1")



async def build(out: Path) -> None:
    from aiohttp.test_utils import TestClient, TestServer

    clock = Clock(CLOCK_S)
    clients: list[TestClient] = []
    servers: list[TestServer] = []

    async def aiohttp_client(app: object) -> TestClient:
        client = TestClient(TestServer(app))  # type: ignore[arg-type]
        await client.start_server()
        clients.append(client)
        return client

    async def aiohttp_server(app: object, host: str = "127.0.0.1") -> TestServer:
        server = TestServer(app, host=host)  # type: ignore[arg-type]
        await server.start_server()
        servers.append(server)
        return server

    with tempfile.TemporaryDirectory() as tmp:
        life = await start_relay(aiohttp_client, aiohttp_server, Path(tmp), clock)
        try:
            await sequences(life)
        finally:
            for c in clients:
                await c.close()
            for s in servers:
                await s.close()
        shutil.copyfile(Path(tmp) / "relay.sqlite3", out)


if __name__ == "__main__":
    print(f"writing {sys.argv[1]} with relay from {relay.__file__}")
    asyncio.run(build(Path(sys.argv[1])))
