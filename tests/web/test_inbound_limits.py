"""`[limits]`: per-caller token buckets on verify, restore and /api/iap; restore's deadline.

One caller (a service key, or an end user's JWT `sub`) spending its budget gets 429 with
Retry-After (RFC 6585 §4); every other caller is served as before.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from relay.attesto.simulator import AttestoSimulator
from tests.conftest import API_KEY, RelayFactory, auth
from tests.support.verify import DAY_MS, user_token, verify_config

OTHER_KEY = "relay-test-other-service-key"


async def start(relay_factory: RelayFactory, tmp_path: Path, attesto_url: str,
                **limits: Any) -> Any:
    import dataclasses
    import hashlib

    config = verify_config(tmp_path, attesto_url, limits=limits)
    other = ("other", hashlib.sha256(OTHER_KEY.encode()).hexdigest())
    config = dataclasses.replace(config, credentials=dataclasses.replace(
        config.credentials, api_keys=(*config.credentials.api_keys, other)))
    return await relay_factory(config)


def purchases(sim: AttestoSimulator, n: int) -> list[str]:
    now = int(time.time() * 1000)
    for i in range(n):
        sim.add_apple(transaction_id=f"t{i}", original_transaction_id=f"o{i}",
                      product_id="premium.monthly", expires_ms=now + DAY_MS, purchase_ms=now)
    return [f"t{i}" for i in range(n)]


async def test_a_user_past_the_budget_gets_429_and_others_do_not(
        relay_factory: RelayFactory, tmp_path: Path, sim: AttestoSimulator,
        attesto_url: str) -> None:
    client = await start(relay_factory, tmp_path, attesto_url, user_rate_per_s=0.01,
                         user_burst=3)
    [tid] = purchases(sim, 1)
    body = {"productId": "premium.monthly", "transactionId": tid, "type": "subscription"}
    mallory = auth(user_token("mallory"))
    for _ in range(3):
        assert (await client.post("/api/iap/verify/apple", headers=mallory, json=body)).status \
            == 200
    for path in ("/api/iap/verify/apple", "/api/iap/restore"):
        resp = await client.post(path, headers=mallory, json=body)
        assert resp.status == 429
        assert (await resp.json())["error"]["code"] == "rate_limited"
        assert int(resp.headers["Retry-After"]) >= 1
    for path in ("/api/iap/entitlements", "/api/iap/products", "/api/iap/uuid"):
        assert (await client.get(path, headers=mallory)).status == 429, path
    calls = len(sim.calls)
    alice = auth(user_token("alice"))  # another user is not slowed at all
    assert (await client.get("/api/iap/entitlements", headers=alice)).status == 200
    resp = await client.post("/api/iap/verify/apple", headers=alice, json=body)
    assert resp.status == 200 and len(sim.calls) == calls + 1


async def test_a_service_key_past_the_budget_gets_429_and_other_keys_do_not(
        relay_factory: RelayFactory, tmp_path: Path, sim: AttestoSimulator,
        attesto_url: str) -> None:
    client = await start(relay_factory, tmp_path, attesto_url, service_key_rate_per_s=0.01,
                         service_key_burst=2)
    [tid] = purchases(sim, 1)
    body = {"user_id": "u1", "transaction_id": tid}
    for _ in range(2):
        assert (await client.post("/v1/verify/apple", headers=auth(), json=body)).status == 200
    for path in ("/v1/verify/apple", "/v1/verify/google", "/v1/restore"):
        resp = await client.post(path, headers=auth(), json=body)
        assert resp.status == 429, path
        assert (await resp.json())["error"]["code"] == "rate_limited"
    # reads are not metered; another key has its own budget
    assert (await client.get("/v1/users/u1/entitlements", headers=auth())).status == 200
    assert (await client.post("/v1/verify/apple", headers=auth(OTHER_KEY), json=body)).status \
        == 200


async def test_each_restore_item_counts_against_the_callers_budget(
        relay_factory: RelayFactory, tmp_path: Path, sim: AttestoSimulator,
        attesto_url: str) -> None:
    """A restore of 6 items with 4 tokens: 4 are verified (the request's token pays for
    the first), 2 come back `rate_limited` at once (their token could not come before the
    restore's deadline), and Attesto saw 4 calls; the next request is a 429."""
    client = await start(relay_factory, tmp_path, attesto_url, user_rate_per_s=0.001,
                         user_burst=4)
    ids = purchases(sim, 6)
    resp = await client.post("/api/iap/restore", headers=auth(user_token("u1")), json={
        "transactions": [{"platform": "apple", "transactionId": t} for t in ids]})
    doc = await resp.json()
    assert resp.status == 200 and doc["valid"] is True
    reasons = sorted(str(r["reason"]) for r in doc["results"])
    assert reasons == ["None"] * 4 + ["rate_limited"] * 2
    assert len(sim.calls) == 4
    resp = await client.get("/api/iap/entitlements", headers=auth(user_token("u1")))
    assert resp.status == 429


async def test_restore_answers_within_its_deadline(relay_factory: RelayFactory,
                                                   tmp_path: Path, sim: AttestoSimulator,
                                                   attesto_url: str) -> None:
    """Attesto hangs on every item: the restore gives up at [limits] restore_timeout_s
    (well before [attesto] timeout_s) with 504 restore_timeout, so the caller retries."""
    client = await start(relay_factory, tmp_path, attesto_url, restore_timeout_s=0.3)
    ids = purchases(sim, 3)
    sim.delay_s = 30.0
    resp = await client.post("/v1/restore", headers=auth(), json={
        "user_id": "u1", "transactions": [{"platform": "apple", "transaction_id": t}
                                          for t in ids]})
    assert resp.status == 504
    assert (await resp.json())["error"]["code"] == "restore_timeout"


async def test_the_default_budget_serves_an_app(relay_factory: RelayFactory, tmp_path: Path,
                                                sim: AttestoSimulator, attesto_url: str) -> None:
    """Defaults (20/s, burst 40 per user): a restore of 40 purchases and the calls an app
    makes around it are never refused."""
    client = await relay_factory(verify_config(tmp_path, attesto_url))
    ids = purchases(sim, 39)
    user = auth(user_token("u1"))
    resp = await client.post("/api/iap/restore", headers=user, json={
        "transactions": [{"platform": "apple", "transactionId": t} for t in ids]})
    assert resp.status == 200
    assert all(r["reason"] is None for r in (await resp.json())["results"])
    assert (await client.get("/api/iap/entitlements", headers=user)).status == 200
    assert API_KEY  # /v1 shares nothing with /api/iap budgets
    assert (await client.post("/v1/verify/apple", headers=auth(), json={
        "user_id": "u1", "transaction_id": ids[0]})).status == 200
