"""Re-polling due purchases through Attesto: claim, fetch, apply, reschedule.

A claim (`relay.scheduler.claims`) keeps a row from being polled twice at once; every
result is stored in its own transaction (grouped with others), so a cancelled or
crashed poll leaves the row due again (after its claim lapses), never half-applied. A
failed call changes no state: the row is rescheduled with backoff.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from peewee import SQL

from relay.attesto.client import AttestoClient
from relay.core.domain import PurchaseView, Snapshot
from relay.core.errors import RelayError, UpstreamError
from relay.core.frozen import evolve
from relay.core.poll_policy import clock_input, next_poll_ms
from relay.core.rules import Rules
from relay.core.verify_snapshot import (
    AttestoResponseError,
    apple_snapshot,
    google_snapshot,
    reconcile_apple,
    reconcile_google,
)
from relay.runtime import Runtime
from relay.scheduler.claims import CLAIM_MS, Claims, claim_due
from relay.scheduler.ratelimit import TokenBucket
from relay.store import pipeline, statements
from relay.store.database import Store
from relay.store.input_log import fold_repeats
from relay.store.models import Purchase, database
from relay.store.pipeline import Applied

log = logging.getLogger("relay.repoll")

# Returns what Attesto says now (a Snapshot, observed at poll time), or None when
# Attesto gave a verdict with no usable state (e.g. not found). Raises UpstreamError
# (with retry_after_s on 429) when the call failed.
Fetcher = Callable[[PurchaseView], Awaitable[Snapshot | None]]

MAX_BACKOFF_MS = 6 * 3_600_000


class Outcome(StrEnum):
    """What one re-poll did (a metric label)."""

    CHANGED = "changed"  # new state or events stored
    UNCHANGED = "unchanged"  # Attesto agrees with the stored row
    EXPIRED_NO_RENEWAL = "expired_renewal_not_seen"  # Apple grace over, no renewal seen
    NO_STATE = "no_state"  # Attesto answered without a usable state (not found)
    FAILED = "failed"  # the call failed; rescheduled with backoff
    GONE = "gone"  # the row changed or vanished since it was claimed


def due_stats(now_ms: int, in_flight: Collection[int] = ()) -> tuple[int, int | None]:
    """(number of rows due now, next_poll_ms of the oldest due row); `in_flight`: the
    rowids of rows claimed in memory (`Claims.held_rowids`), which are not due."""
    where = Purchase.next_poll_ms <= now_ms
    if in_flight:  # SQLite only: in-memory claims exist when the process owns the file
        where &= SQL("rowid").not_in(sorted(in_flight))
    due = Purchase.select().where(where)
    oldest = (Purchase.select(Purchase.next_poll_ms).where(where)
              .order_by(Purchase.next_poll_ms).limit(1).scalar())
    return due.count(), oldest


def _reschedule_failure(platform: str, subject_key: str, now_ms: int, base_ms: int,
                        retry_after_ms: int | None) -> None:
    row = Purchase.get_or_none((Purchase.platform == platform)
                               & (Purchase.subject_key == subject_key))
    if row is None:
        return
    failures = row.poll_failures + 1
    delay = min(MAX_BACKOFF_MS, base_ms * 2 ** min(failures - 1, 16))
    if retry_after_ms is not None:
        delay = max(delay, retry_after_ms)
    Purchase.update(next_poll_ms=now_ms + delay, poll_failures=failures).where(
        (Purchase.platform == platform) & (Purchase.subject_key == subject_key)).execute()


_RESCHEDULE = ('UPDATE "purchase" SET "next_poll_ms" = {p}, "poll_failures" = 0 '
               'WHERE "platform" = {p} AND "subject_key" = {p}')
_RESET_FAILURES = ('UPDATE "purchase" SET "poll_failures" = 0 '
                   'WHERE "platform" = {p} AND "subject_key" = {p} AND "poll_failures" <> 0')


@dataclass(frozen=True, slots=True)
class Polled:
    """One poll result to store (`apply_polls`): the claimed row, what Attesto said
    (None: no usable state), and when."""

    view: PurchaseView
    snap: Snapshot | None
    runtime: Runtime
    now_ms: int


def apply_polls(items: list[Polled]) -> list[tuple[Outcome, Applied | None]]:
    """Apply poll results in the current transaction (store thread, `Store.write_many`):
    one read of the rows and one `apply_many` for all of them, as each alone would
    (distinct purchases; a purchase named twice is applied item by item)."""
    keys = [(i.view.platform, i.view.subject_key) for i in items]
    if len(set(keys)) != len(keys) or len({id(i.runtime) for i in items}) != 1:
        return [apply_polls([item])[0] for item in items]
    rules = items[0].runtime.rules
    now_ms = max(i.now_ms for i in items)
    rows = statements.load_purchases(keys)
    out: list[tuple[Outcome, Applied | None]] = []
    polled: list[tuple[int, Snapshot]] = []
    for n, item in enumerate(items):
        stored = rows.get(keys[n])
        if stored is None:
            out.append((Outcome.GONE, None))
        elif item.snap is None:
            out.append((Outcome.NO_STATE, None))
        else:
            out.append((Outcome.UNCHANGED, None))
            polled.append((n, _reconciled(item.snap, stored, rules)))
    if polled:
        applied = pipeline.apply_many([snap for _, snap in polled], rules, now_ms,
                                      known={keys[n]: rows[keys[n]] for n, _ in polled})
        repeated: list[tuple[str, str]] = []
        for (n, _), a in zip(polled, applied, strict=True):
            out[n] = (Outcome.CHANGED if a.events else Outcome.UNCHANGED, a)
            if not a.events:
                repeated.append(keys[n])
            after = a.purchase  # the row as the apply left it
            if after is None or (after.platform, after.subject_key) != keys[n]:
                after = statements.load_purchase(*keys[n])
            assert after is not None
            rows[keys[n]] = after
        # The same answers again: counted on their earlier rows (before the clock's
        # inputs below add rows of their own).
        fold_repeats(repeated)
    # The clock's say, on each row as the poll left it.
    lapsed = [(n, snap) for n, (outcome, _) in enumerate(out) if outcome is not Outcome.GONE
              and (snap := clock_input(rows[keys[n]], now_ms, rules.entitlement_policy))]
    if lapsed:
        applied = pipeline.apply_many([snap for _, snap in lapsed], rules, now_ms,
                                      known={keys[n]: rows[keys[n]] for n, _ in lapsed})
        for (n, _), a in zip(lapsed, applied, strict=True):
            out[n] = (Outcome.EXPIRED_NO_RENEWAL, a)
    # No events: still move the row to its next due time by policy. Events: the row's
    # next time is set; only its failure count is reset. One prepared statement each.
    _execute_many(_RESCHEDULE, [
        (next_poll_ms(rows[keys[n]], now_ms, rules.poll), *keys[n])
        for n, (outcome, _) in enumerate(out)
        if outcome in (Outcome.UNCHANGED, Outcome.NO_STATE)])
    _execute_many(_RESET_FAILURES, [keys[n] for n, (outcome, _) in enumerate(out)
                                    if outcome is Outcome.CHANGED])
    return out


def _execute_many(template: str, rows: list[tuple[Any, ...]]) -> None:
    if rows:
        database.cursor().executemany(template.replace("{p}", database.param), rows)


def _reconciled(snap: Snapshot, stored: PurchaseView, rules: Rules) -> Snapshot:
    if snap.platform == "apple":
        snap = reconcile_apple(snap, stored, rules.poll.apple_renewal_grace_s * 1000)
    else:
        # Only the purchase's current token may set it: a poll of the root token that
        # raced an upgrade (the row moved on to the new token meanwhile) does not.
        snap = reconcile_google(snap, stored, current=snap.latest_ref == (
            stored.latest_ref or stored.subject_key))
    if snap.source == "poll" and snap.subject_key == stored.subject_key:
        return snap  # as the fetcher made it: no copy
    return evolve(snap, source="poll", subject_key=stored.subject_key)


@dataclass
class Poller:
    """Runs re-polls: rate-limited, bounded concurrency, results stored one by one."""

    store: Store
    runtime: Runtime
    fetch: Fetcher
    bucket: TokenBucket
    on_outcome: Callable[[PurchaseView, Outcome], None] = lambda view, outcome: None
    _sem: asyncio.Semaphore = field(init=False)
    claims: Claims = field(init=False)

    def __post_init__(self) -> None:
        self._sem = asyncio.Semaphore(self.runtime.config.scheduler.max_concurrent_polls)
        self.claims = Claims(self.store)

    async def claim(self, now_ms: int, limit: int) -> list[PurchaseView]:
        """Claim up to `limit` due rows, oldest first, for `poll_one`."""
        return await self.claims.take(now_ms, limit)

    async def poll_one(self, view: PurchaseView) -> Outcome:
        async with self._sem:  # bounds the calls in flight; storing a result is outside
            await self.bucket.acquire()
            now_ms = self.runtime.now_ms()
            try:
                snap = await self.fetch(view) if self._needs_fetch(view) else None
            except RelayError as exc:
                failure: RelayError | None = exc
                retry_ms = exc.retry_after_s * 1000 if exc.retry_after_s else None
                if retry_ms:
                    self.bucket.pause(retry_ms / 1000)
            else:
                failure = None
        if failure is not None:
            base_ms = self.runtime.config.scheduler.poll_after_expiry_s * 100
            await self.store.write(lambda: _reschedule_failure(
                view.platform, view.subject_key, now_ms, max(base_ms, 30_000), retry_ms))
            self.claims.release(view)
            log.warning("re-poll failed platform=%s subject=%s code=%s", view.platform,
                        view.subject_key[:32], failure.code)
            self.on_outcome(view, Outcome.FAILED)
            return Outcome.FAILED
        outcome, applied = await self.store.write_many(
            apply_polls, Polled(view, snap, self.runtime, now_ms))
        self.claims.release(view)
        # Attesto agreeing with the row is routine (relay_repoll_total counts it): DEBUG.
        level = logging.DEBUG if outcome is Outcome.UNCHANGED else logging.INFO
        if log.isEnabledFor(level):
            log.log(level, "re-poll platform=%s subject=%s outcome=%s events=%d",
                    view.platform, view.subject_key[:32], outcome,
                    len(applied.events) if applied else 0)
        self.on_outcome(view, outcome)
        return outcome

    @staticmethod
    def _needs_fetch(view: PurchaseView) -> bool:
        return view.latest_ref is not None or view.platform == "google"

    async def run_due(self, limit: int) -> list[Outcome]:
        """Claim up to `limit` due rows and poll them; return the outcomes."""
        now_ms = self.runtime.now_ms()
        views = await self.claim(now_ms, limit)
        if not views:
            return []
        results = await asyncio.gather(*(self.poll_one(v) for v in views),
                                       return_exceptions=True)
        outcomes: list[Outcome] = []
        for view, result in zip(views, results, strict=True):
            if isinstance(result, BaseException):
                if isinstance(result, asyncio.CancelledError):
                    raise result
                log.error("re-poll crashed platform=%s subject=%s: %r", view.platform,
                          view.subject_key[:32], result)
                outcomes.append(Outcome.FAILED)
            else:
                outcomes.append(result)
        return outcomes


def attesto_fetcher(attesto: AttestoClient, runtime: Runtime) -> Fetcher:
    """Ask Attesto about a stored purchase: the newest Apple transaction or Google token."""

    async def fetch(view: PurchaseView) -> Snapshot | None:
        now_ms = runtime.now_ms()
        try:
            if view.platform == "apple":
                if not view.latest_ref:
                    return None
                verdict = await attesto.verify_apple(view.latest_ref, view.environment)
                return apple_snapshot(verdict.body, None, now_ms, "poll") \
                    if verdict.valid else None
            token = view.latest_ref or view.subject_key
            if not view.package_name or not view.product_id:
                log.warning("re-poll skipped: google row without package or product "
                            "subject=%s", view.subject_key[:32])
                return None
            verdict = await attesto.verify_google(view.package_name, view.product_id, token,
                                                  "product" if view.kind == "product"
                                                  else "subscription")
            if not verdict.valid:
                return None
            snap, _linked = google_snapshot(verdict.body, token, None, now_ms, "poll")
            return snap
        except AttestoResponseError as exc:
            raise UpstreamError(f"Attesto answered a body relay cannot read: {exc}",
                                code="attesto_bad_response") from None

    return fetch


__all__ = ["CLAIM_MS", "Fetcher", "Outcome", "Poller", "UpstreamError", "claim_due",
           "due_stats"]
