"""`GET /metrics` (metrics token or admin token): reads the queue gauges from the store on
every scrape, sets them, and answers relay/metrics.py's exposition.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp import web
from peewee import fn
from prometheus_client import CONTENT_TYPE_LATEST

from relay.metrics import Metrics, exposition
from relay.scheduler.repoll import due_stats
from relay.store.models import Delivery
from relay.web.appkeys import METRICS_KEY, RUNTIME_KEY, SCHEDULER_KEY, STORE_KEY
from relay.web.auth import check_metrics_token


@dataclass(frozen=True, slots=True)
class QueueFigures:
    """What one scrape reads from the store."""

    depth: dict[tuple[str, str], int]  # (endpoint, status) -> rows
    oldest_ms: dict[str, int]  # endpoint -> created_ms of its oldest pending/held row
    due: int
    oldest_due_ms: int | None


def read_queue_figures(now_ms: int, in_flight: frozenset[int] = frozenset()) -> QueueFigures:
    """Runs on the store thread: outbox depth per endpoint and status, the due queue."""
    depth: dict[tuple[str, str], int] = {}
    oldest: dict[str, int] = {}
    rows: Any = (Delivery
            .select(Delivery.endpoint, Delivery.status, fn.COUNT(Delivery.id).alias("n"),
                    fn.MIN(Delivery.created_ms).alias("oldest"))
            .where(Delivery.status.in_(("pending", "held", "dead")))
            .group_by(Delivery.endpoint, Delivery.status)
            .tuples())
    for row in rows:
        endpoint, status, count, first_ms = str(row[0]), str(row[1]), row[2], row[3]
        depth[(endpoint, status)] = int(count)
        if status in ("pending", "held"):
            oldest[endpoint] = min(int(first_ms), oldest.get(endpoint, int(first_ms)))
    due, oldest_due = due_stats(now_ms, in_flight)
    return QueueFigures(depth, oldest, due, oldest_due)


def publish(metrics: Metrics, figures: QueueFigures, endpoints: list[str], now_ms: int) -> None:
    """Set the scrape-time gauges; endpoints with nothing queued read 0, not absent."""
    metrics.outbox_depth.clear()
    metrics.outbox_oldest.clear()
    names = sorted(set(endpoints) | {e for e, _ in figures.depth})
    for name in names:
        for status in ("pending", "held", "dead"):
            metrics.outbox_depth.labels(name, status).set(figures.depth.get((name, status), 0))
        first = figures.oldest_ms.get(name)
        metrics.outbox_oldest.labels(name).set(
            0 if first is None else max(0, now_ms - first) / 1000)
    metrics.due_queue.set(figures.due)
    metrics.due_overdue.set(
        0 if figures.oldest_due_ms is None else max(0, now_ms - figures.oldest_due_ms) / 1000)


async def handle_metrics(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME_KEY]
    check_metrics_token(runtime.config, request)
    metrics = request.app[METRICS_KEY]
    now_ms = runtime.now_ms()
    in_flight = request.app[SCHEDULER_KEY].in_flight(now_ms)
    figures = await request.app[STORE_KEY].read(lambda: read_queue_figures(now_ms, in_flight))
    publish(metrics, figures, [d.name for d in runtime.config.downstream], now_ms)
    body = exposition(metrics)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def routes() -> list[web.RouteDef]:
    return [web.get("/metrics", handle_metrics)]
