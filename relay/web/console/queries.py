"""Store-thread reads behind the console pages, one `store.read` per page.

Questions the admin API or the verify API already answer are asked through their
functions (`delivery_admin`, `lookups`, `repoll`, `outbox_db`; a purchase's history, its
transactions and explain through `relay.store.history` and `relay.store.ledger`, as the
history routes and `relay explain` do); only the per-minute series are this module's own
SQL (the index on inbox.received_ms; delivery_minute).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from relay.core.domain import PurchaseView, entitlement_keys
from relay.core.explain import Explanation
from relay.core.history import InputView
from relay.core.ledger import LedgerEntry
from relay.core.rules import Rules
from relay.outbox import admin as delivery_admin
from relay.outbox import queue as outbox_db
from relay.scheduler.repoll import due_stats
from relay.store import history, ledger, lookups
from relay.store.models import database

MINUTE_MS = 60_000
HOUR_MS = 3_600_000
DELIVERIES_SHOWN = 100
TRANSACTIONS_SHOWN = 100


@dataclass(frozen=True, slots=True)
class Overview:
    stats: dict[str, dict[str, Any]]  # delivery_admin.endpoint_stats
    paused: dict[str, Any]  # outbox_db.paused_endpoints
    health: dict[str, dict[str, Any]]  # delivery_admin.endpoint_health
    due: int
    oldest_due_ms: int | None
    accepted_last_hour: int
    webhooks_per_minute: dict[int, int]  # minute start (ms) -> webhooks stored
    attempts_per_minute: dict[int, tuple[int, int]]  # minute start -> (delivered, failed)


def _per_minute(sql: str, since_ms: int, until_ms: int) -> list[tuple[Any, ...]]:
    text = sql.format(p=database.param)
    return [tuple(r) for r in database.execute_sql(text, (since_ms, until_ms)).fetchall()]


def webhooks_per_minute(since_ms: int, until_ms: int) -> dict[int, int]:
    """Webhooks stored in the inbox per minute (covering index on inbox.received_ms)."""
    rows = _per_minute("SELECT received_ms / 60000, COUNT(*) FROM inbox WHERE received_ms "
                       ">= {p} AND received_ms < {p} GROUP BY received_ms / 60000",
                       since_ms, until_ms)
    return {int(m) * MINUTE_MS: int(n) for m, n in rows}


def attempts_per_minute(since_ms: int, until_ms: int) -> dict[int, tuple[int, int]]:
    """Delivery attempts per minute, all endpoints: (delivered, failed) (delivery_minute)."""
    rows = _per_minute("SELECT minute_ms, SUM(delivered), SUM(failed) FROM delivery_minute "
                       "WHERE minute_ms >= {p} AND minute_ms < {p} GROUP BY minute_ms",
                       since_ms, until_ms)
    return {int(m): (int(ok), int(bad)) for m, ok, bad in rows}


def overview(now_ms: int, plot_since_ms: int,
             in_flight: frozenset[int] = frozenset()) -> Overview:
    due, oldest_due = due_stats(now_ms, in_flight)
    until = now_ms + MINUTE_MS
    return Overview(
        stats=delivery_admin.endpoint_stats(now_ms),
        paused=outbox_db.paused_endpoints(),
        health=delivery_admin.endpoint_health(),
        due=due, oldest_due_ms=oldest_due,
        accepted_last_hour=_count_inbox(now_ms - HOUR_MS, until),
        webhooks_per_minute=webhooks_per_minute(plot_since_ms, until),
        attempts_per_minute=attempts_per_minute(plot_since_ms, until))


def _count_inbox(since_ms: int, until_ms: int) -> int:
    rows = _per_minute("SELECT COUNT(*) FROM inbox WHERE received_ms >= {p} "
                       "AND received_ms < {p}", since_ms, until_ms)
    return int(rows[0][0])


@dataclass(frozen=True, slots=True)
class EndpointPage:
    stats: dict[str, dict[str, Any]]
    paused: dict[str, Any]
    health: dict[str, Any] | None
    deliveries: list[dict[str, Any]]


def endpoint_page(name: str, filters: delivery_admin.Filters, now_ms: int) -> EndpointPage:
    return EndpointPage(
        stats=delivery_admin.endpoint_stats(now_ms), paused=outbox_db.paused_endpoints(),
        health=delivery_admin.endpoint_health().get(name),
        deliveries=delivery_admin.list_deliveries(filters, now_ms))


@dataclass(frozen=True, slots=True)
class PurchasePage:
    purchase: PurchaseView
    events: list[dict[str, Any]] = field(default_factory=list)
    deliveries: list[dict[str, Any]] = field(default_factory=list)
    inputs: list[InputView] = field(default_factory=list)  # a page of its history
    more_inputs: bool = False  # the history goes on after this page
    transactions: list[LedgerEntry] = field(default_factory=list)  # the newest
    more_transactions: bool = False  # older ones are not shown
    explained: list[Explanation] = field(default_factory=list)  # its user, its keys


def purchase_page(platform: str, subject_key: str, now_ms: int, rules: Rules,
                  after: int = 0, inputs: int = 50) -> PurchasePage | None:
    """The stored row, its newest deliveries and the events they relay (from the events
    table: an event no endpoint took, or whose delivered rows were pruned, is not listed;
    the history names every input's events), `inputs` of its history after the cursor
    `after`, its newest transactions, and explain for its user and each key its product
    grants (none without a user)."""
    view = lookups.purchase_view(platform, subject_key)
    if view is None:
        return None
    deliveries = delivery_admin.list_deliveries(
        delivery_admin.Filters(subject=f"{platform}:{subject_key}", limit=DELIVERIES_SHOWN),
        now_ms)
    events = lookups.events_by_id({d["event_id"] for d in deliveries})
    page = history.inputs_page(platform, subject_key, after, inputs + 1)
    txns = ledger.of_purchase(platform, subject_key, newest=TRANSACTIONS_SHOWN + 1)
    keys = entitlement_keys(rules.entitlements, view.product_id, view.base_plan_id)
    user = view.user_id
    explained = [history.explain(user, k, rules, now_ms) for k in keys] if user else []
    return PurchasePage(view, events, deliveries, page[:inputs], len(page) > inputs,
                        txns[-TRANSACTIONS_SHOWN:], len(txns) > TRANSACTIONS_SHOWN, explained)


def purchase_input(platform: str, subject_key: str, input_id: int) -> InputView | None:
    """One input of the purchase's history with its exact body (the history route's
    `?raw=1` page of one, starting just before it)."""
    found = history.inputs_page(platform, subject_key, input_id - 1, 1, raw=True)
    return found[0] if found and found[0].id == input_id else None


@dataclass(frozen=True, slots=True)
class UserPage:
    purchases: list[PurchaseView]  # every purchase bound to the user, or verified by it
    explained: list[Explanation]  # every key [entitlements] names


def user_page(user_id: str, rules: Rules, now_ms: int) -> UserPage:
    """What `GET /v1/users/{id}/purchases` and `relay explain USER` answer."""
    return UserPage(history.purchases_ever(user_id),
                    history.explain_all(user_id, rules, now_ms))
