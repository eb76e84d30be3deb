"""`deliver.attempt`'s timeout on shared timers: a timeout is a failed attempt, any other
cancellation still cancels, and a finished attempt is never cancelled later."""

from __future__ import annotations

import asyncio
import gc
import time
import weakref
from collections.abc import AsyncIterator

import aiohttp
import pytest

from relay.core.addresses import parse_allow_networks
from relay.core.retry_policy import Verdict
from relay.core.signing import parse_secret
from relay.outbox import deliver
from relay.outbox.endpoints import Endpoint
from relay.outbox.queue import Claimed
from relay.outbox.receiver import DownstreamReceiver
from relay.outbox.ssrf import GuardedResolver
from tests.conftest import DOWNSTREAM_SECRET


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    resolver = GuardedResolver(parse_allow_networks(("127.0.0.0/8",)))
    async with deliver.delivery_session(resolver, 4) as s:
        yield s


def endpoint(url: str, timeout_s: float) -> Endpoint:
    return Endpoint(name="billing", url=url, timeout_s=timeout_s, schedule=(1.0, 2.0),
                    hmac_keys=(parse_secret(DOWNSTREAM_SECRET),), ed25519_keys=(),
                    enabled=True)


CLAIMED = Claimed(id=1, endpoint="billing", event_id="evt_1", body=b'{"a":1}', attempts=0,
                  token=1, subject="s1", sequence=1)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


async def test_an_attempt_past_its_timeout_fails_and_leaves_its_task_running(
        session: aiohttp.ClientSession, receiver: DownstreamReceiver,
        receiver_url: str) -> None:
    receiver.reply_next(200, delay_s=1.0)
    outcome = await deliver.attempt(session, endpoint(receiver_url, 0.05), CLAIMED, now_ms)
    assert (outcome.verdict, outcome.status_code) == (Verdict.RETRY, None)
    assert outcome.error == "timeout after 0.05s"
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0
    await asyncio.sleep(0.01)  # not cancelled


async def test_a_finished_attempt_is_not_cancelled_when_its_deadline_passes(
        session: aiohttp.ClientSession, receiver: DownstreamReceiver,
        receiver_url: str) -> None:
    outcome = await deliver.attempt(session, endpoint(receiver_url, 0.05), CLAIMED, now_ms)
    assert (outcome.verdict, outcome.status_code, outcome.error) == (Verdict.DELIVERED, 200,
                                                                      None)
    await asyncio.sleep(0.15)  # past the deadline: this task is not cancelled
    outcome = await deliver.attempt(session, endpoint(receiver_url, 0.05), CLAIMED, now_ms)
    assert outcome.verdict == Verdict.DELIVERED


async def test_a_cancellation_from_elsewhere_still_cancels(
        session: aiohttp.ClientSession, receiver: DownstreamReceiver,
        receiver_url: str) -> None:
    receiver.reply_next(200, delay_s=1.0)
    task = asyncio.create_task(
        deliver.attempt(session, endpoint(receiver_url, 5.0), CLAIMED, now_ms))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_cancellation_at_the_deadline_is_not_taken_for_the_timeout(
        session: aiohttp.ClientSession, receiver: DownstreamReceiver,
        receiver_url: str) -> None:
    receiver.reply_next(200, delay_s=1.0)
    task = asyncio.create_task(
        deliver.attempt(session, endpoint(receiver_url, 5.0), CLAIMED, now_ms))
    await asyncio.sleep(0.05)
    deadlines = deliver._deadlines_of(asyncio.get_running_loop())
    [slot] = [when for when, tasks in deadlines._slots.items() if task in tasks]
    task.cancel()  # stop() and the deadline in the same loop turn
    deadlines._expire(slot)
    with pytest.raises(asyncio.CancelledError):
        await task


def test_the_deadlines_of_a_closed_loop_are_not_kept() -> None:
    loop = asyncio.new_event_loop()
    deliver._deadlines_of(loop)
    ref = weakref.ref(loop)
    loop.close()
    del loop
    gc.collect()
    assert ref() is None
