"""Attesto client against the loopback fake: verdicts, every error code, retries, breaker."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from relay.attesto.breaker import Breaker, BreakerState
from relay.attesto.client import AttestoClient
from relay.attesto.simulator import AttestoSimulator
from relay.config import AttestoConfig, Secret
from relay.core.errors import NotConfiguredError, RelayError


class FakeTime:
    """Monotonic clock + sleep that only advances it (backoff never really waits)."""

    def __init__(self) -> None:
        self.t = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += seconds


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def client(session: aiohttp.ClientSession, url: str, fake: FakeTime,
           breaker: Breaker | None = None, **cfg: Any) -> AttestoClient:
    config = AttestoConfig(**{"base_url": url, "timeout_s": 5.0, "connect_timeout_s": 1.0,
                              **cfg})
    return AttestoClient(session, config, Secret(AttestoSimulator.api_key), sleep=fake.sleep,
                         monotonic=fake, rand=lambda: 1.0, breaker=breaker)


async def test_apple_success_sends_key_and_request_id(session: aiohttp.ClientSession,
                                                      sim: AttestoSimulator,
                                                      attesto_url: str) -> None:
    sim.add_apple(transaction_id="t1", original_transaction_id="o1", product_id="p",
                  expires_ms=1_900_000_000_000, purchase_ms=1_800_000_000_000)
    verdict = await client(session, attesto_url, FakeTime()).verify_apple(
        "t1", "sandbox", request_id="req_abc")
    assert verdict.valid and verdict.body["transaction"]["originalTransactionId"] == "o1"
    path, body, headers = sim.calls[0]
    assert path == "/v1/apple/verify" and body == {"transactionId": "t1",
                                                   "environment": "sandbox"}
    lower = {k.lower(): v for k, v in headers.items()}  # header names are case-insensitive
    assert lower["authorization"] == f"Bearer {sim.api_key}"
    assert lower["x-request-id"] == "req_abc"


@pytest.mark.parametrize("case", ["TRANSACTION_NOT_FOUND", "BUNDLE_ID_MISMATCH",
                                  "PURCHASE_NOT_FOUND", "PACKAGE_NAME_MISMATCH"])
async def test_domain_verdicts_are_data_and_never_retried(
        case: str, session: aiohttp.ClientSession, sim: AttestoSimulator,
        attesto_url: str) -> None:
    c = client(session, attesto_url, FakeTime())
    if case == "TRANSACTION_NOT_FOUND":
        verdict = await c.verify_apple("missing")
    elif case == "BUNDLE_ID_MISMATCH":
        sim.add_apple(transaction_id="t", original_transaction_id="o", product_id="p",
                      expires_ms=None, purchase_ms=1, bundle_id="com.other")
        verdict = await c.verify_apple("t")
    elif case == "PURCHASE_NOT_FOUND":
        verdict = await c.verify_google("com.example.app", "p", "tok", "subscription")
    else:
        verdict = await c.verify_google("com.wrong", "p", "tok", "subscription")
    assert verdict.valid is False and verdict.error == case and verdict.message
    assert len(sim.calls) == 1


# (HTTP status, Attesto code, times queued) -> (relay status, relay code, calls made)
ERRORS = [
    (400, "INVALID_REQUEST", 1, 400, "attesto_invalid_request", 1),
    (400, "CREDENTIALS_MISSING", 1, 502, "attesto_credentials_missing", 1),
    (401, "UNAUTHENTICATED", 1, 502, "attesto_unauthenticated", 1),
    (404, "TENANT_NOT_FOUND", 1, 502, "attesto_tenant_not_found", 1),
    (401, "SIGNATURE_INVALID", 1, 502, "attesto_signature_invalid", 1),
    (404, "TRANSACTION_NOT_FOUND", 1, 502, "attesto_bad_response", 1),
    (502, "APPLE_API_ERROR", 4, 502, "apple_api_error", 4),
    (502, "GOOGLE_API_ERROR", 4, 502, "google_api_error", 4),
    (429, "RATE_LIMITED", 4, 503, "attesto_rate_limited", 4),
    (500, "INTERNAL_ERROR", 2, 502, "attesto_internal_error", 2),
    (503, "SOMETHING_NEW", 4, 502, "attesto_bad_response", 4),
]


@pytest.mark.parametrize(("status", "code", "times", "relay_status", "relay_code", "calls"),
                         ERRORS)
async def test_every_attesto_error_maps_to_one_relay_error(
        status: int, code: str, times: int, relay_status: int, relay_code: str, calls: int,
        session: aiohttp.ClientSession, sim: AttestoSimulator, attesto_url: str) -> None:
    details = {"status": 503, "appleErrorCode": 5000000} if code == "APPLE_API_ERROR" else None
    sim.fail_next(status, times=times, error=code, message="boom", details=details,
                  retry_after=1 if status == 429 else None)
    fake = FakeTime()
    with pytest.raises(RelayError) as err:
        await client(session, attesto_url, fake).verify_apple("t1")
    assert (err.value.status, err.value.code) == (relay_status, relay_code)
    assert len(sim.calls) == calls
    assert len(fake.sleeps) == calls - 1
    if code == "APPLE_API_ERROR":
        assert err.value.details == details
    if status == 429:
        assert err.value.retry_after_s == 1 and min(fake.sleeps) >= 1


async def test_retryable_failures_recover(session: aiohttp.ClientSession,
                                          sim: AttestoSimulator, attesto_url: str) -> None:
    sim.add_apple(transaction_id="t1", original_transaction_id="o1", product_id="p",
                  expires_ms=None, purchase_ms=1)
    sim.fail_next(502, error="APPLE_API_ERROR")
    sim.fail_next(500, drop=True)  # connection closed without an answer
    sim.fail_next(429, error="RATE_LIMITED", retry_after=3)
    sim.fail_next(500, error="INTERNAL_ERROR")
    fake = FakeTime()
    verdict = await client(session, attesto_url, fake, max_attempts=5).verify_apple("t1")
    assert verdict.valid and len(sim.calls) == 5
    assert fake.sleeps[2] == 3  # Retry-After honoured
    assert fake.sleeps[:2] == [0.1, 0.2]  # exponential (jitter pinned to its maximum)


async def test_retry_after_past_the_deadline_fails_fast(session: aiohttp.ClientSession,
                                                        sim: AttestoSimulator,
                                                        attesto_url: str) -> None:
    sim.fail_next(429, error="RATE_LIMITED", retry_after=60)
    fake = FakeTime()
    c = client(session, attesto_url, fake)
    for _ in range(2):  # the second call does not even reach Attesto
        with pytest.raises(RelayError) as err:
            await c.verify_apple("t1")
        assert (err.value.status, err.value.code) == (503, "attesto_rate_limited")
        assert 59 <= (err.value.retry_after_s or 0) <= 60
    assert len(sim.calls) == 1 and fake.sleeps == []


async def test_timeout_is_504(session: aiohttp.ClientSession, sim: AttestoSimulator,
                              attesto_url: str) -> None:
    sim.fail_next(200, delay_s=5)
    with pytest.raises(RelayError) as err:
        await client(session, attesto_url, FakeTime(), timeout_s=0.2).verify_apple("t1")
    assert (err.value.status, err.value.code) == (504, "attesto_timeout")


async def test_connection_refused_is_503_after_retries(session: aiohttp.ClientSession) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    fake = FakeTime()
    with pytest.raises(RelayError) as err:
        await client(session, f"http://127.0.0.1:{port}", fake).verify_apple("t1")
    assert (err.value.status, err.value.code) == (503, "attesto_unavailable")
    assert len(fake.sleeps) == 3


@pytest.mark.parametrize(("status", "raw"), [(200, b"{not json"), (200, b"[1,2]"),
                                             (200, b'{"valid":"yes"}'),
                                             (200, b'{"valid":false}'),
                                             (502, b"<html>Bad Gateway</html>")])
async def test_malformed_answers_are_502(status: int, raw: bytes,
                                         session: aiohttp.ClientSession,
                                         sim: AttestoSimulator, attesto_url: str) -> None:
    sim.fail_next(status, times=4, raw_body=raw)
    with pytest.raises(RelayError) as err:
        await client(session, attesto_url, FakeTime()).verify_apple("t1")
    assert (err.value.status, err.value.code) == (502, "attesto_bad_response")
    assert len(sim.calls) == (1 if status == 200 else 4)


async def test_breaker_opens_fails_fast_and_recovers(session: aiohttp.ClientSession,
                                                     sim: AttestoSimulator,
                                                     attesto_url: str) -> None:
    sim.add_apple(transaction_id="t1", original_transaction_id="o1", product_id="p",
                  expires_ms=None, purchase_ms=1)
    fake = FakeTime()
    breaker = Breaker(threshold=3, cooldown_s=30)
    c = client(session, attesto_url, fake, breaker=breaker)
    sim.fail_next(502, times=3, error="APPLE_API_ERROR")
    with pytest.raises(RelayError) as err:
        await c.verify_apple("t1")
    assert err.value.code == "attesto_unavailable" and breaker.state == BreakerState.OPEN
    assert len(sim.calls) == 3
    with pytest.raises(RelayError) as err:  # open: refused without a call
        await c.verify_apple("t1")
    assert err.value.status == 503 and 1 <= (err.value.retry_after_s or 0) <= 30
    assert len(sim.calls) == 3
    fake.t += 31  # cooldown over: one probe goes through and closes the breaker
    assert (await c.verify_apple("t1")).valid
    assert breaker.state == BreakerState.CLOSED and len(sim.calls) == 4


def test_breaker_half_open_failure_reopens() -> None:
    b = Breaker(threshold=2, cooldown_s=10)
    assert not b.failure(0) and b.failure(1) and b.refuse_for(5) == pytest.approx(6)
    assert b.refuse_for(11.5) is None and b.state == BreakerState.HALF_OPEN
    assert b.refuse_for(11.6) == 10  # the probe is out: others wait
    assert b.failure(12) and b.state == BreakerState.OPEN and b.times_opened == 2
    b.refuse_for(30)
    b.success()
    assert b.state == BreakerState.CLOSED and b.refuse_for(30) is None
    with pytest.raises(ValueError):
        Breaker(threshold=0)


async def test_concurrency_cap(session: aiohttp.ClientSession, aiohttp_server: Any) -> None:
    """Only max_concurrency calls reach Attesto at once; the rest wait their turn."""
    in_flight, peak, arrived = 0, 0, asyncio.Event()
    release = asyncio.Event()

    async def handler(request: web.Request) -> web.Response:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        if in_flight == 2:
            arrived.set()
        await release.wait()
        in_flight -= 1
        return web.json_response({"valid": False, "error": "TRANSACTION_NOT_FOUND"})

    app = web.Application()
    app.router.add_post("/v1/apple/verify", handler)
    server = await aiohttp_server(app, host="127.0.0.1")
    c = client(session, str(server.make_url("")).rstrip("/"), FakeTime(), max_concurrency=2)
    calls = asyncio.gather(*(c.verify_apple(f"t{i}") for i in range(6)))
    async with asyncio.timeout(5):
        await arrived.wait()
        release.set()
        verdicts = await calls
    assert [v.error for v in verdicts] == ["TRANSACTION_NOT_FOUND"] * 6
    assert peak == 2


async def test_no_api_key_is_not_configured(session: aiohttp.ClientSession) -> None:
    c = AttestoClient(session, AttestoConfig(), None)
    with pytest.raises(NotConfiguredError):
        await c.verify_apple("t1")


async def test_breaker_limits_come_from_config(session: aiohttp.ClientSession,
                                               sim: AttestoSimulator, attesto_url: str) -> None:
    """[attesto] breaker_threshold / breaker_cooldown_s, and a reload that changes them."""
    fake = FakeTime()
    c = client(session, attesto_url, fake, breaker_threshold=2, breaker_cooldown_s=60.0,
               max_attempts=1)
    for _ in range(2):
        sim.fail_next(502, error="APPLE_API_ERROR")
        with pytest.raises(RelayError):
            await c.verify_apple("t1")
    assert c.breaker.state == BreakerState.OPEN
    with pytest.raises(RelayError) as err:
        await c.verify_apple("t1")
    assert 30 < (err.value.retry_after_s or 0) <= 60  # the configured cool-down
    c.reconfigure(dataclasses.replace(c.config, breaker_threshold=9), None)
    assert c.breaker.threshold == 9 and c.breaker.state == BreakerState.OPEN


# ---- a misbehaving Attesto: unreadable Retry-After, a probe that never settles ------------


async def scripted(aiohttp_server: Any, answers: list[web.Response]) -> str:
    """A loopback Attesto that gives `answers` in order, then valid:false verdicts."""
    async def handler(request: web.Request) -> web.Response:
        await request.read()
        if answers:
            return answers.pop(0)
        return web.json_response({"valid": False, "error": "TRANSACTION_NOT_FOUND",
                                  "message": "not found"})

    app = web.Application()
    app.router.add_post("/v1/apple/verify", handler)
    server = await aiohttp_server(app, host="127.0.0.1")
    return str(server.make_url("")).rstrip("/")


@pytest.mark.parametrize("retry_after", ["\u00b2", "\u0663", "soon"])
async def test_an_unreadable_retry_after_is_ignored(session: aiohttp.ClientSession,
                                                    aiohttp_server: Any,
                                                    retry_after: str) -> None:
    """Contract §1.3: Retry-After is integer seconds. One that str.isdigit() accepts and
    int() refuses (or a non-ASCII digit) is not a Retry-After: back off as without one."""
    rate_limited = web.json_response(
        {"valid": False, "error": "RATE_LIMITED", "message": "Rate limit exceeded"},
        status=429, headers={"Retry-After": retry_after})
    url = await scripted(aiohttp_server, [rate_limited])
    fake = FakeTime()
    verdict = await client(session, url, fake).verify_apple("t1")
    assert verdict.error == "TRANSACTION_NOT_FOUND"
    assert fake.sleeps == [0.1]  # the ordinary backoff (jitter pinned to its maximum)


@pytest.mark.parametrize(("header", "seconds"), [("9" * 5000, "1"), (None, "9" * 4000)])
async def test_a_huge_retry_after_is_capped(session: aiohttp.ClientSession,
                                            aiohttp_server: Any, header: str | None,
                                            seconds: str) -> None:
    """A Retry-After (header, or details.retryAfterSeconds) too long for int() or a float."""
    body = ('{"valid":false,"error":"RATE_LIMITED","message":"m","details":'
            '{"retryAfterSeconds":' + seconds + "}}")
    url = await scripted(aiohttp_server, [web.Response(
        status=429, text=body, content_type="application/json",
        headers={"Retry-After": header} if header else None)])
    fake = FakeTime()
    c = client(session, url, fake)
    with pytest.raises(RelayError) as err:
        await c.verify_apple("t1")
    assert err.value.code == "attesto_rate_limited"
    assert err.value.retry_after_s is not None and err.value.retry_after_s <= 3600


async def half_open_with_retry_after_pending(session: aiohttp.ClientSession, url: str,
                                             fake: FakeTime, retry_after: int,
                                             **cfg: Any) -> tuple[AttestoClient, Breaker]:
    """Attesto asked for `retry_after` s, then failed enough to open the breaker, and the
    cooldown is over: the next call is the half-open probe, with the Retry-After pending."""
    breaker = Breaker(threshold=1, cooldown_s=1.0)
    c = client(session, url, fake, breaker=breaker, max_attempts=1, **cfg)
    with pytest.raises(RelayError):
        await c.verify_apple("t0")  # 429 Retry-After: `retry_after`
    breaker.failure(fake.t)  # ... and calls already in flight failed: open
    fake.t += 1.5
    assert breaker.state == BreakerState.OPEN
    return c, breaker


async def test_a_probe_refused_by_a_pending_retry_after_does_not_wedge_the_breaker(
        session: aiohttp.ClientSession, aiohttp_server: Any) -> None:
    """1. the probe meets a Retry-After beyond its deadline and fails fast  2. it settled
    nothing: the next call (once the Retry-After is over) probes Attesto, not refused."""
    url = await scripted(aiohttp_server, [web.json_response(
        {"valid": False, "error": "RATE_LIMITED", "message": "slow down"}, status=429,
        headers={"Retry-After": "60"})])
    fake = FakeTime()
    c, breaker = await half_open_with_retry_after_pending(session, url, fake, 60)
    with pytest.raises(RelayError) as err:
        await c.verify_apple("t1")
    assert err.value.code == "attesto_rate_limited"
    fake.t += 120
    assert (await c.verify_apple("t2")).error == "TRANSACTION_NOT_FOUND"
    assert breaker.state == BreakerState.CLOSED


async def test_a_cancelled_probe_does_not_wedge_the_breaker(session: aiohttp.ClientSession,
                                                            aiohttp_server: Any) -> None:
    """1. the probe waits out a pending Retry-After  2. it is cancelled there (the caller
    left, a restore deadline)  3. the next call probes Attesto instead of being refused."""
    url = await scripted(aiohttp_server, [web.json_response(
        {"valid": False, "error": "RATE_LIMITED", "message": "slow down"}, status=429,
        headers={"Retry-After": "3"})])
    fake = FakeTime()
    c, breaker = await half_open_with_retry_after_pending(session, url, fake, 3)
    waiting = asyncio.Event()

    async def forever(seconds: float) -> None:
        waiting.set()
        await asyncio.Event().wait()

    c._sleep = forever  # the probe's wait for the Retry-After never ends by itself
    probe = asyncio.create_task(c.verify_apple("t1"))
    await asyncio.wait_for(waiting.wait(), 5)
    probe.cancel()
    await asyncio.gather(probe, return_exceptions=True)
    c._sleep = fake.sleep
    fake.t += 10
    assert (await c.verify_apple("t2")).error == "TRANSACTION_NOT_FOUND"
    assert breaker.state == BreakerState.CLOSED


async def test_a_deeply_nested_answer_is_a_bad_response(session: aiohttp.ClientSession,
                                                        aiohttp_server: Any) -> None:
    deep = web.Response(body=b"[" * 100_000 + b"]" * 100_000, content_type="application/json")
    url = await scripted(aiohttp_server, [deep])
    with pytest.raises(RelayError) as err:
        await client(session, url, FakeTime()).verify_apple("t1")
    assert (err.value.status, err.value.code) == (502, "attesto_bad_response")


async def test_an_answer_larger_than_the_cap_is_a_bad_response(
        session: aiohttp.ClientSession, aiohttp_server: Any) -> None:
    """Valid JSON, padded to 2 MiB (the cap is 1 MiB): not read whole, not trusted."""
    body = b'{"valid":false,"error":"TRANSACTION_NOT_FOUND","message":"m"}' + b" " * 2**21
    url = await scripted(aiohttp_server, [web.Response(body=body,
                                                       content_type="application/json")])
    with pytest.raises(RelayError) as err:
        await client(session, url, FakeTime()).verify_apple("t1")
    assert (err.value.status, err.value.code) == (502, "attesto_bad_response")
