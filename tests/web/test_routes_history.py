"""The history, purchases, transactions and explain routes: authentication first, a clear
4xx for every bad parameter, empty answers where there is nothing yet."""

from __future__ import annotations

import pytest

from tests.conftest import RelayFactory, auth

ROUTES = ["/v1/purchases/apple/o1/history", "/v1/users/u1/purchases", "/v1/transactions",
          "/v1/users/u1/transactions", "/v1/users/u1/entitlements/premium/explain"]


@pytest.mark.parametrize("path", ROUTES)
async def test_a_service_key_is_required(relay_factory: RelayFactory, path: str) -> None:
    client = await relay_factory()
    for headers in ({}, auth("wrong-key")):
        resp = await client.get(path, headers=headers)
        assert resp.status == 401
        assert (await resp.json())["error"]["code"] == "unauthorized"


@pytest.mark.parametrize(("path", "code"), [
    ("/v1/purchases/apple/o1/history?after=-1", "invalid_after"),
    ("/v1/purchases/apple/o1/history?limit=0", "invalid_limit"),
    ("/v1/purchases/apple/o1/history?limit=1001", "invalid_limit"),
    ("/v1/purchases/apple/o1/history?raw=yes", "invalid_raw"),
    ("/v1/transactions?after=1e3", "invalid_after"),
    ("/v1/transactions?limit=x", "invalid_limit"),
    ("/v1/users/u1/transactions?after=" + "9" * 20, "invalid_after"),
    ("/v1/users/" + "u" * 257 + "/purchases", "invalid_request"),
    ("/v1/users/u1/entitlements/" + "k" * 257 + "/explain", "invalid_request"),
])
async def test_bad_parameters_are_a_clear_400(relay_factory: RelayFactory, path: str,
                                              code: str) -> None:
    client = await relay_factory()
    resp = await client.get(path, headers=auth())
    assert resp.status == 400
    assert (await resp.json())["error"]["code"] == code


@pytest.mark.parametrize("path", ["/v1/purchases/apple/nope/history",
                                  "/v1/purchases/amazon/o1/history"])
async def test_history_of_an_unknown_purchase_is_404(relay_factory: RelayFactory,
                                                     path: str) -> None:
    client = await relay_factory()
    resp = await client.get(path, headers=auth())
    assert resp.status == 404
    assert (await resp.json())["error"]["code"] == "purchase_not_found"


async def test_empty_answers(relay_factory: RelayFactory) -> None:
    client = await relay_factory()
    for path, body in [
            ("/v1/transactions", {"transactions": [], "next": "0"}),
            ("/v1/transactions?after=42", {"transactions": [], "next": "42"}),
            ("/v1/users/u1/transactions", {"user_id": "u1", "transactions": [], "next": "0"}),
            ("/v1/users/u1/purchases", {"user_id": "u1", "purchases": []})]:
        resp = await client.get(path, headers=auth())
        assert resp.status == 200
        assert await resp.json() == body
    resp = await client.get("/v1/users/u1/entitlements/premium/explain", headers=auth())
    body = await resp.json()
    assert (body["entitled"], body["reason"], body["purchases"]) == (False, "no_purchase", [])
