"""The /v1 service API over HTTP: shapes, auth, every Attesto failure as a relay error."""

from __future__ import annotations

import dataclasses
import re
import socket
from pathlib import Path
from typing import Any

import pytest

from relay.attesto.simulator import AttestoSimulator
from relay.store.models import Purchase
from relay.web.appkeys import STORE_KEY
from tests.conftest import Clock, RelayFactory, auth
from tests.support.verify import DAY_MS, UUID_A, user_token, verify_config

ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


async def start(relay_factory: RelayFactory, tmp_path: Path, attesto_url: str,
                **sections: Any) -> Any:
    return await relay_factory(verify_config(tmp_path, attesto_url, **sections),
                               use_clock=True)


async def purchases_count(client: Any) -> int:
    return int(await client.app[STORE_KEY].read(lambda: Purchase.select().count()))


async def test_verify_apple(relay_factory: RelayFactory, tmp_path: Path, sim: AttestoSimulator,
                            attesto_url: str, clock: Clock) -> None:
    now = int(clock() * 1000)
    sim.add_apple(transaction_id="t1", original_transaction_id="o1", product_id="premium.monthly",
                  expires_ms=now + DAY_MS, purchase_ms=now - 1000, app_account_token=UUID_A)
    client = await start(relay_factory, tmp_path, attesto_url)
    resp = await client.post("/v1/verify/apple", headers={**auth(), "X-Request-Id": "trace_1"},
                             json={"user_id": "user-1", "transaction_id": "t1"})
    assert resp.status == 200 and resp.headers["X-Request-Id"] == "trace_1"
    body = await resp.json()
    assert list(body) == ["valid", "purchase", "granted", "entitlements"]
    p = body["purchase"]
    assert {k: p[k] for k in ("platform", "subject_key", "user_id", "product_id", "state",
                              "environment", "app_user_id", "kind")} == {
        "platform": "apple", "subject_key": "o1", "user_id": "user-1",
        "product_id": "premium.monthly", "state": "active", "environment": "sandbox",
        "app_user_id": UUID_A, "kind": "subscription"}
    assert ISO.match(p["expires_at"]) and ISO.match(p["updated_at"])
    assert body["granted"] == ["premium"]
    assert body["entitlements"] == [{"key": "premium", "product_id": "premium.monthly",
                                     "expires_at": p["expires_at"], "platform": "apple",
                                     "subject_key": "o1"}]
    sent = {k.lower(): v for k, v in sim.calls[0][2].items()}
    assert sent["x-request-id"] == "trace_1"  # propagated to Attesto

    resp = await client.get("/v1/purchases/apple/o1", headers=auth())
    assert resp.status == 200 and (await resp.json()) == p
    resp = await client.get("/v1/users/user-1/entitlements", headers=auth())
    assert await resp.json() == {"user_id": "user-1", "entitlements": body["entitlements"]}


async def test_verify_google_and_domain_verdicts(relay_factory: RelayFactory, tmp_path: Path,
                                                 sim: AttestoSimulator, attesto_url: str,
                                                 clock: Clock) -> None:
    now = int(clock() * 1000)
    sim.add_google(token="g1", product_id="premium", base_plan_id="yearly",
                   expiry_ms=now + DAY_MS, start_ms=now)
    client = await start(relay_factory, tmp_path, attesto_url)
    good = {"user_id": "u", "package_name": "com.example.app", "product_id": "premium",
            "purchase_token": "g1", "type": "subscription"}
    body = await (await client.post("/v1/verify/google", headers=auth(), json=good)).json()
    assert body["valid"] is True and body["purchase"]["subject_key"] == "g1"
    assert body["granted"] == ["premium", "yearly_badge"]
    for change, code in [({"purchase_token": "missing"}, "PURCHASE_NOT_FOUND"),
                         ({"package_name": "com.other"}, "PACKAGE_NAME_MISMATCH")]:
        resp = await client.post("/v1/verify/google", headers=auth(), json={**good, **change})
        assert resp.status == 200
        doc = await resp.json()
        assert (doc["valid"], doc["error"]) == (False, code) and doc["message"]
        assert [e["key"] for e in doc["entitlements"]] == ["premium", "yearly_badge"]
    resp = await client.post("/v1/verify/apple", headers=auth(),
                             json={"user_id": "u", "transaction_id": "nope"})
    assert (await resp.json())["error"] == "TRANSACTION_NOT_FOUND"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# fail_next kwargs -> (relay status, code, Retry-After)
