"""The outbox worker: claim due deliveries, POST them signed, record each attempt.

Owns the delivery ClientSession (SSRF-guarded resolver, no redirects, per-endpoint
timeouts) and the worker task; both live in `outbox_ctx`. SQL lives in `outbox_db`.
"""

from __future__ import annotations

import asyncio
import collections
import ipaddress
import logging
import random
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from aiohttp.abc import AbstractResolver

from relay import __version__, outbox_db
from relay.appkeys import RUNTIME_KEY, STORE_KEY
from relay.config import ConfigError
from relay.endpoints import Endpoint, build_endpoints, url_problem
from relay.outbox_db import Claimed, CycleResult, Outcome
from relay.retry_policy import Verdict, decide
from relay.runtime import Runtime
from relay.ssrf import GuardedResolver, Network, SsrfError, parse_allow_networks
from relay.store import Store
from relay.webhook_signing import sign_headers

log = logging.getLogger(__name__)

EXCERPT_BYTES = 256
ERROR_BACKOFF_S = 1.0  # wait after a failed cycle (store unavailable) before the next


class Outbox:
    """Delivers outbox rows; `wake()` (commit listener) makes it look for work at once."""

    def __init__(self, store: Store, runtime: Runtime, session: aiohttp.ClientSession,
                 endpoints: Mapping[str, Endpoint], *,
                 rand: Callable[[], float] = random.random) -> None:
        self._store = store
        self._runtime = runtime
        self._session = session
        self.endpoints = dict(endpoints)
        self._rand = rand
        cfg = runtime.config.outbox
        self._concurrency = cfg.concurrency
        self._per_endpoint = cfg.per_endpoint_concurrency
        self._claim_timeout_s = cfg.claim_timeout_s
        self._sweep_s = cfg.sweep_s
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._cycle_cond = asyncio.Condition()
        self._cycles_started = 0
        self._cycles_done = 0
        self._last_claimed = 0
        self._next_due_ms: int | None = None
        self._inflight: dict[int, Claimed] = {}
        self._per_ep: collections.Counter[str] = collections.Counter()
        self._tasks: set[asyncio.Task[Outcome]] = set()
        self._done: list[Outcome] = []
        self.task: asyncio.Task[None] | None = None
        self.delivered = 0  # counters for logs, metrics and the benchmark
        self.failed = 0

    # ---- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        """Restore paused endpoints, release held rows of active ones, start the task."""
        paused = await self._store.read(outbox_db.paused_endpoints)
        self._runtime.set_paused(frozenset(paused))
        for name, state in paused.items():
            log.warning("endpoint %s is %s since %d: its events are held until "
                        "`relay resume %s`", name, state.reason, state.since_ms, name)
        active = self.active_endpoints()
        released = await self._store.write(
            lambda: outbox_db.release_held(active, self._runtime.now_ms()))
        if released:
            log.info("released %d held deliveries of active endpoints", released)
        self.task = asyncio.create_task(self._run(), name="relay-outbox")

    async def stop(self) -> None:
        """Cancel the worker and its attempts; record what finished, release the rest."""
        inflight = list(self._inflight.values())
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
            self.task = None
        done, self._done = self._done, []
        recorded = {o.delivery_id for o in done}
        unfinished = [c for c in inflight if c.id not in recorded]
        now_ms = self._runtime.now_ms()

        def final() -> int:
            for o in done:
                outbox_db.record(o, now_ms)
            return outbox_db.release(unfinished)

        try:
            released = await self._store.write(final, notify=False)
        except Exception as exc:  # the leases expire on their own
            log.warning("could not release %d in-flight deliveries at stop: %s",
                        len(unfinished), exc)
        else:
            if released:
                log.info("released %d in-flight deliveries for the next start", released)

    def wake(self) -> None:
        self._wake.set()

    async def poke(self) -> None:
        """Run one full cycle that starts after this call (record, claim, dispatch)."""
        target = self._cycles_started + 1
        self.wake()
        async with self._cycle_cond:
            await self._cycle_cond.wait_for(lambda: self._cycles_done >= target)

    async def settle(self) -> None:
        """Return once nothing is in flight, nothing is unrecorded and nothing is due."""
        while True:
            await self.poke()
            if (not self._inflight and not self._done and self._last_claimed == 0
                    and self._cycles_started == self._cycles_done):
                return
            await self._idle.wait()

    # ---- state -------------------------------------------------------------------

    def active_endpoints(self) -> list[str]:
        paused = self._runtime.paused
        return [name for name, ep in self.endpoints.items()
                if ep.enabled and ep.can_sign and name not in paused]

    def in_flight(self, endpoint: str | None = None) -> int:
        return len(self._inflight) if endpoint is None else self._per_ep[endpoint]

    async def pause(self, name: str, reason: str = "paused", detail: str | None = None) -> int:
        """Hold `name`'s rows (now and for new events) until resume; survives restarts."""
        self._runtime.set_paused(self._runtime.paused | {name})
        held = await self._store.write(
            lambda: outbox_db.hold_endpoint(name, reason, detail, self._runtime.now_ms()))
        log.warning("endpoint %s %s: %d deliveries held", name, reason, held)
        return held

    async def resume(self, name: str) -> int:
        """Send `name`'s held rows again and route new events to it."""
        self._runtime.set_paused(self._runtime.paused - {name})
        active = name in self.active_endpoints()
        released = await self._store.write(
            lambda: outbox_db.resume_endpoint(name, self._runtime.now_ms(), active))
        log.info("endpoint %s resumed: %d held deliveries released", name, released)
        return released

    # ---- the worker --------------------------------------------------------------

    async def _run(self) -> None:
        try:
            while True:
                try:
                    async with asyncio.timeout(self._wait_s()):
                        await self._wake.wait()
                except TimeoutError:
                    pass
                self._wake.clear()
                if not await self._cycle():
                    await asyncio.sleep(ERROR_BACKOFF_S)  # store down: do not spin
        finally:
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _wait_s(self) -> float:
        if self._next_due_ms is None:
            return self._sweep_s
        due_in = (self._next_due_ms - self._runtime.now_ms()) / 1000
        return min(self._sweep_s, max(due_in, 0.0))

    async def _cycle(self) -> bool:
        self._cycles_started += 1
        number = self._cycles_started
        outcomes, self._done = self._done, []
        now_ms = self._runtime.now_ms()
        free = self._concurrency - len(self._inflight)
        wants: dict[str, int] = {}
        leases: dict[str, int] = {}
        for name in self.active_endpoints():
            wants[name] = max(0, min(free, self._per_endpoint - self._per_ep[name]))
            free -= wants[name]
            ep = self.endpoints[name]
            leases[name] = now_ms + int(max(self._claim_timeout_s, ep.timeout_s + 5) * 1000)
        skip_locked = not self._store.is_sqlite
        ok = True
        try:
            result = await self._store.write(
                lambda: outbox_db.cycle(outcomes, wants, now_ms, leases, skip_locked),
                notify=False)
        except Exception as exc:
            ok = False
            self._done[:0] = outcomes  # recorded next time; the leases keep the rows
            result = CycleResult()
            log.error("outbox cycle failed (%d outcomes kept for the next): %s",
                      len(outcomes), exc)
        finally:
            self._cycles_done = number
            async with self._cycle_cond:
                self._cycle_cond.notify_all()
        self._after(result)
        return ok

    def _after(self, result: CycleResult) -> None:
        for name in result.gone:
            self._runtime.set_paused(self._runtime.paused | {name})
            log.warning("endpoint %s answered 410 Gone: disabled, its events are held "
                        "until `relay resume %s`", name, name)
        for delivery_id in result.dead:
            log.warning("delivery %d is dead: retry schedule exhausted", delivery_id)
        if result.stale:
            log.info("%d attempt(s) finished after their claim was taken over", result.stale)
        self._next_due_ms = result.next_due_ms
        self._last_claimed = len(result.claimed)
        for claimed in result.claimed:
            self._dispatch(claimed)

    def _dispatch(self, c: Claimed) -> None:
        self._inflight[c.id] = c
        self._per_ep[c.endpoint] += 1
        self._idle.clear()
        task = asyncio.create_task(self._attempt(c), name=f"relay-delivery-{c.id}")
        self._tasks.add(task)
        task.add_done_callback(lambda t: self._finished(c, t))

    def _finished(self, c: Claimed, task: asyncio.Task[Outcome]) -> None:
        self._tasks.discard(task)
        del self._inflight[c.id]
        self._per_ep[c.endpoint] -= 1
        if not self._inflight:
            self._idle.set()
        if task.cancelled():
            return
        self._done.append(task.result())  # _attempt catches everything but cancellation
        self._wake.set()

    async def _attempt(self, c: Claimed) -> Outcome:
        ep = self.endpoints[c.endpoint]
        started_ms = self._runtime.now_ms()
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
            async with self._session.post(
                    ep.url, data=c.body, headers=headers, allow_redirects=False,
                    timeout=aiohttp.ClientTimeout(total=ep.timeout_s)) as resp:
                status = resp.status
                retry_after = resp.headers.get("Retry-After")
                raw = await resp.content.read(EXCERPT_BYTES)
                excerpt = raw.decode("utf-8", "replace")
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
        except Exception as exc:  # never lose the row to a bug: retry on schedule
            log.exception("delivery %d to %s: unexpected error", c.id, c.endpoint)
            error = f"internal error: {type(exc).__name__}"
        duration_ms = int((loop.time() - t0) * 1000)
        now_ms = self._runtime.now_ms()
        decision = decide(status, c.attempts + 1, ep.schedule, retry_after, now_ms / 1000,
                          self._rand)
        if decision.verdict == Verdict.DELIVERED:
            self.delivered += 1
            log.debug("delivery %d event %s to %s: %d in %d ms", c.id, c.event_id,
                      c.endpoint, status, duration_ms)
        else:
            self.failed += 1
            log.info("delivery %d event %s to %s attempt %d failed: %s; %s", c.id,
                     c.event_id, c.endpoint, c.attempts + 1, error, _next_step(decision))
        return Outcome(
            delivery_id=c.id, endpoint=c.endpoint, token=c.token, verdict=decision.verdict,
            next_attempt_ms=now_ms + int(decision.delay_s * 1000), started_ms=started_ms,
            duration_ms=duration_ms, status_code=status, error=error, excerpt=excerpt)


