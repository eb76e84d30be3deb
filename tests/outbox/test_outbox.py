"""The outbox worker against real loopback downstreams: signing, retries, order, recovery."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
import types
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook

from relay.config import DownstreamConfig, Secret
from relay.core.addresses import parse_allow_networks
from relay.core.signing import (
    generate_ed25519_keypair,
    generate_secret,
    parse_public_key,
    parse_secret,
    verify_headers,
)
from relay.outbox import deliver
from relay.outbox.deliver import delivery_session
from relay.outbox.receiver import DownstreamReceiver
from relay.outbox.ssrf import GuardedResolver
from relay.outbox.worker import Outbox
from relay.store.models import EndpointState, Event
from relay.web.appkeys import RUNTIME_KEY, STORE_KEY
from tests.conftest import DOWNSTREAM_SECRET, Clock, RelayFactory, make_config
from tests.support.outbox import (
    App,
    Hanging,
    attempts,
    deliveries,
    emit,
    now_clock,
    outbox_of,
    serve,
)


@pytest.fixture
def clock() -> Clock:
    return now_clock()


def endpoint(url: str, name: str = "billing", **kw: Any) -> DownstreamConfig:
    return DownstreamConfig(name=name, url=url, **kw)


async def start(relay_factory: RelayFactory, *eps: DownstreamConfig, **kw: Any) -> App:
    return await relay_factory(use_clock=True, downstream=eps, **kw)


# ---- signing and the body -------------------------------------------------------------


async def test_happy_path_signed_body_identical_verified_by_standardwebhooks(
        relay_factory: RelayFactory, receiver: DownstreamReceiver, receiver_url: str) -> None:
    client = await start(relay_factory, endpoint(receiver_url))
    [event] = await emit(client)
    [got] = await receiver.wait_for(1)
    assert got.body == event.body.encode()
    assert Webhook(DOWNSTREAM_SECRET).verify(got.body, got.headers)["id"] == event.id
    assert got.headers["webhook-id"] == got.headers["idempotency-key"] == event.id
    assert got.headers["content-type"] == "application/json"
    assert got.json["sequence"] == 1 and got.json["type"] == "subscription.renewed"
    await outbox_of(client).settle()
    [row] = await deliveries(client)
    assert (row["status"], row["attempts"], row["last_status"]) == ("delivered", 1, 200)
    [attempt] = await attempts(client, row["id"])
    assert attempt["status_code"] == 200 and attempt["response_excerpt"] == '{"ok":true}'


async def test_rotation_signs_with_every_secret_and_v1a(
        relay_factory: RelayFactory, receiver: DownstreamReceiver, receiver_url: str,
        tmp_path: Path) -> None:
    second = generate_secret()
    signing_key, public_key = generate_ed25519_keypair()
    cfg = make_config(tmp_path, downstream=(endpoint(receiver_url),))
    creds = dataclasses.replace(cfg.credentials, downstream_secrets=types.MappingProxyType(
        {"billing": (Secret(DOWNSTREAM_SECRET), Secret(second), Secret(signing_key))}))
    client = await relay_factory(dataclasses.replace(cfg, credentials=creds), use_clock=True)
    await emit(client)
    [got] = await receiver.wait_for(1)
    entries = got.headers["webhook-signature"].split(" ")
    assert [e.split(",")[0] for e in entries] == ["v1", "v1", "v1a"]
    for secret in (DOWNSTREAM_SECRET, second):  # a consumer on either secret accepts it
        assert Webhook(secret).verify(got.body, got.headers)["id"] == got.headers["webhook-id"]
    verify_headers(got.headers, got.body, [], now_s=int(client.app[RUNTIME_KEY].now_ms() / 1000),
                   ed25519_public_keys=[parse_public_key(public_key)])
    with pytest.raises(Exception, match="signature"):
        Webhook(generate_secret()).verify(got.body, got.headers)


# ---- failures and retries ---------------------------------------------------------------


async def test_500_then_200_retries_with_the_same_id_and_body(
        relay_factory: RelayFactory, receiver: DownstreamReceiver, receiver_url: str,
        clock: Clock) -> None:
    client = await start(relay_factory, endpoint(receiver_url))
    receiver.reply_next(500)
    await emit(client)
    await receiver.wait_for(1)
    outbox = outbox_of(client)
    await outbox.settle()
    [row] = await deliveries(client)
    assert (row["status"], row["attempts"], row["last_status"]) == ("pending", 1, 500)
    assert row["last_error"] == "HTTP 500"
    # First retry is 5 s ± 20 % away.
    assert 4_000 <= row["next_attempt_ms"] - int(clock.now * 1000) <= 6_000
    await outbox.poke()
    assert len(receiver.received) == 1  # not due yet
    clock.advance(7)
    await outbox.settle()
    first, second = receiver.received
    assert first.body == second.body
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    assert int(second.headers["webhook-timestamp"]) > int(first.headers["webhook-timestamp"])
    assert first.signature_ok and second.signature_ok
    [row] = await deliveries(client)
    assert (row["status"], row["attempts"]) == ("delivered", 2)
    assert [a["status_code"] for a in await attempts(client, row["id"])] == [500, 200]


async def test_429_honours_retry_after(relay_factory: RelayFactory,
                                       receiver: DownstreamReceiver, receiver_url: str,
                                       clock: Clock) -> None:
    client = await start(relay_factory, endpoint(receiver_url))
    receiver.reply_next(429, headers={"Retry-After": "120"})
    await emit(client)
    outbox = outbox_of(client)
    await receiver.wait_for(1)
    await outbox.settle()
    [row] = await deliveries(client)
    assert row["next_attempt_ms"] == int(clock.now * 1000) + 120_000
    clock.advance(60)  # past the 5 s schedule step, before Retry-After
    await outbox.settle()
    assert len(receiver.received) == 1
    clock.advance(61)
    await outbox.settle()
    assert len(receiver.received) == 2
    assert (await deliveries(client))[0]["status"] == "delivered"


async def test_410_disables_endpoint_holds_later_events_resume_drains(
        relay_factory: RelayFactory, receiver: DownstreamReceiver, receiver_url: str) -> None:
    client = await start(relay_factory, endpoint(receiver_url))
    receiver.reply_next(410)
    await emit(client, "s1")
    await receiver.wait_for(1)
    outbox = outbox_of(client)
    await outbox.settle()
    assert client.app[RUNTIME_KEY].paused == {"billing"}
    state = await client.app[STORE_KEY].read(lambda: EndpointState.get_by_id("billing"))
    assert state.reason == "gone"
    await emit(client, "s1")
    await emit(client, "s2")
    await outbox.settle()
    assert [r["status"] for r in await deliveries(client)] == ["held"] * 3
    assert len(receiver.received) == 1
    assert await outbox.resume("billing") == 3
    await outbox.settle()
    assert [r["status"] for r in await deliveries(client)] == ["delivered"] * 3
    by_subject = [(r.json["subject_key"], r.json["sequence"]) for r in receiver.received[1:]]
    assert by_subject.index(("s1", 1)) < by_subject.index(("s1", 2))


async def test_timeout_is_a_recorded_failure(relay_factory: RelayFactory,
                                             receiver: DownstreamReceiver,
                                             receiver_url: str) -> None:
    client = await start(relay_factory, endpoint(receiver_url, timeout_s=0.05))
    receiver.reply_next(200, delay_s=1.0)
    await emit(client)
    await outbox_of(client).settle()
    [row] = await deliveries(client)
    assert (row["status"], row["attempts"], row["last_status"]) == ("pending", 1, None)
    assert row["last_error"] == "timeout after 0.05s"


async def test_connection_refused_is_a_recorded_failure(relay_factory: RelayFactory) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = await start(relay_factory, endpoint(f"http://127.0.0.1:{port}/hook"))
    await emit(client)
    await outbox_of(client).settle()
    [row] = await deliveries(client)
    assert (row["status"], row["attempts"]) == ("pending", 1)
    assert row["last_error"].startswith("connect failed")


async def test_redirect_is_not_followed(relay_factory: RelayFactory,
                                        receiver: DownstreamReceiver, receiver_url: str,
                                        clock: Clock) -> None:
    client = await start(relay_factory, endpoint(receiver_url))
    receiver.reply_next(302, headers={"Location": "/elsewhere"})
    await emit(client)
    outbox = outbox_of(client)
    await outbox.settle()
    assert len(receiver.received) == 1  # /elsewhere was never asked
    [row] = await deliveries(client)
    assert row["last_status"] == 302 and row["status"] == "pending"
    assert row["last_error"] == "redirect not followed: HTTP 302 to '/elsewhere'"
    clock.advance(10)
    await outbox.settle()
    assert (await deliveries(client))[0]["status"] == "delivered"


async def test_schedule_exhausted_row_is_dead(relay_factory: RelayFactory,
                                              receiver: DownstreamReceiver, receiver_url: str,
                                              clock: Clock) -> None:
    client = await start(relay_factory, endpoint(receiver_url, retry_schedule_s=(1.0, 2.0)))
    receiver.reply_next(503, times=3)
    await emit(client)
    outbox = outbox_of(client)
    for _ in range(3):
        await outbox.settle()
        clock.advance(3)
    await outbox.settle()
    [row] = await deliveries(client)
    assert (row["status"], row["attempts"], row["last_status"]) == ("dead", 3, 503)
    assert len(receiver.received) == 3


# ---- order and isolation ----------------------------------------------------------------


async def test_stuck_subject_blocks_only_itself_and_order_holds(
        relay_factory: RelayFactory, receiver: DownstreamReceiver, receiver_url: str,
        clock: Clock) -> None:
    client = await start(relay_factory, endpoint(receiver_url))
    outbox = outbox_of(client)
    receiver.reply_next(500)
    await emit(client, "A")  # A#1 fails and waits for its retry
    await outbox.settle()
    await emit(client, "A")  # A#2 must wait for A#1
    await emit(client, "B")  # B#1 must not
    await outbox.settle()
    sent = [(r.json["subject_key"], r.json["sequence"]) for r in receiver.received]
    assert sent == [("A", 1), ("B", 1)]
    clock.advance(10)
    await outbox.settle()
    sent = [(r.json["subject_key"], r.json["sequence"]) for r in receiver.received]
    assert sent == [("A", 1), ("B", 1), ("A", 1), ("A", 2)]
    assert {r["status"] for r in await deliveries(client)} == {"delivered"}


async def test_slow_endpoint_never_delays_another(relay_factory: RelayFactory,
                                                 receiver: DownstreamReceiver,
                                                 receiver_url: str, aiohttp_server: Any) -> None:
    slow = Hanging()
    slow_url = await serve(aiohttp_server, slow.app())
    client = await start(relay_factory, endpoint(slow_url, name="slow"),
                         endpoint(receiver_url, name="fast"),
                         outbox={"per_endpoint_concurrency": 2, "concurrency": 8,
                                 "allow_networks": ("127.0.0.0/8",)})
    outbox = outbox_of(client)
    for i in range(5):
        await emit(client, f"s{i}")
    await receiver.wait_for(5)  # all five reached the fast endpoint meanwhile
    await slow.wait_count(2)
    assert outbox.in_flight("slow") == 2  # bounded per endpoint; the rest wait their turn
    await outbox.poke()
    assert slow.count == 2
    slow.release.set()
    await outbox.settle()
    assert slow.count == 5
    assert {r["status"] for r in await deliveries(client)} == {"delivered"}


# ---- crash and restart ------------------------------------------------------------------


async def test_worker_killed_mid_attempt_row_is_delivered_after_restart(
        relay_factory: RelayFactory, aiohttp_server: Any, clock: Clock) -> None:
    hang = Hanging()
    client = await start(relay_factory, endpoint(await serve(aiohttp_server, hang.app())))
    outbox = outbox_of(client)
    await emit(client)
    await hang.entered.wait()
    assert outbox.task is not None
    outbox.task.cancel()  # the worker dies mid-attempt: nothing recorded, the lease stays
    await asyncio.gather(outbox.task, return_exceptions=True)
    hang.release.set()
    [row] = await deliveries(client)
    assert row["status"] == "pending" and row["claimed_until_ms"] is not None

    runtime, store = client.app[RUNTIME_KEY], client.app[STORE_KEY]
    session = delivery_session(GuardedResolver(parse_allow_networks(["127.0.0.0/8"])), 8)
    reborn = Outbox(store, runtime, session, outbox.endpoints)
    try:
        await reborn.start()
        await reborn.settle()
        if not store.is_sqlite:
            # PostgreSQL may have other instances: the claim is retried when its lease ends.
            assert (await deliveries(client))[0]["status"] == "pending"
            clock.advance((row["claimed_until_ms"] - runtime.now_ms()) / 1000 + 1)
            await reborn.settle()
        # SQLite has one owner: a start releases the dead worker's claims, no lease wait.
        [row] = await deliveries(client)
        assert (row["status"], row["attempts"]) == ("delivered", 1)
        assert hang.count == 2
    finally:
        await reborn.stop()
        await session.close()


async def test_graceful_stop_cancels_after_the_grace_and_releases_the_claim(
        relay_factory: RelayFactory, aiohttp_server: Any, tmp_path: Path) -> None:
    hang = Hanging()
    cfg = make_config(tmp_path, downstream=(endpoint(await serve(aiohttp_server, hang.app())),),
                      outbox={"stop_grace_s": 0.05, "allow_networks": ("127.0.0.0/8",)})
    client = await relay_factory(cfg, use_clock=True)
    await emit(client)
    await hang.entered.wait()
    await client.close()  # the attempt outlives the grace: cancelled, its lease given back
    hang.release.set()
    client = await relay_factory(cfg, use_clock=True)  # same clock: no lease expiry needed
    await outbox_of(client).settle()
    [row] = await deliveries(client)
    assert (row["status"], row["attempts"]) == ("delivered", 1)
    assert hang.count == 2


async def test_graceful_stop_lets_an_attempt_in_flight_finish(
        relay_factory: RelayFactory, aiohttp_server: Any, tmp_path: Path) -> None:
    hang = Hanging()
    cfg = make_config(tmp_path, downstream=(endpoint(await serve(aiohttp_server, hang.app())),))
    client = await relay_factory(cfg, use_clock=True)
    await emit(client)
    await hang.entered.wait()
    closing = asyncio.create_task(client.close())
    hang.release.set()  # the downstream answers while relay is stopping
    await closing
    client = await relay_factory(cfg, use_clock=True)
    await outbox_of(client).settle()
    [row] = await deliveries(client)
    assert (row["status"], row["attempts"]) == ("delivered", 1)
    assert hang.count == 1  # recorded before the stop: not sent twice


async def test_disabled_endpoint_holds_then_delivers_when_enabled(
        relay_factory: RelayFactory, receiver: DownstreamReceiver, receiver_url: str,
        tmp_path: Path) -> None:
    cfg = make_config(tmp_path, downstream=(endpoint(receiver_url, enabled=False),))
    client = await relay_factory(cfg, use_clock=True)
    await emit(client, count=2)
    await outbox_of(client).settle()
    assert [r["status"] for r in await deliveries(client)] == ["held", "held"]
    assert receiver.received == []
    await client.close()
    enabled = dataclasses.replace(cfg, downstream=(endpoint(receiver_url),))
    client = await relay_factory(enabled, use_clock=True)
    await outbox_of(client).settle()
    assert [r.json["sequence"] for r in receiver.received] == [1, 2]
    assert [r["status"] for r in await deliveries(client)] == ["delivered", "delivered"]


async def test_event_body_is_stored_once_and_sent_byte_identical(
        relay_factory: RelayFactory, receiver: DownstreamReceiver, receiver_url: str) -> None:
    client = await start(relay_factory, endpoint(receiver_url))
    [event] = await emit(client)
    await receiver.wait_for(1)
    stored = await client.app[STORE_KEY].read(lambda: Event.get(Event.id == event.id).body)
    assert receiver.received[0].body == stored.encode()
    assert json.loads(stored)["sequence"] == 1
    assert parse_secret(DOWNSTREAM_SECRET)  # the fixture secret is a valid whsec_


async def test_a_new_row_wakes_the_worker_at_once(relay_factory: RelayFactory,
                                                  receiver: DownstreamReceiver,
                                                  receiver_url: str) -> None:
    # No sweep for an hour: only the commit listener can bring the worker to this row.
    client = await start(relay_factory, endpoint(receiver_url),
                         outbox={"sweep_s": 3600.0, "allow_networks": ("127.0.0.0/8",)})
    await outbox_of(client).settle()
    [event] = await emit(client)
    [got] = await receiver.wait_for(1)
    assert got.headers["webhook-id"] == event.id


async def test_pause_gives_back_claims_of_rows_not_started(
        relay_factory: RelayFactory, aiohttp_server: Any) -> None:
    hang = Hanging()
    client = await start(relay_factory, endpoint(await serve(aiohttp_server, hang.app())),
                         outbox={"per_endpoint_concurrency": 1, "concurrency": 4,
                                 "allow_networks": ("127.0.0.0/8",)})
    outbox = outbox_of(client)
    for subject in ("a", "b", "c"):
        await emit(client, subject)
    await hang.entered.wait()
    await outbox.poke()
    assert outbox.in_flight("billing") == 1
    assert await outbox.pause("billing") == 3  # one in flight, two claimed and waiting
    rows = await deliveries(client)
    assert [r["status"] for r in rows] == ["held"] * 3
    assert sum(r["claimed_until_ms"] is not None for r in rows) == 1  # only the one in flight
    hang.release.set()
    await outbox.settle()
    assert [r["status"] for r in await deliveries(client)] == ["delivered", "held", "held"]
    assert await outbox.resume("billing") == 2
    await outbox.settle()
    assert [r["status"] for r in await deliveries(client)] == ["delivered"] * 3
    assert hang.count == 3


async def test_poke_refuses_when_the_worker_is_not_running(relay_factory: RelayFactory,
                                                           receiver_url: str) -> None:
    client = await start(relay_factory, endpoint(receiver_url))
    outbox = outbox_of(client)
    assert outbox.task is not None
    outbox.task.cancel()
    await asyncio.gather(outbox.task, return_exceptions=True)
    with pytest.raises(RuntimeError, match="not running"):
        await outbox.poke()


# ---- lanes heal themselves ---------------------------------------------------------------


async def test_a_lane_that_crashes_is_logged_restarted_and_its_row_sent(
        relay_factory: RelayFactory, receiver: DownstreamReceiver, receiver_url: str,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """1. the endpoint's only lane dies on a bug in one attempt  2. it is logged and a new
    lane takes over  3. the row it held is given back and delivered, not left to its lease."""
    client = await start(relay_factory, endpoint(receiver_url),
                         outbox={"per_endpoint_concurrency": 1,
                                 "allow_networks": ("127.0.0.0/8",)})
    real, calls = deliver.attempt, []

    async def flaky(*args: Any, **kw: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("a bug in one attempt")
        return await real(*args, **kw)

    monkeypatch.setattr(deliver, "attempt", flaky)
    await emit(client)
    await receiver.wait_for(1)
    await outbox_of(client).settle()
    [row] = await deliveries(client)
    assert (row["status"], row["attempts"]) == ("delivered", 1)
    assert any("outbox lane billing" in r.getMessage() and "crashed" in r.getMessage()
               for r in caplog.records)
    assert outbox_of(client).healthy(30.0)


async def test_healthy_is_false_while_a_lane_is_dead(relay_factory: RelayFactory,
                                                     receiver_url: str) -> None:
    client = await start(relay_factory, endpoint(receiver_url))
    outbox = outbox_of(client)
    await outbox.poke()
    assert outbox.healthy(30.0)
    lane = next(t for t in asyncio.all_tasks() if t.get_name().startswith("relay-outbox-billing"))
    lane.cancel()  # dies from outside: nothing restarts a cancelled lane
    await asyncio.gather(lane, return_exceptions=True)
    assert not outbox.healthy(30.0)


async def test_a_commit_resumes_its_caller_before_the_outbox_looks_for_work(
        relay_factory: RelayFactory, receiver_url: str) -> None:
    """The store calls its commit listeners (the worker's wake) before it settles the
    writers: the writer's answer must not wait for the worker's cycle."""
    # An active endpoint: without one a commit does not call for a cycle at all.
    client = await start(relay_factory, endpoint(receiver_url),
                         outbox={"sweep_s": 3600.0, "allow_networks": ("127.0.0.0/8",)})
    outbox, store = outbox_of(client), client.app[STORE_KEY]
    await outbox.poke()
    order: list[str] = []
    cycle = outbox._cycle

    async def noted() -> bool:
        order.append("cycle")
        return await cycle()

    outbox._cycle = noted  # type: ignore[method-assign]
    await store.write(lambda: None)
    order.append("writer")
    await outbox.poke()
    assert order[:2] == ["writer", "cycle"]


async def test_a_commit_wakes_the_worker_only_when_a_cycle_has_work(
        relay_factory: RelayFactory) -> None:
    """No active endpoint, nothing to record and no sweep due: a commit runs no cycle.
    `wake()` itself still does (the watchdog relies on it), and so does a commit when a
    sweep is due."""
    client = await start(relay_factory, outbox={"sweep_s": 3600.0})
    outbox, store = outbox_of(client), client.app[STORE_KEY]
    await outbox.poke()

    async def cycles_after(wake: Callable[[], Awaitable[object]]) -> int:
        before = outbox._cycles_done
        await wake()
        for _ in range(50):  # a cycle that goes to the store needs more than a loop turn
            await asyncio.sleep(0.01)
            if outbox._cycles_done > before and outbox._cycles_started == outbox._cycles_done:
                break
        return outbox._cycles_done - before

    assert await cycles_after(lambda: store.write(lambda: None)) == 0
    outbox._sweep_due = True  # as a failed cycle leaves it: the next commit must run one
    assert await cycles_after(lambda: store.write(lambda: None)) == 1

    async def wake() -> None:
        outbox.wake()

    assert await cycles_after(wake) == 1
