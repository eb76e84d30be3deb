"""A pause, a 410 or a resume made by one process applies in every process on the database.

Two relay apps run in this test process on ONE database (the same SQLite file, or one
PostgreSQL database with RELAY_TEST_POSTGRES_URL), each with its own Store (connection
and thread), Runtime and Outbox, as two instances or two workers of one `relay serve`
are; one loopback receiver is the downstream. The admin API of A pauses, resumes, or A
sees the 410; B must follow within one of its cycles or sweeps: claim nothing of a paused
endpoint, give back what it claimed and has not started, route new events as held, and
claim again after the resume.

Most tests give both a sweep of an hour, so a worker runs a cycle only when its own
commits wake it or the test pokes it (a poke reads endpoint_state as a sweep does): A
stays idle while B is watched. Writes of the two stores are not concurrent (the test
awaits each), so two SQLite connections never compete for the file's write lock.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from peewee import Database, DatabaseProxy

from relay.config import DownstreamConfig
from relay.outbox.receiver import DownstreamReceiver
from relay.store.models import database
from relay.web.appkeys import RUNTIME_KEY, STORE_KEY
from tests.conftest import ADMIN_TOKEN, Clock, RelayFactory, auth, make_config
from tests.support.outbox import App, Hanging, deliveries, emit, now_clock, outbox_of, serve

HOUR = 3600.0


@pytest.fixture
def clock() -> Clock:
    return now_clock()


class _PerStoreThread(DatabaseProxy):
    """`relay.store.models.database` when two Stores share one process: each store thread uses
    the Database its own Store initialized (relay has one Store per process, so the proxy
    is global; separate processes need none of this)."""

    __slots__ = ()
    by_thread: ClassVar[dict[int, Database]] = {}
    last: ClassVar[list[Database]] = []

    @property
    def obj(self) -> Database:
        db = self.by_thread.get(threading.get_ident())
        return db if db is not None else self.last[-1]

    def initialize(self, obj: Database) -> None:  # Store.open(), on the store's thread
        self.by_thread[threading.get_ident()] = obj
        self.last.append(obj)


@pytest.fixture
def two_stores() -> Iterator[None]:
    original = type(database)
    object.__setattr__(database, "__class__", _PerStoreThread)
    try:
        yield
    finally:
        object.__setattr__(database, "__class__", original)
        _PerStoreThread.by_thread.clear()
        _PerStoreThread.last.clear()


@pytest.fixture
def pair(two_stores: None, relay_factory: RelayFactory,
         tmp_path: Path) -> Callable[..., Any]:
    """Start A, then B, on one database with the endpoint `billing` at `url`."""

    async def start(url: str, *, b_sweep_s: float = HOUR, **outbox: Any) -> tuple[App, App]:
        def config(sweep_s: float) -> Any:
            return make_config(tmp_path, downstream=(DownstreamConfig("billing", url),),
                               outbox={"sweep_s": sweep_s, "allow_networks": ("127.0.0.0/8",),
                                       **outbox})

        a = await relay_factory(config(HOUR), use_clock=True)
        b = await relay_factory(config(b_sweep_s), use_clock=True)
        # Two stores, two connections: each store thread runs its SQL on its own Database.
        assert a.app[STORE_KEY].db is not b.app[STORE_KEY].db
        assert set(_PerStoreThread.by_thread.values()) == {a.app[STORE_KEY].db,
                                                           b.app[STORE_KEY].db}
        await settle(a, b)  # both came round once: from now on each runs when woken
        return a, b

    return start


async def settle(*clients: App) -> None:
    for client in clients:
        await outbox_of(client).settle()


async def admin(client: App, action: str) -> dict[str, Any]:
    resp = await client.post(f"/v1/admin/endpoints/billing/{action}", headers=auth(ADMIN_TOKEN))
    assert resp.status == 200, await resp.text()
    body: dict[str, Any] = await resp.json()
    return body


def paused(client: App) -> frozenset[str]:
    return client.app[RUNTIME_KEY].paused


async def statuses(client: App) -> list[str]:
    return [r["status"] for r in await deliveries(client)]


async def until(check: Callable[[], bool], timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not check():
            await asyncio.sleep(0.01)


def lines(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


async def test_pause_through_a_stops_b_and_b_routes_new_events_as_held(
        pair: Callable[..., Any], receiver: DownstreamReceiver, receiver_url: str,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="relay.outbox")
    a, b = await pair(receiver_url)
    await emit(b, "s1")
    await receiver.wait_for(1)  # B delivers
    await settle(b)
    assert (await admin(a, "pause"))["held"] == 0
    await emit(b, "s2")  # B has not looked yet: its rules route this one as pending
    await settle(b)  # its cycle: billing is paused in the database, nothing is claimed
    assert len(receiver.received) == 1
    assert await statuses(b) == ["delivered", "held"]  # the pending one is held
    assert paused(b) == {"billing"}  # and B follows
    await emit(b, "s3")
    assert await statuses(b) == ["delivered", "held", "held"]  # routed as held at once
    await settle(b, a)
    assert len(receiver.received) == 1
    assert lines(caplog, "paused by another process") == [
        "endpoint billing paused by another process: its events are held until "
        "`relay resume billing`"]


async def test_pause_through_a_gives_back_what_b_claimed_and_has_not_started(
        pair: Callable[..., Any], aiohttp_server: Any) -> None:
    hang = Hanging()
    a, b = await pair(await serve(aiohttp_server, hang.app()),
                      per_endpoint_concurrency=1, concurrency=4)
    for subject in ("s1", "s2", "s3", "s4"):
        await emit(b, subject)
    await hang.wait_count(1)
    await outbox_of(b).poke()
    assert outbox_of(b).in_flight("billing") == 1
    claimed = [r for r in await deliveries(b) if r["claimed_until_ms"] is not None]
    assert len(claimed) >= 2  # one in flight, the others wait in B's ready queue
    assert (await admin(a, "pause"))["held"] == 4
    await outbox_of(b).poke()  # B follows: it drops its ready rows, gives their claims back
    hang.release.set()  # the attempt in flight finishes
    await settle(b, a)
    assert hang.count == 1  # nothing B had claimed went out after the pause
    rows = await deliveries(b)
    assert sorted(r["status"] for r in rows) == ["delivered", "held", "held", "held"]
    assert all(r["claimed_until_ms"] is None for r in rows)  # every claim given back


async def test_resume_through_a_makes_b_deliver_again(
        pair: Callable[..., Any], receiver: DownstreamReceiver, receiver_url: str,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="relay.outbox")
    a, b = await pair(receiver_url)
    await admin(a, "pause")
    await admin(b, "pause")  # B paused by its own admin API: this test is about the resume
    assert paused(b) == {"billing"}
    await emit(b, "s1")
    assert await admin(a, "resume") == {"endpoint": "billing", "state": "active",
                                        "released": 1}
    await receiver.wait_for(1)  # A sends the row its resume released
    await settle(a)
    await emit(b, "s2")  # B still believes billing paused: held
    assert await statuses(b) == ["delivered", "held"]
    # B has nothing to claim (its only endpoint is paused here), so only its sweep
    # reads endpoint_state; A stays idle from here on.
    await outbox_of(b).poke()
    await receiver.wait_for(2)  # B released the row it had held and sent it
    assert paused(b) == frozenset()
    await emit(b, "s3")
    await receiver.wait_for(3)
    await settle(b, a)
    assert await statuses(b) == ["delivered"] * 3
    assert [r.json["subject_key"] for r in receiver.received] == ["s1", "s2", "s3"]
    assert lines(caplog, "resumed by another process") == [
        "endpoint billing resumed by another process: sending its deliveries again"]


async def test_b_follows_pause_and_resume_on_its_own_sweep(
        pair: Callable[..., Any], receiver: DownstreamReceiver, receiver_url: str) -> None:
    a, b = await pair(receiver_url, b_sweep_s=0.1)  # no pokes: B's timer alone
    await admin(a, "pause")
    await until(lambda: paused(b) == {"billing"})
    await admin(a, "resume")
    await until(lambda: paused(b) == frozenset())  # though B had nothing else to do
    await emit(b, "s1")
    await receiver.wait_for(1)
    await settle(b, a)
    assert await statuses(b) == ["delivered"]


async def test_a_410_seen_by_a_stops_b(
        pair: Callable[..., Any], receiver: DownstreamReceiver, receiver_url: str,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="relay.outbox")
    a, b = await pair(receiver_url)
    receiver.reply_next(410)
    await emit(a, "s1")  # A's commit wakes A alone: A sends it and gets the 410
    await receiver.wait_for(1)
    await settle(a)
    assert paused(a) == {"billing"}
    await emit(b, "s2")  # B has not looked yet: routed as pending
    await settle(b)
    assert len(receiver.received) == 1
    assert await statuses(b) == ["held", "held"]
    assert paused(b) == {"billing"}
    await emit(b, "s3")
    assert await statuses(b) == ["held"] * 3  # routed as held at once
    await settle(b, a)
    assert len(receiver.received) == 1
    assert lines(caplog, "by another process") == [
        "endpoint billing disabled (410 Gone) by another process: its events are held "
        "until `relay resume billing`"]