FAILURES: list[tuple[dict[str, Any], int, str, str | None]] = [
    ({"status": 429, "error": "RATE_LIMITED", "retry_after": 120}, 503, "attesto_rate_limited",
     "120"),
    ({"status": 200, "raw_body": b"<html>"}, 502, "attesto_bad_response", None),
    ({"status": 400, "error": "CREDENTIALS_MISSING"}, 502, "attesto_credentials_missing", None),
    ({"status": 401, "error": "UNAUTHENTICATED"}, 502, "attesto_unauthenticated", None),
    ({"status": 400, "error": "INVALID_REQUEST"}, 400, "attesto_invalid_request", None),
    ({"status": 502, "error": "APPLE_API_ERROR", "times": 4}, 502, "apple_api_error", None),
    ({"status": 500, "error": "INTERNAL_ERROR", "times": 2}, 502, "attesto_internal_error",
     None),
    ({"status": 200, "delay_s": 3}, 504, "attesto_timeout", None),
]


@pytest.mark.parametrize(("fault", "status", "code", "retry_after"), FAILURES)
async def test_attesto_failures_are_stable_errors_and_write_nothing(
        fault: dict[str, Any], status: int, code: str, retry_after: str | None,
        relay_factory: RelayFactory, tmp_path: Path, sim: AttestoSimulator,
        attesto_url: str) -> None:
    sim.add_apple(transaction_id="t1", original_transaction_id="o1", product_id="p",
                  expires_ms=None, purchase_ms=1)
    # A short deadline only where the fake is slow on purpose: elsewhere real backoff
    # sleeps on a busy machine must not turn into a timeout.
    timeout_s = 0.5 if "delay_s" in fault else 5.0
    client = await start(relay_factory, tmp_path, attesto_url,
                         attesto={"base_url": attesto_url, "timeout_s": timeout_s})
    sim.fail_next(**fault)
    resp = await client.post("/v1/verify/apple", headers=auth(),
                             json={"user_id": "u", "transaction_id": "t1"})
    assert resp.status == status
    assert (await resp.json())["error"]["code"] == code
    assert resp.headers.get("Retry-After") == retry_after
    assert resp.headers["X-Request-Id"]
    assert await purchases_count(client) == 0


async def test_connection_refused_and_missing_key(relay_factory: RelayFactory,
                                                  tmp_path: Path) -> None:
    client = await start(relay_factory, tmp_path, f"http://127.0.0.1:{closed_port()}")
    resp = await client.post("/v1/verify/apple", headers=auth(),
                             json={"user_id": "u", "transaction_id": "t1"})
    assert resp.status == 503 and (await resp.json())["error"]["code"] == "attesto_unavailable"
    cfg = verify_config(tmp_path / "b", "http://127.0.0.1:9")
    cfg = dataclasses.replace(cfg, credentials=dataclasses.replace(cfg.credentials,
                                                                   attesto_api_key=None))
    client = await relay_factory(cfg)
    resp = await client.post("/v1/verify/google", headers=auth(), json={
        "user_id": "u", "package_name": "a", "product_id": "b", "purchase_token": "c",
        "type": "product"})
    assert resp.status == 503 and (await resp.json())["error"]["code"] == "not_configured"


@pytest.mark.parametrize("headers", [{}, auth("wrong-key"), auth(user_token()),
                                     {"Authorization": "Basic eDp5"}])
async def test_wrong_or_missing_service_key_is_401(headers: dict[str, str],
                                                   relay_factory: RelayFactory, tmp_path: Path,
                                                   sim: AttestoSimulator,
                                                   attesto_url: str) -> None:
    client = await start(relay_factory, tmp_path, attesto_url)
    for method, path in [("POST", "/v1/verify/apple"), ("POST", "/v1/restore"),
                         ("GET", "/v1/users/u/entitlements"), ("GET", "/v1/purchases/apple/o1"),
                         ("POST", "/v1/users/u/app-user-id")]:
        resp = await client.request(method, path, headers=headers,
                                    json={"user_id": "u", "transaction_id": "t1"})
        assert resp.status == 401
        assert (await resp.json())["error"]["code"] == "unauthorized"
    assert sim.calls == []


async def test_no_service_keys_configured_is_401(relay_factory: RelayFactory,
                                                 tmp_path: Path) -> None:
    cfg = verify_config(tmp_path, "http://127.0.0.1:9")
    cfg = dataclasses.replace(cfg, credentials=dataclasses.replace(cfg.credentials,
                                                                   api_keys=()))
    client = await relay_factory(cfg)
    resp = await client.get("/v1/users/u/entitlements", headers=auth())
    assert resp.status == 401


