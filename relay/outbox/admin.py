"""The admin's view and repair of the outbox: queue stats, listings, retry, recover, replay.

Every function runs on the store thread (inside `store.read` / `store.write`) and
returns plain JSON-ready dicts. Retry, recover and replay start the schedule over.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any

from peewee import Case, fn

from relay.core.domain import iso
from relay.core.rules import Route
from relay.store.models import Attempt, Delivery, EndpointHealth, Event

STATUSES = ("pending", "held", "delivered", "dead", "failed")  # failed: pending, retrying


def _row_json(d: dict[str, Any], now_ms: int) -> dict[str, Any]:
    return {
        "id": d["id"], "event_id": d["event_id"], "event_type": d["event_type"],
        "endpoint": d["endpoint"], "subject": d["subject"], "sequence": d["sequence"],
        "status": d["status"], "attempts": d["attempts"],
        "next_attempt_at": iso(d["next_attempt_ms"]) if d["status"] == "pending" else None,
        "in_flight": bool(d["claimed_until_ms"] and d["claimed_until_ms"] > now_ms),
        "last_status": d["last_status"], "last_error": d["last_error"],
        "created_at": iso(d["created_ms"]), "delivered_at": iso(d["delivered_ms"]),
    }


def _select() -> Any:
    return (Delivery
            .select(Delivery, Event.id.alias("event_id"), Event.type.alias("event_type"))
            .join(Event, on=(Delivery.event == Event.cursor)))


def endpoint_stats(now_ms: int) -> dict[str, dict[str, Any]]:
    """Per endpoint: counts of open rows by status, failing rows, oldest pending age."""
    out: dict[str, dict[str, Any]] = {}
    rows: Any = (Delivery
            .select(Delivery.endpoint, Delivery.status, fn.COUNT(Delivery.id).alias("n"),
                    fn.MIN(Delivery.created_ms).alias("oldest"),
                    fn.SUM(Case(None, [(Delivery.attempts > 0, 1)], 0)).alias("failing"))
            .where(Delivery.status.in_(("pending", "held", "dead")))
            .group_by(Delivery.endpoint, Delivery.status)
            .dicts())
    for r in rows:
        s = out.setdefault(r["endpoint"], {"pending": 0, "held": 0, "dead": 0, "failing": 0,
                                           "oldest_pending_age_s": None})
        s[r["status"]] = r["n"]
        if r["status"] in ("pending", "held"):
            age = max(0, now_ms - int(r["oldest"])) // 1000
            old = s["oldest_pending_age_s"]
            s["oldest_pending_age_s"] = age if old is None else max(old, age)
        if r["status"] == "pending":
            s["failing"] = int(r["failing"] or 0)
    return out


@dataclass(frozen=True, slots=True)
class Filters:
    status: str | None = None
    endpoint: str | None = None
    subject: str | None = None
    event_id: str | None = None
    before: int | None = None  # delivery id: page backwards from here
    limit: int = 50


# The distinct endpoints of the outbox, one index seek each (a loose index scan).
_ENDPOINT_NAMES = """
WITH RECURSIVE e(name) AS (
  SELECT MIN(endpoint) FROM delivery
  UNION ALL
  SELECT (SELECT MIN(endpoint) FROM delivery WHERE endpoint > e.name) FROM e
  WHERE e.name IS NOT NULL)
SELECT name FROM e WHERE name IS NOT NULL"""


def endpoint_names() -> list[str]:
    """Every endpoint with rows in the outbox (configured or not any more)."""
    db = Delivery._meta.database
    return [str(name) for (name,) in db.execute_sql(_ENDPOINT_NAMES).fetchall()]


def list_deliveries(f: Filters, now_ms: int) -> list[dict[str, Any]]:
    """Newest first; page with `before` = the last id seen."""
    q = _select()
    if f.status == "failed":
        q = q.where((Delivery.status == "pending") & (Delivery.attempts > 0))
    elif f.status:
        q = q.where(Delivery.status == f.status)
    if f.endpoint:
        q = q.where(Delivery.endpoint == f.endpoint)
    if f.subject:
        q = q.where(Delivery.subject == f.subject)
        if not f.endpoint:  # every endpoint there is: the (endpoint, subject) index serves
            q = q.where(Delivery.endpoint.in_(endpoint_names()))
    if f.event_id:
        q = q.where(Event.id == f.event_id)
    if f.before is not None:
        q = q.where(Delivery.id < f.before)
    return [_row_json(d, now_ms) for d in q.order_by(Delivery.id.desc()).limit(f.limit).dicts()]


def endpoint_health() -> dict[str, dict[str, Any]]:
    """Each endpoint's last delivered and last failed attempt (kept by the outbox)."""
    rows: Any = EndpointHealth.select().dicts()
    return {r["name"]: r for r in rows}


