"""`GET /v1/events`: catch up by pulling, in commit order, with the relayed bodies."""

from __future__ import annotations

import json

import pytest

from tests.conftest import ADMIN_TOKEN, RelayFactory, auth
from tests.support.outbox import emit


async def test_pull_pages_through_every_event_in_commit_order(
        relay_factory: RelayFactory) -> None:
    client = await relay_factory()
    stored = await emit(client, "a", count=3) + await emit(client, "b", count=2)
    seen: list[dict[str, object]] = []
    cursor = None
    for _ in range(10):
        params = {"limit": "2", **({"after": cursor} if cursor else {})}
        resp = await client.get("/v1/events", headers=auth(), params=params)
        assert resp.status == 200
        page = await resp.json()
        if not page["events"]:
            assert page["next"] == cursor  # nothing new: the cursor stays
            break
        seen.extend(page["events"])
        cursor = page["next"]
    assert [e["id"] for e in seen] == [e.id for e in stored]
    assert seen == [json.loads(e.body) for e in stored]  # the same body that is relayed
    assert [(e["subject_key"], e["sequence"]) for e in seen] == [
        ("a", 1), ("a", 2), ("a", 3), ("b", 1), ("b", 2)]


async def test_pull_without_after_starts_at_the_first_event(relay_factory: RelayFactory) -> None:
    client = await relay_factory()
    resp = await client.get("/v1/events", headers=auth())
    assert await resp.json() == {"events": [], "next": "0"}
    [event] = await emit(client)
    page = await (await client.get("/v1/events", headers=auth())).json()
    assert [e["id"] for e in page["events"]] == [event.id]
    assert page["next"] == str(event.cursor)


@pytest.mark.parametrize("params", [{"after": "-1"}, {"after": "x"}, {"limit": "0"},
                                    {"limit": "1001"},
                                    # str.isdigit() says yes, int() says no: not a 500
                                    {"after": "\u00b2"}, {"after": "9" * 5000},
                                    {"limit": "\u0663"}])
async def test_pull_rejects_bad_parameters(relay_factory: RelayFactory,
                                           params: dict[str, str]) -> None:
    client = await relay_factory()
    resp = await client.get("/v1/events", headers=auth(), params=params)
    assert resp.status == 400
    assert (await resp.json())["error"]["code"].startswith("invalid_")


@pytest.mark.parametrize("headers", [{}, auth(ADMIN_TOKEN)])
async def test_pull_needs_a_service_key(relay_factory: RelayFactory,
                                        headers: dict[str, str]) -> None:
    client = await relay_factory()
    resp = await client.get("/v1/events", headers=headers)
    assert resp.status == 401
