"""The @nossdev/iap drop-in backend: exactly the shapes the client validates, JWT auth."""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from pathlib import Path
from typing import Any

import jwt
import pytest

from relay.attesto.simulator import AttestoSimulator
from relay.store import pipeline
from relay.web.appkeys import RUNTIME_KEY, STORE_KEY
from tests.conftest import JWT_SECRET, Clock, RelayFactory, auth
from tests.support.verify import DAY_MS, apple_webhook_snapshot, user_token, verify_config

# ---- the client's Zod schemas (src/adapters/backend/types.ts, src/types/*.ts) in Python ----


def _iso(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    return True


def check_entitlement(e: Any) -> None:
    """entitlementBaseSchema.passthrough(): key, productId (min 1), expiresAt string|null."""
    assert isinstance(e, dict)
    assert isinstance(e["key"], str) and e["key"]
    assert isinstance(e["productId"], str) and e["productId"]
    assert "expiresAt" in e and (e["expiresAt"] is None or _iso(e["expiresAt"]))


def check_failure(doc: dict[str, Any]) -> None:
    assert doc["valid"] is False and isinstance(doc["error"], str)
    assert "message" not in doc or isinstance(doc["message"], str)


def check_verify(doc: dict[str, Any]) -> None:
    """verifyResponseSchema: discriminated union on `valid`."""
    if doc["valid"] is not True:
        return check_failure(doc)
    for e in doc["entitlements"]:
        check_entitlement(e)
    t = doc["transaction"]
    assert isinstance(t["id"], str) and isinstance(t["productId"], str)
    assert "expiresAt" not in t or t["expiresAt"] is None or _iso(t["expiresAt"])
    assert "verifiedAt" not in t or _iso(t["verifiedAt"])
    return None


def check_restore(doc: dict[str, Any]) -> None:
    """restoreResponseSchema, and the older verify-schema validation of restore answers."""
    if doc["valid"] is not True:
        return check_failure(doc)
    for e in doc["entitlements"]:
        check_entitlement(e)
    check_verify(doc)
    return None


def check_products(doc: dict[str, Any]) -> None:
    for p in doc["products"]:
        assert isinstance(p["id"], str) and p["id"]
        assert p["type"] in ("subscription", "product", "consumable")
        assert p["type"] != "subscription" or p["androidPlanId"]


# ----------------------------------------------------------------------------------------


async def start(relay_factory: RelayFactory, tmp_path: Path, attesto_url: str,
                **sections: Any) -> Any:
    return await relay_factory(verify_config(tmp_path, attesto_url, **sections),
                               use_clock=True)


async def test_verify_apple_and_google_shapes(relay_factory: RelayFactory, tmp_path: Path,
                                              sim: AttestoSimulator, attesto_url: str,
                                              clock: Clock) -> None:
    now = int(clock() * 1000)
    sim.add_apple(transaction_id="t1", original_transaction_id="o1", product_id="premium.monthly",
                  expires_ms=now + DAY_MS, purchase_ms=now)
    sim.add_google(token="g1", product_id="coins_100", kind="product", start_ms=now)
    client = await start(relay_factory, tmp_path, attesto_url)
    headers = auth(user_token("alice"))
    resp = await client.post("/api/iap/verify/apple", headers=headers, json={
        "productId": "premium.monthly", "transactionId": "t1", "type": "subscription",
        "user_id": "mallory"})  # never trusted: the user is the token's `sub`
    doc = await resp.json()
    check_verify(doc)
    assert set(doc) == {"valid", "transaction", "entitlements"}
    assert doc["transaction"]["id"] == "t1" and doc["transaction"]["productId"] == \
        "premium.monthly"
    assert doc["entitlements"] == [{"key": "premium", "productId": "premium.monthly",
                                    "expiresAt": doc["transaction"]["expiresAt"],
                                    "platform": "apple"}]
    purchase = await (await client.get("/v1/purchases/apple/o1", headers=auth())).json()
    assert purchase["user_id"] == "alice"

    resp = await client.post("/api/iap/verify/google", headers=headers, json={
        "productId": "coins_100", "purchaseToken": "g1", "packageName": "com.example.app",
        "type": "consumable"})
    doc = await resp.json()
    check_verify(doc)
    assert doc["transaction"] == {"id": "g1", "productId": "coins_100", "expiresAt": None,
                                  "verifiedAt": doc["transaction"]["verifiedAt"]}
    assert sorted(e["key"] for e in doc["entitlements"]) == ["coins", "premium"]

    ents = await (await client.get("/api/iap/entitlements", headers=headers)).json()
    assert set(ents) == {"entitlements"} and len(ents["entitlements"]) == 2
    for e in ents["entitlements"]:
        check_entitlement(e)
    none = await (await client.get("/api/iap/entitlements",
                                   headers=auth(user_token("bob")))).json()
    assert none == {"entitlements": []}


async def test_rejections_are_valid_false(relay_factory: RelayFactory, tmp_path: Path,
                                          sim: AttestoSimulator, attesto_url: str,
                                          clock: Clock) -> None:
    now = int(clock() * 1000)
    sim.add_apple(transaction_id="t1", original_transaction_id="o1", product_id="premium.monthly",
                  expires_ms=now + DAY_MS, purchase_ms=now)
    client = await start(relay_factory, tmp_path, attesto_url,
                         purchases={"owner_conflict": "keep"})
    resp = await client.post("/api/iap/verify/apple", headers=auth(user_token("a")),
                             json={"productId": "x", "transactionId": "nope", "type": "product"})
    doc = await resp.json()
    assert resp.status == 200 and doc == {"valid": False, "error": "TRANSACTION_NOT_FOUND",
                                          "message": doc["message"]}
    check_verify(doc)
    body = {"productId": "premium.monthly", "transactionId": "t1", "type": "subscription"}
    assert (await (await client.post("/api/iap/verify/apple", headers=auth(user_token("a")),
                                     json=body)).json())["valid"] is True
    resp = await client.post("/api/iap/verify/apple", headers=auth(user_token("b")), json=body)
    doc = await resp.json()
    assert resp.status == 200 and doc["error"] == "PURCHASE_OWNED_BY_OTHER_USER"
    check_verify(doc)


async def test_restore_shapes(relay_factory: RelayFactory, tmp_path: Path,
                              sim: AttestoSimulator, attesto_url: str, clock: Clock) -> None:
    now = int(clock() * 1000)
    sim.add_apple(transaction_id="t1", original_transaction_id="o1", product_id="premium.monthly",
                  expires_ms=now + DAY_MS, purchase_ms=now)
    sim.add_google(token="g1", product_id="premium", expiry_ms=now + DAY_MS, start_ms=now)
    client = await start(relay_factory, tmp_path, attesto_url)
    headers = auth(user_token("carol"))
    resp = await client.post("/api/iap/restore", headers=headers, json={"transactions": [
        {"platform": "apple", "productId": "premium.monthly", "transactionId": "t1"},
        {"platform": "google", "productId": "premium", "purchaseToken": "g1",
         "packageName": "com.example.app"},
        {"platform": "apple", "productId": "x", "transactionId": "gone"}]})
    doc = await resp.json()
    check_restore(doc)
    assert [e["key"] for e in doc["entitlements"]] == ["premium", "premium"]
    assert [(r["valid"], r["granted"], r["reason"]) for r in doc["results"]] == [
        (True, ["premium"], None), (True, ["premium"], None),
        (False, [], "TRANSACTION_NOT_FOUND")]
    resp = await client.post("/api/iap/restore", headers=headers, json={"transactions": [
        {"platform": "apple", "productId": "x", "transactionId": "gone"}]})
    doc = await resp.json()
    check_restore(doc)
    assert doc["valid"] is False and doc["error"] == "TRANSACTION_NOT_FOUND"


async def test_products_catalogue(relay_factory: RelayFactory, tmp_path: Path,
                                  attesto_url: str) -> None:
    client = await start(relay_factory, tmp_path, attesto_url)
    doc = await (await client.get("/api/iap/products", headers=auth(user_token()))).json()
    check_products(doc)
    assert doc == {"products": [
        {"id": "premium.monthly", "type": "subscription", "androidPlanId": "monthly"},
        {"id": "premium", "type": "subscription", "androidPlanId": "monthly"},
        {"id": "coins_100", "type": "consumable"}]}
    empty = await start(relay_factory, tmp_path / "b", attesto_url, products=())
    resp = await empty.get("/api/iap/products", headers=auth(user_token()))
    assert resp.status == 404
    assert (await resp.json())["error"]["code"] == "products_not_configured"


async def test_uuid_is_idempotent_and_binds_an_early_webhook(
        relay_factory: RelayFactory, tmp_path: Path, attesto_url: str, clock: Clock) -> None:
    client = await start(relay_factory, tmp_path, attesto_url)
    first = await (await client.post("/api/iap/uuid", headers=auth(user_token("dave")))).json()
    again = await (await client.get("/api/iap/uuid", headers=auth(user_token("dave")))).json()
    other = await (await client.post("/api/iap/uuid", headers=auth(user_token("erin")))).json()
    assert set(first) == {"uuid"} and first == again and other != first
    # Attesto's webhook for a purchase made with that appAccountToken, before any verify.
    now = int(clock() * 1000)
    snap = apple_webhook_snapshot("o5", "t5", "premium.monthly", now + DAY_MS, now, now,
                                  app_user_id=first["uuid"])
    rules = client.app[RUNTIME_KEY].rules
    await client.app[STORE_KEY].write(lambda: pipeline.apply(snap, rules, now))
    ents = await (await client.get("/api/iap/entitlements",
                                   headers=auth(user_token("dave")))).json()
    assert [e["key"] for e in ents["entitlements"]] == ["premium"]


def bad_tokens() -> list[str | None]:
    now = int(time.time())
    good = {"sub": "u", "iss": "issuer-1", "aud": "app-1", "exp": now + 60}
    return [
        None,
        "not-a-jwt",
        jwt.encode(good, "another-secret-that-is-long-enough-0123", algorithm="HS256"),
        jwt.encode({**good, "exp": now - 600}, JWT_SECRET, algorithm="HS256"),
        jwt.encode({**good, "aud": "other-app"}, JWT_SECRET, algorithm="HS256"),
        jwt.encode({**good, "iss": "someone"}, JWT_SECRET, algorithm="HS256"),
        jwt.encode({k: v for k, v in good.items() if k != "sub"}, JWT_SECRET,
                   algorithm="HS256"),
    ]


@pytest.mark.parametrize("token", bad_tokens())
async def test_bad_jwts_are_401_and_reveal_nothing(token: str | None,
                                                   relay_factory: RelayFactory,
                                                   tmp_path: Path, sim: AttestoSimulator,
                                                   attesto_url: str) -> None:
    cfg = verify_config(tmp_path, attesto_url)
    cfg = dataclasses.replace(cfg, jwt=dataclasses.replace(cfg.jwt, issuer="issuer-1",
                                                           audience="app-1"))
    client = await relay_factory(cfg)
    good = jwt.encode({"sub": "u", "iss": "issuer-1", "aud": "app-1",
                       "exp": int(time.time()) + 60}, JWT_SECRET, algorithm="HS256")
    assert (await client.get("/api/iap/entitlements", headers=auth(good))).status == 200
    headers = auth(token) if token else {}
    for method, path in [("POST", "/api/iap/verify/apple"), ("POST", "/api/iap/verify/google"),
                         ("POST", "/api/iap/restore"), ("GET", "/api/iap/entitlements"),
                         ("GET", "/api/iap/products"), ("POST", "/api/iap/uuid")]:
        resp = await client.request(method, path, headers=headers,
                                    json={"transactionId": "t1", "productId": "p",
                                          "type": "subscription"})
        assert resp.status == 401
        doc = await resp.json()
        assert list(doc) == ["error"] and list(doc["error"]) == ["code", "message"]
        assert doc["error"]["code"] == "unauthorized"
        assert doc["error"]["message"] in ("invalid token",
                                           "missing or malformed Authorization header")
    assert sim.calls == []


async def test_service_key_is_not_a_user_token(relay_factory: RelayFactory, tmp_path: Path,
                                               attesto_url: str) -> None:
    client = await start(relay_factory, tmp_path, attesto_url)
    assert (await client.get("/api/iap/entitlements", headers=auth())).status == 401
