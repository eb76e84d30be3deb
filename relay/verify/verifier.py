"""Verify through Attesto, then apply: the one service behind `/v1` and `/api/iap`.

One verify = one Attesto call, then ONE store write that resolves the row, applies the
snapshot through `pipeline.apply` (row + events + outbox) and reads the user's
entitlements, so the answer reflects exactly what was committed.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from relay.attesto.client import AttestoClient, Verdict
from relay.core.domain import (
    Entitlement,
    PurchaseView,
    Snapshot,
    entitlement_keys,
    is_entitled,
)
from relay.core.errors import RateLimitedError, RelayError, UpstreamError, UpstreamTimeoutError
from relay.core.frozen import slot_init
from relay.core.verify_snapshot import (
    AttestoResponseError,
    apple_snapshot,
    google_snapshot,
)
from relay.metrics import Metrics
from relay.runtime import Runtime
from relay.store import lookups
from relay.store.database import Store
from relay.verify.writes import VerifyWrite, apply_verifies

log = logging.getLogger("relay.verification")

RESTORE_CONCURRENCY = 8


@slot_init
@dataclass(frozen=True, slots=True)
class AppleItem:
    transaction_id: str
    environment: str | None = None
    product_id: str | None = None  # informational: grants follow the product Attesto reports


@slot_init
@dataclass(frozen=True, slots=True)
class GoogleItem:
    package_name: str
    product_id: str
    purchase_token: str
    kind: str | None = None  # subscription | product; None: the catalogue, else try both


Item = AppleItem | GoogleItem


@slot_init
@dataclass(frozen=True, slots=True)
class Outcome:
    """One verify's answer: Attesto's verdict and, when valid, the stored purchase."""

    valid: bool
    ref: str  # Apple transactionId / Google purchase token, as the caller sent it
    purchase: PurchaseView | None = None
    granted: tuple[str, ...] = ()  # entitlement keys this purchase grants now
    entitlements: tuple[Entitlement, ...] = ()  # the user's, after the call
    error: str | None = None  # Attesto's code when valid is false
    message: str | None = None
    events: tuple[str, ...] = ()

    reason: str | None = None  # why it grants nothing: Attesto's code, or relay's


@dataclass(frozen=True, slots=True)
class ItemResult:
    index: int
    item: Item
    outcome: Outcome | None = None
    error: RelayError | None = None


class Verifier:
    """Built per request from the app's runtime, store and Attesto client (cheap)."""

    def __init__(self, runtime: Runtime, store: Store, attesto: AttestoClient,
                 metrics: Metrics | None = None) -> None:
        self.runtime = runtime
        self.store = store
        self.attesto = attesto
        self.metrics = metrics

    async def verify(self, user_id: str, item: Item, *, source: str = "verify",
                     request_id: str | None = None, with_entitlements: bool = True) -> Outcome:
        """Verify one purchase for `user_id` and apply it; RelayError on failure.

        Counted in relay_verify_total{platform, outcome}: valid, invalid, or the error code."""
        label = "error"
        try:
            outcome = await self._verify(user_id, item, source, request_id, with_entitlements)
            label = "valid" if outcome.valid else "invalid"
            return outcome
        except RelayError as exc:
            label = exc.code
            raise
        finally:
            if self.metrics is not None:
                self.metrics.verifies.labels(_platform(item), label).inc()

    async def _verify(self, user_id: str, item: Item, source: str, request_id: str | None,
                      with_entitlements: bool) -> Outcome:
        if isinstance(item, AppleItem):
            verdict = await self.attesto.verify_apple(item.transaction_id, item.environment,
                                                      request_id=request_id)
            ref = item.transaction_id
        else:
            verdict = await self._verify_google(item, request_id)
            ref = item.purchase_token
        now = self.runtime.now_ms()
        rules = self.runtime.rules
        if not verdict.valid:
            log.info("verify %s user=%s -> valid:false %s request_id=%s", _platform(item),
                     user_id, verdict.error, request_id or "-")
            ents = (await self.store.read(lambda: lookups.user_entitlements(user_id, rules, now))
                    if with_entitlements else [])
            return Outcome(False, ref, entitlements=tuple(ents), error=verdict.error,
                           message=verdict.message, reason=verdict.error)
        snap, linked = _snapshot(item, verdict, user_id, now, source)
        applied, ents = await self.store.write_many(
            apply_verifies, VerifyWrite(snap, linked, rules, now, with_entitlements))
        view = applied.purchase
        assert view is not None
        keys = entitlement_keys(rules.entitlements, view.product_id, view.base_plan_id)
        granted = keys if is_entitled(view, now, rules.entitlement_policy) else ()
        reason = (None if granted else
                  "purchase_not_active" if keys else "no_entitlement_mapping")
        events = tuple(e.type for e in applied.events)
        if log.isEnabledFor(logging.INFO):
            log.info("verify %s user=%s subject=%s state=%s events=%s request_id=%s",
                     view.platform, user_id, _short(view.subject_key), view.state,
                     ",".join(events) or "-", request_id or "-")
        return Outcome(True, ref, view, tuple(granted), tuple(ents), events=events,
                       reason=reason)

    async def _verify_google(self, item: GoogleItem, request_id: str | None) -> Verdict:
        kinds = [item.kind] if item.kind else self._google_kinds(item.product_id)
        verdict: Verdict | None = None
        for kind in kinds:
            verdict = await self.attesto.verify_google(item.package_name, item.product_id,
                                                       item.purchase_token, kind,
                                                       request_id=request_id)
            if verdict.valid or verdict.error != "PURCHASE_NOT_FOUND":
                break
        assert verdict is not None
        return verdict

    def _google_kinds(self, product_id: str) -> list[str]:
        for product in self.runtime.config.products:
            if product.id == product_id:
                return ["subscription" if product.type == "subscription" else "product"]
        return ["subscription", "product"]

    async def restore(self, user_id: str, items: list[Item], *,
                      request_id: str | None = None,
                      budget: Callable[[float], Awaitable[bool]] | None = None,
                      timeout_s: float | None = None) -> tuple[list[ItemResult],
                                                               list[Entitlement]]:
        """Verify every item (bounded concurrency); per item an outcome or an error.

        `budget(deadline)` pays for each item after the first (a token of the caller's;
        False: none before the deadline, the item is `rate_limited`, not sent to Attesto).
        Items not answered within `timeout_s` are `restore_timeout`. Raises the first
        error when no item got an answer from Attesto at all, so a caller retries an
        outage instead of reading it as "nothing to restore".
        """
        slots = asyncio.Semaphore(RESTORE_CONCURRENCY)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (timeout_s if timeout_s is not None else math.inf)

        async def one(index: int, item: Item) -> ItemResult:
            async with slots:
                if index and budget is not None and not await budget(deadline):
                    return ItemResult(index, item, error=RateLimitedError(
                        "this caller's budget is spent; retry the item later"))
                try:
                    outcome = await self.verify(user_id, item, source="restore",
                                                request_id=request_id, with_entitlements=False)
                except RelayError as exc:
                    return ItemResult(index, item, error=exc)
                return ItemResult(index, item, outcome)

        tasks = [asyncio.create_task(one(i, it)) for i, it in enumerate(items)]
        try:
            await asyncio.wait(tasks, timeout=max(0.0, deadline - loop.time())
                               if timeout_s is not None else None)
        finally:
            for task in tasks:
                task.cancel()  # late items (and all of them if the caller is cancelled)
            await asyncio.gather(*tasks, return_exceptions=True)
        results = [task.result() if not task.cancelled() else ItemResult(
                       i, item, error=UpstreamTimeoutError(
                           f"the restore did not finish within {timeout_s:g} s",
                           code="restore_timeout"))
                   for i, (task, item) in enumerate(zip(tasks, items, strict=True))]
        if results and all(r.error is not None and r.error.status >= 500 for r in results):
            raise results[0].error  # type: ignore[misc]
        now = self.runtime.now_ms()
        rules = self.runtime.rules
        ents = await self.store.read(lambda: lookups.user_entitlements(user_id, rules, now))
        return results, ents

    async def entitlements(self, user_id: str) -> list[Entitlement]:
        now, rules = self.runtime.now_ms(), self.runtime.rules
        return await self.store.read(lambda: lookups.user_entitlements(user_id, rules, now))

    async def purchase(self, platform: str, subject_key: str) -> PurchaseView | None:
        return await self.store.read(lambda: lookups.purchase_view(platform, subject_key))

    async def app_user_id(self, user_id: str) -> str:
        now = self.runtime.now_ms()
        return await self.store.write(lambda: lookups.app_user_id_for(user_id, now))


def _platform(item: Item) -> str:
    return "apple" if isinstance(item, AppleItem) else "google"


def _short(key: str) -> str:
    """Subject keys in logs: Apple ids whole, Google tokens shortened (they are long)."""
    return key if len(key) <= 24 else f"{key[:12]}…{key[-6:]}"


def _snapshot(item: Item, verdict: Verdict, user_id: str, now: int,
              source: str) -> tuple[Snapshot, str | None]:
    try:
        if isinstance(item, AppleItem):
            return apple_snapshot(verdict.body, user_id, now, source), None
        return google_snapshot(verdict.body, item.purchase_token, user_id, now, source)
    except AttestoResponseError as exc:
        raise UpstreamError(f"Attesto's verify answer is malformed: {exc}",
                            code="attesto_bad_response") from None
