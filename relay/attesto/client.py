"""Attesto verify client: one call = bounded retries inside one deadline, mapped errors.

Retries (exponential backoff, full jitter) on network errors, 429 (honouring
Retry-After), 502/503/504, and at most once on 500; never on other 4xx nor on a
`valid:false` verdict, which is data (`Verdict`), not an error. A concurrency cap and a
circuit breaker keep an Attesto outage from piling up requests: while the breaker is
open, and while a Retry-After is pending, calls fail fast with 503 and Retry-After.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from relay.attesto.breaker import Breaker
from relay.config import AttestoConfig, Secret
from relay.core.errors import (
    BadRequestError,
    NotConfiguredError,
    RelayError,
    UpstreamError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
)
from relay.core.json_codec import dumps, loads
from relay.core.retry_policy import delay_seconds
from relay.metrics import Metrics

log = logging.getLogger("relay.attesto")

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
BACKOFF_BASE_S = 0.1
BACKOFF_CAP_S = 2.0
# A longer Retry-After (a buggy or hostile answer) would stop every verify for as long.
MAX_RETRY_AFTER_S = 3600
# Verify answers are a few kB; a larger one is not a verify answer (and is not read whole).
MAX_ANSWER_BYTES = 1 << 20

# Attesto error code -> (relay error class, relay code). Every code in contract §1.5/§2.
ERROR_MAP: dict[str, tuple[type[RelayError], str]] = {
    "UNAUTHENTICATED": (UpstreamError, "attesto_unauthenticated"),
    "TENANT_NOT_FOUND": (UpstreamError, "attesto_tenant_not_found"),
    "CREDENTIALS_MISSING": (UpstreamError, "attesto_credentials_missing"),
    "INVALID_REQUEST": (BadRequestError, "attesto_invalid_request"),
    "SIGNATURE_INVALID": (UpstreamError, "attesto_signature_invalid"),
    "APPLE_API_ERROR": (UpstreamError, "apple_api_error"),
    "GOOGLE_API_ERROR": (UpstreamError, "google_api_error"),
    "RATE_LIMITED": (UpstreamUnavailableError, "attesto_rate_limited"),
    "INTERNAL_ERROR": (UpstreamError, "attesto_internal_error"),
}
# Domain verdicts: answered as 200 valid:false by Attesto, passed through unchanged.
VERDICT_CODES = frozenset({"TRANSACTION_NOT_FOUND", "BUNDLE_ID_MISMATCH", "PURCHASE_NOT_FOUND",
                           "PACKAGE_NAME_MISMATCH"})


@dataclass(frozen=True, slots=True)
class Verdict:
    """Attesto's 200 answer: `valid` plus the whole body, untouched."""

    valid: bool
    body: dict[str, Any]

    @property
    def error(self) -> str | None:
        value = self.body.get("error")
        return value if isinstance(value, str) else None

    @property
    def message(self) -> str | None:
        value = self.body.get("message")
        return value if isinstance(value, str) else None


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    body: dict[str, Any] | None  # None: not a JSON object
    retry_after_s: int | None


def _retry_after(headers: Mapping[str, str], body: dict[str, Any] | None) -> int | None:
    """Integer seconds from `Retry-After` (contract §1.3) or `details.retryAfterSeconds`,
    at most MAX_RETRY_AFTER_S; None when neither is readable."""
    seconds = delay_seconds(headers.get("Retry-After", "").strip(), MAX_RETRY_AFTER_S)
    if seconds is not None:
        return math.ceil(seconds)
    details = body.get("details") if body else None
    value = details.get("retryAfterSeconds") if isinstance(details, dict) else None
    if isinstance(value, int) and not isinstance(value, bool):
        return max(0, min(value, MAX_RETRY_AFTER_S))
    return None


def map_error(answer: _Answer) -> RelayError:
    """Turn a non-2xx Attesto answer into the one relay error for its code."""
    body = answer.body or {}
    code = body.get("error")
    message = body.get("message") if isinstance(body.get("message"), str) else None
    details = body.get("details") if isinstance(body.get("details"), dict) else None
    if isinstance(code, str) and code in ERROR_MAP:
        cls, relay_code = ERROR_MAP[code]
        text = f"Attesto answered {answer.status} {code}" + (f": {message}" if message else "")
        retry = answer.retry_after_s if code == "RATE_LIMITED" else None
        if code == "RATE_LIMITED" and retry is None:
            retry = 1
        return cls(text, code=relay_code, details=details, retry_after_s=retry)
    if answer.status == 429:
        return UpstreamUnavailableError("Attesto is rate limiting", code="attesto_rate_limited",
                                        retry_after_s=answer.retry_after_s or 1)
    return UpstreamError(f"Attesto answered HTTP {answer.status} without a known error code",
                         code="attesto_bad_response", details={"status": answer.status})


