"""One delivery attempt over HTTP: sign, POST (no redirects), judge; and the session it uses.

No SQL here: the worker (`outbox`) claims and records. The session's resolver is the
SSRF guard, so a name that resolves to a refused address fails at connect time.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import random
import weakref
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver

from relay import __version__
from relay.config import ConfigError, url_problem
from relay.core.addresses import Network, SsrfError
from relay.core.retry_policy import Decision, Verdict, decide
from relay.core.signing import sign_headers
from relay.outbox.endpoints import Endpoint
from relay.outbox.queue import Claimed, Outcome

log = logging.getLogger("relay.deliver")

EXCERPT_BYTES = 256  # first bytes of a response kept with the attempt
START_LOOKUP_TIMEOUT_S = 5.0  # a slow DNS delays the start by at most this per endpoint


async def attempt(session: aiohttp.ClientSession, ep: Endpoint, c: Claimed,
                  now_ms: Callable[[], int],
                  rand: Callable[[], float] = random.random) -> Outcome:
    """POST one claimed row, signed with a fresh timestamp; never raises but cancellation."""
    started_ms = now_ms()
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    status: int | None = None
    retry_after: str | None = None
    excerpt: str | None = None
    error: str | None = None
    task = asyncio.current_task()
    assert task is not None
    cancelling = task.cancelling()
    deadlines = _deadlines_of(loop)
    slot = deadlines.enter(loop, task, t0, ep.timeout_s)
    timed_out = False
    try:
        try:
            headers = sign_headers(c.event_id, started_ms // 1000, c.body, ep.hmac_keys,
                                   ep.ed25519_keys)
            headers["Content-Type"] = "application/json"
            async with session.post(ep.url, data=c.body, headers=headers,
                                    allow_redirects=False) as resp:
                status = resp.status
                retry_after = resp.headers.get("Retry-After")
                excerpt = (await resp.content.read(EXCERPT_BYTES)).decode("utf-8", "replace")
                if 300 <= status < 400:
                    location = resp.headers.get("Location", "")[:200]
                    error = f"redirect not followed: HTTP {status} to {location!r}"
                elif not 200 <= status < 300:
                    error = f"HTTP {status}"
        finally:
            # Our cancellation alone (none from elsewhere) is this attempt's timeout.
            timed_out = deadlines.leave(task, slot) and task.uncancel() <= cancelling
    except asyncio.CancelledError:
        if not timed_out:
            raise
        error = f"timeout after {ep.timeout_s:g}s"
    except TimeoutError:
        error = f"timeout after {ep.timeout_s:g}s"
    except aiohttp.ClientConnectorError as exc:
        error = describe_connect_error(exc)
    except (aiohttp.ClientError, OSError) as exc:
        error = f"{type(exc).__name__}: {exc}"[:500]
    except Exception as exc:  # never lose the row to a bug: it retries on schedule
        log.exception("delivery %d to %s: unexpected error", c.id, c.endpoint)
        error = f"internal error: {type(exc).__name__}"
    duration_ms = int((loop.time() - t0) * 1000)
    finished_ms = now_ms()
    decision = decide(status, c.attempts + 1, ep.schedule, retry_after, finished_ms / 1000,
                      rand)
    if decision.verdict == Verdict.DELIVERED:
        log.debug("delivery %d event %s to %s: %d in %d ms", c.id, c.event_id, c.endpoint,
                  status, duration_ms)
    else:
        log.info("delivery %d event %s to %s attempt %d failed: %s; %s", c.id, c.event_id,
                 c.endpoint, c.attempts + 1, error, _next_step(decision))
    return Outcome(
        delivery_id=c.id, endpoint=c.endpoint, token=c.token, verdict=decision.verdict,
        next_attempt_ms=finished_ms + int(decision.delay_s * 1000), started_ms=started_ms,
        duration_ms=duration_ms, status_code=status, error=error, excerpt=excerpt)


class Deadlines:
    """The attempts' timeouts on shared loop timers, one per slot of deadlines, not a
    timer per request (aiohttp's per-request timeout cost ~8 µs of a ~100 µs post).

    A slot is the deadline rounded up to a whole second for timeouts of 5 s or more (as
    aiohttp rounds them) and to 10 ms below. When a slot's timer fires, the tasks still
    in it are cancelled, as aiohttp's own timeout does; `leave` tells that cancellation
    (then `uncancel`ed by the caller) from any other.
    """

    def __init__(self) -> None:  # no reference to the loop: it keys `_deadlines` weakly
        self._slots: dict[float, set[asyncio.Task[Any]]] = {}
        self._expired: set[asyncio.Task[Any]] = set()

    def enter(self, loop: asyncio.AbstractEventLoop, task: asyncio.Task[Any], now: float,
              timeout_s: float) -> float:
        """Cancel `task` once `timeout_s` from `loop`'s time `now` have passed (its slot)."""
        when = now + timeout_s
        when = math.ceil(when) if timeout_s >= 5 else math.ceil(when * 100) / 100
        tasks = self._slots.get(when)
        if tasks is None:
            tasks = self._slots[when] = set()
            loop.call_at(when, self._expire, when)
        tasks.add(task)
        return when

    def leave(self, task: asyncio.Task[Any], slot: float) -> bool:
        """Forget `task`'s deadline; True if it passed (the task was cancelled for it)."""
        tasks = self._slots.get(slot)
        if tasks is not None:
            tasks.discard(task)
        if task in self._expired:
            self._expired.discard(task)
            return True
        return False

    def _expire(self, slot: float) -> None:
        for task in self._slots.pop(slot, ()):
            if not task.done():
                self._expired.add(task)
                task.cancel()


_deadlines: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Deadlines] = (
    weakref.WeakKeyDictionary())


