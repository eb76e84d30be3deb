"""`/v1/admin/…`: endpoint queues, pause/resume across restarts, deliveries, recover, replay."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from relay.config import DownstreamConfig
from relay.core.domain import iso
from relay.outbox.receiver import DownstreamReceiver
from relay.web.appkeys import RUNTIME_KEY
from tests.conftest import ADMIN_TOKEN, API_KEY, Clock, RelayFactory, auth, make_config
from tests.support.outbox import App, deliveries, emit, now_clock, outbox_of

ADMIN = auth(ADMIN_TOKEN)


@pytest.fixture
def clock() -> Clock:
    return now_clock()


async def start(relay_factory: RelayFactory, url: str, tmp_path: Path, **kw: Any) -> App:
    cfg = make_config(tmp_path, downstream=(DownstreamConfig(name="billing", url=url, **kw),))
    return await relay_factory(cfg, use_clock=True)


async def get(client: App, path: str, expect: int = 200, **params: Any) -> Any:
    resp = await client.get(path, headers=ADMIN, params=params)
    assert resp.status == expect, await resp.text()
    return await resp.json()


async def post(client: App, path: str, body: Any = None, status: int = 200) -> Any:
    resp = await client.post(path, headers=ADMIN, json=body)
    assert resp.status == status, await resp.text()
    return await resp.json()


@pytest.mark.parametrize("headers", [{}, auth("wrong"), auth(API_KEY)])
async def test_admin_token_is_required(relay_factory: RelayFactory, headers: dict[str, str],
                                       receiver_url: str, tmp_path: Path) -> None:
    client = await start(relay_factory, receiver_url, tmp_path)
    for method, path in [("GET", "/v1/admin/endpoints"), ("GET", "/v1/admin/deliveries"),
                         ("POST", "/v1/admin/endpoints/billing/pause"),
                         ("POST", "/v1/admin/replay")]:
        resp = await client.request(method, path, headers=headers)
        assert resp.status == 401
        assert (await resp.json())["error"]["code"] == "unauthorized"


async def test_endpoints_show_queue_depth_and_oldest_pending_age(
        relay_factory: RelayFactory, receiver: DownstreamReceiver, receiver_url: str,
        tmp_path: Path, clock: Clock) -> None:
    client = await start(relay_factory, receiver_url, tmp_path)
    receiver.reply_next(500, times=2)
    await emit(client, "a")
    await emit(client, "b")
    await outbox_of(client).settle()
    clock.advance(3)
    [ep] = (await get(client, "/v1/admin/endpoints"))["endpoints"]
    assert ep["name"] == "billing" and ep["state"] == "active" and ep["signing"] == ["v1"]
    assert ep["queue"] == {"pending": 2, "held": 0, "dead": 0, "failing": 2,
                           "oldest_pending_age_s": 3}


async def test_pause_survives_restart_and_resume_drains(
        relay_factory: RelayFactory, receiver: DownstreamReceiver, receiver_url: str,
        tmp_path: Path) -> None:
    client = await start(relay_factory, receiver_url, tmp_path)
    assert await post(client, "/v1/admin/endpoints/billing/pause") == {
        "endpoint": "billing", "state": "paused", "held": 0}
    await emit(client, "a", count=2)
    await client.close()

    client = await start(relay_factory, receiver_url, tmp_path)
    assert client.app[RUNTIME_KEY].paused == {"billing"}
    await emit(client, "a")
    await outbox_of(client).settle()
    assert receiver.received == []
    [ep] = (await get(client, "/v1/admin/endpoints"))["endpoints"]
    assert ep["state"] == "paused" and ep["queue"]["held"] == 3
    resumed = await post(client, "/v1/admin/endpoints/billing/resume")
    assert resumed == {"endpoint": "billing", "state": "active", "released": 3}
    await outbox_of(client).settle()
    assert [r.json["sequence"] for r in receiver.received] == [1, 2, 3]
    await post(client, "/v1/admin/endpoints/nope/pause", status=404)


async def test_list_filter_show_and_retry_a_dead_delivery(
        relay_factory: RelayFactory, receiver: DownstreamReceiver, receiver_url: str,
        tmp_path: Path) -> None:
    client = await start(relay_factory, receiver_url, tmp_path, retry_schedule_s=(0.0,))
    receiver.reply_next(500, times=2, body=b"upstream broke")
    await emit(client, "a")
    await outbox_of(client).settle()  # 500, retried at once, 500 again: dead
    await emit(client, "b")
    await outbox_of(client).settle()
    everything = await get(client, "/v1/admin/deliveries")
    assert [d["status"] for d in everything["deliveries"]] == ["delivered", "dead"]
    [dead] = (await get(client, "/v1/admin/deliveries", status="dead"))["deliveries"]
    assert dead["subject"] == "apple:a" and dead["attempts"] == 2
    by_subject = await get(client, "/v1/admin/deliveries", subject="apple:b")
    assert [d["status"] for d in by_subject["deliveries"]] == ["delivered"]
    shown = await get(client, f"/v1/admin/deliveries/{dead['id']}")
    assert [h["status_code"] for h in shown["history"]] == [500, 500]
    assert shown["history"][0]["response_excerpt"] == "upstream broke"
    assert shown["event"]["subject_key"] == "a"

    retried = await post(client, f"/v1/admin/deliveries/{dead['id']}/retry")
    assert (retried["status"], retried["attempts"]) == ("pending", 0)
    await outbox_of(client).settle()
    [row] = await deliveries(client, id=dead["id"])
    assert row["status"] == "delivered"
    await get(client, "/v1/admin/deliveries/999", 404)
    await post(client, "/v1/admin/deliveries/999/retry", status=404)
    bad = await get(client, "/v1/admin/deliveries", 400, limit="0")
    assert bad["error"]["code"] == "invalid_request"
    assert (await get(client, "/v1/admin/deliveries", 400, status="lost"))["error"]["message"]


async def test_recover_dead_since_a_time_with_dry_run(
        relay_factory: RelayFactory, receiver: DownstreamReceiver, receiver_url: str,
        tmp_path: Path, clock: Clock) -> None:
    client = await start(relay_factory, receiver_url, tmp_path, retry_schedule_s=(0.0,))
    receiver.reply_next(503, times=6)
    before = iso(int(clock.now * 1000))
    for subject in ("a", "b", "c"):
        await emit(client, subject)
    await outbox_of(client).settle()
    assert [r["status"] for r in await deliveries(client)] == ["dead"] * 3
    dry = await post(client, "/v1/admin/deliveries/recover", {"since": before, "dry_run": True})
    assert dry == {"matched": 3, "reopened": 0, "dry_run": True}
    later = iso(int(clock.now * 1000) + 1000)
    assert (await post(client, "/v1/admin/deliveries/recover",
                       {"since": later}))["matched"] == 0
    assert (await post(client, "/v1/admin/deliveries/recover",
                       {"since": before, "endpoint": "billing"}))["reopened"] == 3
    await outbox_of(client).settle()
    assert [r["status"] for r in await deliveries(client)] == ["delivered"] * 3
    err = await post(client, "/v1/admin/deliveries/recover", {"since": "yesterday"}, 400)
    assert "since" in err["error"]["message"]
    await post(client, "/v1/admin/deliveries/recover", {}, 400)


async def test_replay_a_subject_in_order_and_dry_run(
        relay_factory: RelayFactory, receiver: DownstreamReceiver, receiver_url: str,
        tmp_path: Path) -> None:
    client = await start(relay_factory, receiver_url, tmp_path)
    await emit(client, "a", count=3)
    await emit(client, "b")
    await outbox_of(client).settle()
    assert len(receiver.received) == 4
    dry = await post(client, "/v1/admin/replay",
                     {"endpoint": "billing", "subject": "apple:a", "dry_run": True})
    assert (dry["matched"], dry["enqueued"]) == (3, 0)
    done = await post(client, "/v1/admin/replay", {"endpoint": "billing", "subject": "apple:a"})
    assert (done["matched"], done["enqueued"], done["truncated"]) == (3, 3, False)
    await outbox_of(client).settle()
    replayed = receiver.received[4:]
    assert [(r.json["subject_key"], r.json["sequence"]) for r in replayed] == [
        ("a", 1), ("a", 2), ("a", 3)]
    first = [r for r in receiver.received[:4] if r.json["subject_key"] == "a"]
    # The same ids as the first time: consumers dedupe on them.
    assert [r.headers["webhook-id"] for r in replayed] == [r.headers["webhook-id"] for r in first]


async def test_replay_a_time_range_to_an_endpoint_that_missed_it(
        relay_factory: RelayFactory, receiver: DownstreamReceiver, receiver_url: str,
        tmp_path: Path, clock: Clock) -> None:
    client = await start(relay_factory, receiver_url, tmp_path, events=["product.*"])
    since = iso(int(clock.now * 1000))
    await emit(client, "a")
    clock.advance(60)
    await emit(client, "b")
    await outbox_of(client).settle()
    assert receiver.received == []  # the filter let nothing through
    await client.close()
    client = await start(relay_factory, receiver_url, tmp_path)  # filter widened
    until = iso(int(clock.now * 1000) - 1000)
    done = await post(client, "/v1/admin/replay",
                      {"endpoint": "billing", "since": since, "until": until})
    assert done["enqueued"] == 1
    await outbox_of(client).settle()
    assert [r.json["subject_key"] for r in receiver.received] == ["a"]


@pytest.mark.parametrize(("body", "status"), [
    ({"endpoint": "nope", "subject": "apple:a"}, 404),
    ({"endpoint": "billing"}, 400),
    ({"endpoint": "billing", "subject": "a"}, 400),
    ({"endpoint": "billing", "subject": "apple:a", "dry_run": "yes"}, 400),
    ({"endpoint": "billing", "since": "not a time"}, 400),
])
async def test_replay_rejects_bad_requests(relay_factory: RelayFactory, receiver_url: str,
                                           tmp_path: Path, body: dict[str, Any],
                                           status: int) -> None:
    client = await start(relay_factory, receiver_url, tmp_path)
    err = await post(client, "/v1/admin/replay", body, status)
    assert err["error"]["message"]


async def test_deliveries_of_a_subject_on_every_endpoint_even_one_no_longer_configured(
        relay_factory: RelayFactory, tmp_path: Path) -> None:
    """The subject filter reads the (endpoint, subject) index over every endpoint with
    rows: rows of an endpoint taken out of relay.toml are listed too."""
    cfg = make_config(tmp_path, downstream=(
        DownstreamConfig(name="billing", url="http://127.0.0.1:9/a"),
        DownstreamConfig(name="crm", url="http://127.0.0.1:9/b", enabled=False)))
    client = await relay_factory(cfg, use_clock=True)
    await emit(client, "a")
    await emit(client, "b")
    from relay.store.models import Delivery
    from relay.web.appkeys import STORE_KEY

    def orphan() -> None:  # a row of an endpoint since removed from the config
        row = Delivery.get(Delivery.endpoint == "billing", Delivery.subject == "apple:a")
        Delivery.insert(event=row.event, endpoint="old", subject="apple:a", sequence=1,
                        status="dead", attempts=3, next_attempt_ms=0, created_ms=0).execute()

    await client.app[STORE_KEY].write(orphan)
    rows = (await get(client, "/v1/admin/deliveries", subject="apple:a"))["deliveries"]
    assert sorted(d["endpoint"] for d in rows) == ["billing", "crm", "old"]
    assert [d["id"] for d in rows] == sorted((d["id"] for d in rows), reverse=True)
    assert (await get(client, "/v1/admin/deliveries", subject="apple:zz"))["deliveries"] == []