@pytest.mark.parametrize(("path", "body", "field"), [
    ("/v1/verify/apple", {"transaction_id": "t"}, "user_id"),
    ("/v1/verify/apple", {"user_id": "u", "transaction_id": "x" * 129}, "transaction_id"),
    ("/v1/verify/apple", {"user_id": "u", "transaction_id": "t", "environment": "prod"},
     "environment"),
    ("/v1/verify/apple", {"user_id": " ", "transaction_id": "t"}, "user_id"),
    ("/v1/verify/google", {"user_id": "u", "package_name": "p", "product_id": "x",
                           "purchase_token": "t", "type": "sub"}, "type"),
    ("/v1/verify/google", {"user_id": "u", "package_name": "p", "product_id": 5,
                           "purchase_token": "t", "type": "product"}, "product_id"),
    ("/v1/restore", {"user_id": "u", "transactions": []}, "transactions"),
    ("/v1/restore", {"user_id": "u", "transactions": [{"platform": "apple"}] * 101},
     "transactions"),
    ("/v1/restore", {"user_id": "u", "transactions": [{"platform": "amazon"}]},
     "transactions[0].platform"),
    ("/v1/restore", {"user_id": "u", "transactions": [
        {"platform": "apple", "transaction_id": "t"}, {"platform": "google"}]},
     "transactions[1].package_name"),
])
async def test_bad_requests_are_400_naming_the_field(path: str, body: dict[str, Any],
                                                     field: str, relay_factory: RelayFactory,
                                                     tmp_path: Path, sim: AttestoSimulator,
                                                     attesto_url: str) -> None:
    client = await start(relay_factory, tmp_path, attesto_url)
    resp = await client.post(path, headers=auth(), json=body)
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert error["code"] == "invalid_request" and error["details"] == {"field": field}
    resp = await client.post(path, data=b"{oops",
                             headers={**auth(), "Content-Type": "application/json"})
    assert resp.status == 400 and (await resp.json())["error"]["code"] == "invalid_json"
    assert sim.calls == []


async def test_restore_over_http(relay_factory: RelayFactory, tmp_path: Path,
                                 sim: AttestoSimulator, attesto_url: str, clock: Clock) -> None:
    now = int(clock() * 1000)
    sim.add_apple(transaction_id="t1", original_transaction_id="o1", product_id="premium.monthly",
                  expires_ms=now + DAY_MS, purchase_ms=now)
    client = await start(relay_factory, tmp_path, attesto_url)
    sim.fail_next(400, error="INVALID_REQUEST")  # the first call fails; the others answer
    resp = await client.post("/v1/restore", headers=auth(), json={
        "user_id": "u", "transactions": [
            {"platform": "apple", "transaction_id": "t1"},
            {"platform": "apple", "transaction_id": "t1"},
            {"platform": "apple", "transaction_id": "gone"}]})
    assert resp.status == 200
    doc = await resp.json()
    assert doc["user_id"] == "u" and [e["key"] for e in doc["entitlements"]] == ["premium"]
    by_reason = sorted((r["reason"] or "", r["valid"]) for r in doc["results"])
    assert by_reason == sorted([("", True), ("TRANSACTION_NOT_FOUND", False),
                                ("attesto_invalid_request", None)])
    failed = next(r for r in doc["results"] if r["valid"] is None)
    assert failed["error"]["code"] == "attesto_invalid_request" and failed["granted"] == []


async def test_app_user_id_is_minted_once(relay_factory: RelayFactory, tmp_path: Path,
                                          attesto_url: str) -> None:
    client = await start(relay_factory, tmp_path, attesto_url)
    first = await (await client.post("/v1/users/alice/app-user-id", headers=auth())).json()
    again = await (await client.post("/v1/users/alice/app-user-id", headers=auth())).json()
    other = await (await client.post("/v1/users/bob/app-user-id", headers=auth())).json()
    assert first == again and first["uuid"] != other["uuid"]
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}",
                        first["uuid"])


async def test_unknown_purchase_is_404(relay_factory: RelayFactory, tmp_path: Path,
                                       attesto_url: str) -> None:
    client = await start(relay_factory, tmp_path, attesto_url)
    for path in ("/v1/purchases/apple/nope", "/v1/purchases/amazon/x"):
        resp = await client.get(path, headers=auth())
        assert resp.status == 404
        assert (await resp.json())["error"]["code"] == "purchase_not_found"


async def test_keep_policy_answers_409_and_changes_nothing(
        relay_factory: RelayFactory, tmp_path: Path, sim: AttestoSimulator, attesto_url: str,
        clock: Clock) -> None:
    now = int(clock() * 1000)
    sim.add_apple(transaction_id="t1", original_transaction_id="o1", product_id="premium.monthly",
                  expires_ms=now + DAY_MS, purchase_ms=now)
    client = await start(relay_factory, tmp_path, attesto_url,
                         purchases={"owner_conflict": "keep"})
    ok = await client.post("/v1/verify/apple", headers=auth(),
                           json={"user_id": "a", "transaction_id": "t1"})
    before = await ok.json()
    resp = await client.post("/v1/verify/apple", headers=auth(),
                             json={"user_id": "b", "transaction_id": "t1"})
    assert resp.status == 409
    assert (await resp.json())["error"]["code"] == "purchase_owned_by_other_user"
    after = await (await client.get("/v1/purchases/apple/o1", headers=auth())).json()
    assert after == before["purchase"]
    empty = await (await client.get("/v1/users/b/entitlements", headers=auth())).json()
    assert empty["entitlements"] == []
