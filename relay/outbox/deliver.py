"""One delivery attempt over HTTP: sign, POST (no redirects), judge; and the session it uses.

No SQL here: the worker (`outbox`) claims and records. The session's resolver is the
SSRF guard, so a name that resolves to a refused address fails at connect time.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import random
from collections.abc import Callable, Mapping
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
    try:
        headers = sign_headers(c.event_id, started_ms // 1000, c.body, ep.hmac_keys,
                               ep.ed25519_keys)
        headers["Content-Type"] = "application/json"
        async with session.post(ep.url, data=c.body, headers=headers, allow_redirects=False,
                                timeout=_timeout(ep.timeout_s)) as resp:
            status = resp.status
            retry_after = resp.headers.get("Retry-After")
            excerpt = (await resp.content.read(EXCERPT_BYTES)).decode("utf-8", "replace")
            if 300 <= status < 400:
                location = resp.headers.get("Location", "")[:200]
                error = f"redirect not followed: HTTP {status} to {location!r}"
            elif not 200 <= status < 300:
                error = f"HTTP {status}"
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


@functools.lru_cache(maxsize=64)
def _timeout(seconds: float) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(total=seconds)


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
    """The deliveries' own session: guarded DNS, no cookies, timeouts set per request."""
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