def _deadlines_of(loop: asyncio.AbstractEventLoop) -> Deadlines:
    deadlines = _deadlines.get(loop)
    if deadlines is None:
        deadlines = _deadlines[loop] = Deadlines()
    return deadlines


def _next_step(decision: Decision) -> str:
    if decision.verdict == Verdict.RETRY:
        return f"retry in {decision.delay_s:.0f}s"
    return {Verdict.GONE: "endpoint disabled (410)", Verdict.DEAD: "dead"}.get(
        decision.verdict, str(decision.verdict))


def describe_connect_error(exc: aiohttp.ClientConnectorError) -> str:
    """A connect failure in words; an SSRF refusal names its rule and the setting."""
    cause = exc.os_error
    if isinstance(cause, SsrfError):
        return f"ssrf_refused ({cause.rule}): {cause}"
    return f"connect failed: {cause.strerror or cause}"[:500]


def delivery_session(resolver: AbstractResolver, limit: int) -> aiohttp.ClientSession:
    """The deliveries' own session: guarded DNS, no cookies, timeouts kept by `attempt`."""
    connector = aiohttp.TCPConnector(resolver=resolver, limit=limit, limit_per_host=0,
                                     ttl_dns_cache=30)
    return aiohttp.ClientSession(
        connector=connector, cookie_jar=aiohttp.DummyCookieJar(),
        timeout=aiohttp.ClientTimeout(total=None),
        headers={"User-Agent": f"relay/{__version__}"}, raise_for_status=False)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


async def check_hostnames(resolver: AbstractResolver, endpoints: Mapping[str, Endpoint],
                          allow: tuple[Network, ...], source: str) -> None:
    """At start: refuse (ConfigError) a hostname that resolves to a disallowed address.

    A name that does not resolve now only warns: DNS may come up later, and the
    connect-time guard still applies to every attempt.
    """
    problems: list[str] = []
    for index, ep in enumerate(endpoints.values()):
        parts = urlsplit(ep.url)
        host = parts.hostname or ""
        if url_problem(ep.url, allow) is not None or _is_ip(host):
            continue
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            async with asyncio.timeout(START_LOOKUP_TIMEOUT_S):
                await resolver.resolve(host, port)
        except TimeoutError:
            log.warning("endpoint %s: no answer resolving %s at start; checked again on "
                        "every delivery", ep.name, host)
        except SsrfError as exc:
            problems.append(f"{source}: [[downstream]] #{index + 1} ({ep.name}) url refused "
                            f"by the SSRF guard ({exc.rule}): {exc}")
        except OSError as exc:
            log.warning("endpoint %s: cannot resolve %s at start (%s); will retry on "
                        "delivery", ep.name, host, exc)
    if problems:
        raise ConfigError(problems)
