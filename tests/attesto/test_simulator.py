"""The Attesto simulator follows the contract: signer vector, key order, envelopes."""

from __future__ import annotations

import json

import aiohttp

from relay.attesto.signature import verify_attesto
from relay.attesto.sim_webhooks import apple_event_for
from relay.attesto.simulator import AttestoSimulator

VECTOR_BODY = b'{"event":"test","eventId":"evt_01JR8Q3Z5K7M9N2P4R6T8V0W1X"}'
VECTOR_SIG = "t=1776513600,v1=792907f1ff5cac546b3c70f706081a495809d6225d159b10592d672eb399d726"


def test_signer_matches_the_contract_vector() -> None:
    sim = AttestoSimulator(webhook_secret="whsec-example-0123456789abcdefghijklmnopqrstuv")
    headers = sim.headers_for(VECTOR_BODY, t=1776513600)
    assert headers["X-Attesto-Signature"] == VECTOR_SIG
    assert headers["X-Attesto-Event-Id"] == "evt_01JR8Q3Z5K7M9N2P4R6T8V0W1X"
    assert headers["X-Attesto-Timestamp"] == "1776513600"
    assert verify_attesto(headers["X-Attesto-Signature"], VECTOR_BODY,
                          [sim.webhook_secret], now_s=1776513600) == 1776513600


def test_webhook_envelope_key_order_and_format() -> None:
    sim = AttestoSimulator()
    txn = sim.add_apple(transaction_id="t1", original_transaction_id="o1",
                        product_id="p", expires_ms=1_800_000_000_000, purchase_ms=1)
    body = sim.apple_webhook("DID_RENEW", txn, signed_ms=1_800_000_000_000)
    doc = json.loads(body)
    assert list(doc) == ["event", "reason", "platformEvent", "eventId", "externalId",
                         "timestamp", "tenantId", "source", "subject", "appUserId", "data",
                         "raw"]
    assert list(doc["subject"]) == ["key", "productId", "type"]
    assert doc["event"] == "subscription.renewed" and doc["platformEvent"] == "apple.did_renew"
    assert b": " not in body and b", " not in body  # compact
    assert doc["timestamp"].endswith("Z") and len(doc["timestamp"]) == 24
    assert list(doc["data"]) == sorted(doc["data"], key=lambda k: (len(k), k))  # jsonb order


def test_apple_lookup_falls_back_to_the_bare_type() -> None:
    assert apple_event_for("SUBSCRIBED", "RESUBSCRIBE") == ("subscription.purchased",
                                                           "resubscribe")
    assert apple_event_for("EXPIRED", "SOMETHING_NEW") == ("subscription.expired", None)
    assert apple_event_for("DID_CHANGE_RENEWAL_STATUS", None) == ("unknown", None)


async def test_verify_shapes_and_errors(aiohttp_client, sim: AttestoSimulator) -> None:  # type: ignore[no-untyped-def]
    client = await aiohttp_client(sim.app())
    auth = {"Authorization": f"Bearer {sim.api_key}"}
    sim.add_apple(transaction_id="t1", original_transaction_id="o1", product_id="p",
                  expires_ms=1_800_000_000_000, purchase_ms=1_700_000_000_000)
    resp = await client.post("/v1/apple/verify", json={"transactionId": "t1"}, headers=auth)
    body = await resp.json()
    assert list(body) == ["valid", "environment", "transaction", "appUserId", "version"]
    assert body["transaction"]["expiresDate"] == "2027-01-15T08:00:00.000Z"
    assert resp.headers["Content-Type"] == "application/json"

    resp = await client.post("/v1/apple/verify", json={"transactionId": "t1"})
    assert resp.status == 401
    assert await resp.json() == {"valid": False, "error": "UNAUTHENTICATED",
                                 "message": "Missing or malformed Authorization header"}
    assert resp.headers["Content-Type"] == "application/json; charset=utf-8"

    resp = await client.post("/v1/apple/verify", json={"transactionId": "zz"}, headers=auth)
    assert (await resp.json())["error"] == "TRANSACTION_NOT_FOUND"

    sim.fail_next(429, error="RATE_LIMITED", message="Rate limit exceeded", retry_after=3)
    resp = await client.post("/v1/apple/verify", json={"transactionId": "t1"}, headers=auth)
    assert resp.status == 429 and resp.headers["Retry-After"] == "3"
    assert (await resp.json())["details"] == {"retryAfterSeconds": 3}

    resp = await client.post("/v1/google/verify", headers=auth, json={
        "packageName": "other", "productId": "p", "purchaseToken": "x", "type": "subscription"})
    assert (await resp.json())["error"] == "PACKAGE_NAME_MISMATCH"
    resp = await client.post("/v1/google/verify", headers=auth, json={
        "packageName": sim.package_name, "productId": "p", "purchaseToken": "x", "type": "bad"})
    assert resp.status == 400 and (await resp.json())["error"] == "INVALID_REQUEST"


async def test_deliver_posts_signed_bytes(aiohttp_server, sim: AttestoSimulator) -> None:  # type: ignore[no-untyped-def]
    from aiohttp import web

    got: list[tuple[dict[str, str], bytes]] = []

    async def sink(request: web.Request) -> web.Response:
        got.append((dict(request.headers), await request.read()))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/", sink)
    server = await aiohttp_server(app)
    body = sim.google_webhook(2, sim.add_google(token="tok", product_id="premium"))
    async with aiohttp.ClientSession() as session:
        status, _ = await sim.deliver(session, str(server.make_url("/")), body)
    assert status == 204
    headers, raw = got[0]
    assert raw == body
    verify_attesto(headers["X-Attesto-Signature"], raw, [sim.webhook_secret],
                   now_s=int(headers["X-Attesto-Timestamp"]))