def _next_step(decision: Any) -> str:
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
            await resolver.resolve(host, port)
        except SsrfError as exc:
            problems.append(f"{source}: [[downstream]] #{index + 1} ({ep.name}) url refused "
                            f"by the SSRF guard ({exc.rule}): {exc}")
        except OSError as exc:
            log.warning("endpoint %s: cannot resolve %s at start (%s); will retry on "
                        "delivery", ep.name, host, exc)
    if problems:
        raise ConfigError(problems)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


OUTBOX_KEY = web.AppKey("outbox", Outbox)
# Tests map hostnames to addresses with their own resolver; the guard still wraps it.
RESOLVER_KEY = web.AppKey("outbox_resolver", AbstractResolver)


async def outbox_ctx(app: web.Application) -> AsyncIterator[None]:
    """Start the worker after the store opens; stop it (and release claims) before it closes."""
    runtime, store = app[RUNTIME_KEY], app[STORE_KEY]
    config = runtime.config
    endpoints = build_endpoints(config)
    allow = parse_allow_networks(config.outbox.allow_networks)
    resolver = GuardedResolver(allow, app.get(RESOLVER_KEY))
    session = delivery_session(resolver, config.outbox.concurrency)
    try:
        await check_hostnames(resolver, endpoints, allow, config.source)
        outbox = Outbox(store, runtime, session, endpoints)
        app[OUTBOX_KEY] = outbox
        store.add_commit_listener(outbox.wake)
        await outbox.start()
        log.info("outbox started: %d endpoint(s), %d active", len(endpoints),
                 len(outbox.active_endpoints()))
        yield
        await outbox.stop()
    finally:
        await session.close()