def get_delivery(delivery_id: int, now_ms: int) -> dict[str, Any] | None:
    """One delivery with its attempts (oldest first) and the event body it sends."""
    row = _select().where(Delivery.id == delivery_id).dicts().first()
    if row is None:
        return None
    out = _row_json(row, now_ms)
    out["history"] = [
        {"started_at": iso(a.started_ms), "duration_ms": a.duration_ms,
         "status_code": a.status_code, "error": a.error, "response_excerpt": a.response_excerpt}
        for a in Attempt.select().where(Attempt.delivery == delivery_id).order_by(Attempt.id)]
    body = Event.select(Event.body).where(Event.cursor == row["event"]).scalar()
    out["event"] = json.loads(body)
    return out


def _reopen(status: str, now_ms: int) -> dict[Any, Any]:
    return {Delivery.status: status, Delivery.attempts: 0, Delivery.next_attempt_ms: now_ms}


def retry_delivery(delivery_id: int, now_ms: int, active: Collection[str]) -> bool:
    """Send one row again now (held if its endpoint cannot send); False if unknown."""
    row = Delivery.get_or_none(Delivery.id == delivery_id)
    if row is None:
        return False
    status = "pending" if row.endpoint in active else "held"
    Delivery.update(_reopen(status, now_ms)).where(Delivery.id == delivery_id).execute()
    return True


def recover(since_ms: int, until_ms: int | None, endpoint: str | None, dry_run: bool,
            now_ms: int, active: Collection[str]) -> int:
    """Reopen dead and failing rows created in [since, until); return how many match."""
    where = ((Delivery.status == "dead")
             | ((Delivery.status == "pending") & (Delivery.attempts > 0)))
    where &= Delivery.created_ms >= since_ms
    if until_ms is not None:
        where &= Delivery.created_ms < until_ms
    if endpoint:
        where &= Delivery.endpoint == endpoint
    if dry_run:
        count: int = Delivery.select().where(where).count()
        return count
    reopened = 0
    for name in ([endpoint] if endpoint else _endpoints_where(where)):
        status = "pending" if name in active else "held"
        reopened += Delivery.update(_reopen(status, now_ms)).where(
            where & (Delivery.endpoint == name)).execute()
    return reopened


def _endpoints_where(where: Any) -> list[str]:
    return [r.endpoint for r in Delivery.select(Delivery.endpoint).where(where).distinct()]


@dataclass(frozen=True, slots=True)
class ReplayPage:
    matched: int
    enqueued: int
    last_cursor: int | None  # continue after this cursor; None when done


def replay_page(route: Route, subject: tuple[str, str] | None, since_ms: int | None,
                until_ms: int | None, after_cursor: int, batch: int, dry_run: bool,
                now_ms: int, active: bool) -> ReplayPage:
    """Queue one batch of matching events (in commit order) to `route` again."""
    q = Event.select().where(Event.cursor > after_cursor)
    if subject is not None:
        q = q.where((Event.platform == subject[0]) & (Event.subject_key == subject[1]))
    if since_ms is not None:
        q = q.where(Event.received_ms >= since_ms)
    if until_ms is not None:
        q = q.where(Event.received_ms < until_ms)
    events = list(q.order_by(Event.cursor).limit(batch))
    chosen = [e for e in events if route.matches(
        e.type, e.platform, json.loads(e.body).get("environment"))]
    if not dry_run and chosen:
        _upsert(route.name, chosen, "pending" if active else "held", now_ms)
    last = events[-1].cursor if len(events) == batch else None
    return ReplayPage(len(chosen), 0 if dry_run else len(chosen), last)


def _upsert(endpoint: str, events: Iterable[Event], status: str, now_ms: int) -> None:
    rows = [{"event": e.cursor, "endpoint": endpoint,
             "subject": f"{e.platform}:{e.subject_key}" if e.subject_key else e.id,
             "sequence": e.sequence or 0, "status": status, "attempts": 0,
             "next_attempt_ms": now_ms, "created_ms": now_ms} for e in events]
    Delivery.insert_many(rows).on_conflict(
        conflict_target=[Delivery.event, Delivery.endpoint],
        update={Delivery.status: status, Delivery.attempts: 0,
                Delivery.next_attempt_ms: now_ms}).execute()
