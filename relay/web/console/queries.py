"""Store-thread reads behind the console pages, one `store.read` per page.

Questions the admin API or the verify API already answer are asked through their
functions (`delivery_admin`, `lookups`, `repoll`, `outbox_db`); only the per-minute
series are this module's own SQL (the index on inbox.received_ms; delivery_minute).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from relay.core.domain import PurchaseView
from relay.outbox import admin as delivery_admin
from relay.outbox import queue as outbox_db
from relay.scheduler.repoll import due_stats
from relay.store import lookups
from relay.store.models import database

MINUTE_MS = 60_000
HOUR_MS = 3_600_000
DELIVERIES_SHOWN = 100


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


def overview(now_ms: int, plot_since_ms: int) -> Overview:
    due, oldest_due = due_stats(now_ms)
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


def purchase_page(platform: str, subject_key: str, now_ms: int) -> PurchasePage | None:
    """The stored row, its newest deliveries and the events they relay (from the events
    table). Until the history of issue 18, events are found through their deliveries:
    an event no endpoint took, or whose delivered rows were pruned, is not listed."""
    view = lookups.purchase_view(platform, subject_key)
    if view is None:
        return None
    deliveries = delivery_admin.list_deliveries(
        delivery_admin.Filters(subject=f"{platform}:{subject_key}", limit=DELIVERIES_SHOWN),
        now_ms)
    events = lookups.events_by_id({d["event_id"] for d in deliveries})
    return PurchasePage(view, events, deliveries)