async def _read_capped(resp: aiohttp.ClientResponse) -> bytes | None:
    """The answer's body, or None (logged) once it passes MAX_ANSWER_BYTES."""
    if resp.content_length is not None:
        if resp.content_length > MAX_ANSWER_BYTES:
            log.warning("attesto answered %d bytes (more than %d): not read",
                        resp.content_length, MAX_ANSWER_BYTES)
            return None
        return await resp.read()  # no more than Content-Length is read
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(65_536):
        size += len(chunk)
        if size > MAX_ANSWER_BYTES:
            log.warning("attesto answered more than %d bytes: not read", MAX_ANSWER_BYTES)
            return None
        chunks.append(chunk)
    return b"".join(chunks)


class AttestoClient:
    """Calls Attesto's verify endpoints on the shared session. Safe for concurrent use."""

    def __init__(self, session: aiohttp.ClientSession, config: AttestoConfig,
                 api_key: Secret | None, *,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 monotonic: Callable[[], float] = time.monotonic,
                 rand: Callable[[], float] = random.random,
                 breaker: Breaker | None = None, metrics: Metrics | None = None) -> None:
        self._session = session
        self._metrics = metrics
        self._sleep = sleep
        self._now = monotonic
        self._rand = rand
        # Failed attempts (network, timeout, 5xx) open it: [attesto] breaker_threshold.
        self.breaker = breaker or Breaker(config.breaker_threshold, config.breaker_cooldown_s)
        self._not_before = 0.0  # monotonic time before which a 429 asked us not to call
        self.config = config
        self._slots = asyncio.Semaphore(config.max_concurrency)
        self._latency_of: dict[str, Any] = {}
        self.reconfigure(config, api_key)

    def reconfigure(self, config: AttestoConfig, api_key: Secret | None) -> None:
        """Adopt a reloaded `[attesto]` and key; calls in progress finish as they began.

        The breaker and a pending Retry-After carry over, unless Attesto moved (base_url).
        """
        if config.max_concurrency != self.config.max_concurrency:
            self._slots = asyncio.Semaphore(config.max_concurrency)
        if config.base_url != self.config.base_url:
            self.breaker = Breaker(config.breaker_threshold, config.breaker_cooldown_s)
            self._not_before = 0.0
        elif (config.breaker_threshold, config.breaker_cooldown_s) != (
                self.config.breaker_threshold, self.config.breaker_cooldown_s):
            self.breaker.threshold = config.breaker_threshold  # from the next failure on
            self.breaker.cooldown_s = config.breaker_cooldown_s
        self.config = config
        self._api_key = api_key
        self._base = config.base_url.rstrip("/")
        self._headers = {  # every call's (aiohttp copies them into each request)
            "Authorization": f"Bearer {api_key.reveal() if api_key else ''}",
            "Content-Type": "application/json", "Accept": "application/json"}
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=config.connect_timeout_s)

    async def verify_apple(self, transaction_id: str, environment: str | None = None, *,
                           request_id: str | None = None) -> Verdict:
        body: dict[str, Any] = {"transactionId": transaction_id}
        if environment is not None:
            body["environment"] = environment
        return await self.call("/v1/apple/verify", body, request_id)

    async def verify_google(self, package_name: str, product_id: str, purchase_token: str,
                            kind: str, *, request_id: str | None = None) -> Verdict:
        body = {"packageName": package_name, "productId": product_id,
                "purchaseToken": purchase_token, "type": kind}
        return await self.call("/v1/google/verify", body, request_id)

    async def call(self, path: str, body: dict[str, Any], request_id: str | None) -> Verdict:
        """POST `body`; return the verdict or raise the mapped `RelayError`."""
        if self._api_key is None:
            raise NotConfiguredError("verify is disabled: credential 'attesto-api-key' is missing")
        deadline = self._now() + self.config.timeout_s
        try:
            async with asyncio.timeout(self.config.timeout_s):
                async with self._slots:
                    return await self._attempts(path, body, request_id, deadline)
        except TimeoutError:
            self._count_error("attesto_timeout")
            log.warning("attesto %s timed out after %.1fs request_id=%s", path,
                        self.config.timeout_s, request_id or "-")
            raise UpstreamTimeoutError(
                f"Attesto did not answer within {self.config.timeout_s:g} s",
                code="attesto_timeout") from None

    async def _attempts(self, path: str, body: dict[str, Any], request_id: str | None,
                        deadline: float) -> Verdict:
        payload = dumps(body, ascii_fallback=True).encode()
        headers = self._headers
        if request_id:
            headers = {**headers, "X-Request-Id": request_id}
        seen_500 = False
        last: RelayError | None = None
        for attempt in range(1, self.config.max_attempts + 1):
            probe = self._admit()
            try:
                if self._not_before:  # a 429's Retry-After was seen: it may still be pending
                    await self._wait_retry_after(deadline, last)
                started = time.perf_counter()
                try:
                    answer = await self._post(path, payload, headers)
                except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
                    self._failed()
                    self._count_error("attesto_unavailable")
                    # The detail (addresses) goes to the log only, never to the caller.
                    last = UpstreamUnavailableError("Attesto could not be reached",
                                                    code="attesto_unavailable")
                    log.info("attesto %s attempt %d: %s: %.200s request_id=%s", path,
                             attempt, type(exc).__name__, exc, request_id or "-")
                    answer = None
                except BaseException:
                    self._failed()  # cancelled mid-call (deadline): Attesto did not answer
                    raise
                if answer is not None and answer.status >= 500:
                    self._failed()
                elif answer is not None:
                    self.breaker.success()  # Attesto is up; 4xx is about this request
            finally:
                if probe is not None:  # it settled above, unless cancelled or refused first
                    self.breaker.probe_ended(probe, self._now())
            if answer is None:
                assert last is not None
                if attempt == self.config.max_attempts:
                    raise last from None
                await self._backoff(attempt, None, deadline, last)
                continue
            if self._metrics is not None:
                self._latency(path).observe(time.perf_counter() - started)
            if answer.status == 200:
                try:
                    return self._verdict(answer)
                except RelayError as exc:
                    self._count_error(exc.code)
                    raise
            error = map_error(answer)
            self._count_error(error.code)
            log.info("attesto %s attempt %d: HTTP %d %s request_id=%s", path, attempt,
                     answer.status, error.code, request_id or "-")
            if answer.status == 429 and answer.retry_after_s:
                self._not_before = max(self._not_before, self._now() + answer.retry_after_s)
            retry = answer.status in RETRY_STATUSES and not (answer.status == 500 and seen_500)
            seen_500 = seen_500 or answer.status == 500
            if not retry or attempt == self.config.max_attempts:
                raise error
            last = error
            await self._backoff(attempt, answer.retry_after_s, deadline, last)
        assert last is not None
        raise last

    async def _post(self, path: str, payload: bytes, headers: dict[str, str]) -> _Answer:
        async with self._session.post(self._base + path, data=payload, headers=headers,
                                      timeout=self._timeout, allow_redirects=False) as resp:
            raw = await _read_capped(resp)
            parsed = None
            try:
                parsed = loads(raw) if raw is not None else None
            except (ValueError, RecursionError):  # not JSON, or nested too deep
                pass
            body = parsed if isinstance(parsed, dict) else None
            return _Answer(resp.status, body, None if resp.status == 200
                           else _retry_after(resp.headers, body))

    def _verdict(self, answer: _Answer) -> Verdict:
        body = answer.body
        if body is None or not isinstance(body.get("valid"), bool):
            raise UpstreamError("Attesto answered 200 with a body that is not a verify answer",
                                code="attesto_bad_response")
        if body["valid"] is False and not isinstance(body.get("error"), str):
            raise UpstreamError("Attesto answered valid:false without an error code",
                                code="attesto_bad_response")
        return Verdict(body["valid"], body)

    def _latency(self, path: str) -> Any:
        """The latency histogram's child for `path`'s platform, looked up once."""
        child = self._latency_of.get(path)
        if child is None:
            assert self._metrics is not None
            child = self._latency_of[path] = self._metrics.attesto_latency.labels(
                path.split("/")[2])
        return child

    def _count_error(self, code: str) -> None:
        if self._metrics is not None:
            self._metrics.attesto_errors.labels(code).inc()

    def _failed(self) -> None:
        if self.breaker.failure(self._now()):
            log.warning("attesto circuit opened after %d failed attempts; refusing calls "
                        "for %.0fs", self.breaker.failures, self.breaker.cooldown_s)

    def _admit(self) -> int | None:
        """Fail fast while the breaker is open; return the probe number when this attempt
        is the half-open probe (the caller must end it: `Breaker.probe_ended`)."""
        wait = self.breaker.refuse_for(self._now())
        if wait is not None:
            self._count_error("circuit_open")
            raise UpstreamUnavailableError(
                "Attesto is failing; relay stopped calling it for a moment",
                code="attesto_unavailable", retry_after_s=max(1, math.ceil(wait)))
        return self.breaker.probe()

    async def _wait_retry_after(self, deadline: float, last: RelayError | None) -> None:
        """Wait out a pending Retry-After if it fits before `deadline`, else fail fast."""
        now = self._now()
        if self._not_before > now:
            if self._not_before >= deadline:
                raise last or UpstreamUnavailableError(
                    "Attesto asked relay to slow down", code="attesto_rate_limited",
                    retry_after_s=max(1, math.ceil(self._not_before - now)))
            await self._sleep(self._not_before - now)

    async def _backoff(self, attempt: int, retry_after_s: int | None, deadline: float,
                       last: RelayError) -> None:
        """Sleep before the next attempt, or raise `last` if that would pass the deadline."""
        delay = self._rand() * min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** (attempt - 1))
        delay = max(delay, float(retry_after_s or 0))
        if self._now() + delay >= deadline:
            raise last
        await self._sleep(delay)
