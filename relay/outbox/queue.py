"""The outbox worker's SQL: claim due rows in order, record attempts, pause and resume.

Every function runs on the store thread, inside the caller's `store.write` transaction.
A claim's token is its `claimed_until_ms`: a record whose token no longer matches
(the lease expired and another worker took the row) keeps its attempt, not its verdict.
The hot path (claim, record a success) is plain SQL valid on SQLite and PostgreSQL:
building it with peewee on every cycle cost more CPU than running it, and that CPU
competes with the event loop for the GIL.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from relay.core.frozen import slot_init
from relay.core.retry_policy import Verdict
from relay.store.models import Delivery, EndpointState

OPEN_STATUSES = ("pending", "held")  # rows that still block later sequences


@slot_init  # built per claimed row (store thread) and per attempt (loop): a cheaper __init__
@dataclass(frozen=True, slots=True)
class Claimed:
    id: int
    endpoint: str
    event_id: str
    body: bytes
    attempts: int  # before this attempt
    token: int  # the claimed_until_ms this claim set
    subject: str
    sequence: int
    created_ms: int = 0  # when the row was written: receive-to-delivered latency


@slot_init
@dataclass(frozen=True, slots=True)
class Outcome:
    delivery_id: int
    endpoint: str
    token: int
    verdict: Verdict
    next_attempt_ms: int
    started_ms: int
    duration_ms: int
    status_code: int | None
    error: str | None
    excerpt: str | None


@dataclass(slots=True)
class CycleResult:
    claimed: list[Claimed] = field(default_factory=list)
    gone: list[str] = field(default_factory=list)  # endpoints that answered 410 this cycle
    dead: list[int] = field(default_factory=list)
    stale: int = 0  # records whose claim had been taken over
    next_due_ms: int | None = None
    # endpoint_state as this transaction saw it (name: reason), after this cycle's 410s;
    # every process follows it, whoever paused or resumed.
    paused: dict[str, str] = field(default_factory=dict)


_CLAIM = """
SELECT d.id, d.attempts, d.subject, d.sequence, e.id, e.body, d.created_ms
FROM delivery AS d JOIN event AS e ON e.cursor = d.event_cursor
WHERE d.endpoint = {p} AND d.status = 'pending' AND d.next_attempt_ms <= {p}
  AND (d.claimed_until_ms IS NULL OR d.claimed_until_ms < {p})
  AND NOT EXISTS (SELECT 1 FROM delivery AS x
                  WHERE x.endpoint = d.endpoint AND x.subject = d.subject
                    AND x.sequence < d.sequence
                    AND x.status IN ('pending', 'held', 'unrouted'))
ORDER BY d.next_attempt_ms, d.id
LIMIT {p}"""


def _db() -> Any:
    return Delivery._meta.database


def _in(n: int) -> str:
    return "(" + ", ".join([_db().param] * n) + ")"


def claim(endpoint: str, limit: int, now_ms: int, lease_until_ms: int,
          skip_locked: bool = False) -> list[Claimed]:
    """Lease up to `limit` due rows of `endpoint` whose subject has no earlier open row."""
    if limit <= 0:
        return []
    db = _db()
    sql = _CLAIM.format(p=db.param)
    if skip_locked:  # PostgreSQL: several instances claim without waiting on each other
        sql += " FOR UPDATE OF d SKIP LOCKED"
    rows = db.execute_sql(sql, (endpoint, now_ms, now_ms, limit)).fetchall()
    if not rows:
        return []
    # next_attempt_ms moves to the lease end too: the next claim's index scan skips rows
    # in flight, and a row whose worker died comes due again when its lease runs out.
    db.execute_sql(f"UPDATE delivery SET claimed_until_ms = {db.param}, next_attempt_ms = "
                   f"{db.param} WHERE id IN {_in(len(rows))}",
                   (lease_until_ms, lease_until_ms, *(r[0] for r in rows)))
    return [Claimed(id=row_id, endpoint=endpoint, event_id=event_id,
                    body=body.encode("utf-8"), attempts=attempts, token=lease_until_ms,
                    subject=subject, sequence=sequence, created_ms=created_ms)
            for row_id, attempts, subject, sequence, event_id, body, created_ms in rows]


def hold_endpoint(name: str, reason: str, detail: str | None, now_ms: int) -> int:
    """Persist the pause, hold the endpoint's pending rows; return how many were held."""
    EndpointState.insert(name=name, reason=reason, detail=detail, since_ms=now_ms).on_conflict(
        conflict_target=[EndpointState.name],
        update={EndpointState.reason: reason, EndpointState.detail: detail,
                EndpointState.since_ms: now_ms}).execute()
    held: int = Delivery.update(status="held").where(
        (Delivery.endpoint == name) & (Delivery.status == "pending")).execute()
    return held


def release_held(names: Iterable[str], now_ms: int) -> int:
    """Turn held rows of active endpoints back to pending, due now; return how many.

    An endpoint paused in the database stays held, whatever the caller believes (another
    process may have paused it since this one last looked)."""
    names = list(names)
    if not names:
        return 0
    released: int = Delivery.update(status="pending", next_attempt_ms=now_ms).where(
        (Delivery.endpoint.in_(names)) & (Delivery.status == "held")
        & Delivery.endpoint.not_in(EndpointState.select(EndpointState.name))).execute()
    return released


def hold_pending(names: Sequence[str]) -> int:
    """Hold the pending rows of paused endpoints: rows routed by a process that had not yet
    seen the pause (claims in flight included, as `hold_endpoint` does)."""
    if not names:
        return 0
    db = _db()
    held: int = db.execute_sql(
        f"UPDATE delivery SET status = 'held' WHERE endpoint IN {_in(len(names))} "
        "AND status = 'pending'", tuple(names)).rowcount
    return held


def release_orphaned_claims(now_ms: int) -> int:
    """Claims left by a process that died (kill -9, power loss): due again now.

    Only for a store one process owns (SQLite); elsewhere claims expire with their lease."""
    released: int = Delivery.update(claimed_until_ms=None, next_attempt_ms=now_ms).where(
        (Delivery.status == "pending") & Delivery.claimed_until_ms.is_null(False)).execute()
    return released


def resume_endpoint(name: str, now_ms: int, active: bool) -> int:
    """Forget the pause; if the endpoint can send, release its held rows."""
    EndpointState.delete().where(EndpointState.name == name).execute()
    return release_held([name], now_ms) if active else 0


def paused_endpoints() -> dict[str, EndpointState]:
    return {s.name: s for s in EndpointState.select()}


def paused_reasons() -> dict[str, str]:
    """Every paused or gone endpoint and why: one plain read of a tiny, mostly empty table."""
    rows = _db().execute_sql("SELECT name, reason FROM endpoint_state").fetchall()
    return {str(name): str(reason) for name, reason in rows}


CHUNK = 100  # rows per multi-row statement: 600 bound values, under SQLite's 999


def _chunks(items: Sequence[Any]) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), CHUNK):
        yield items[i:i + CHUNK]


def record(outcomes: Sequence[Outcome], now_ms: int) -> tuple[dict[int, str], int]:
    """Store the attempts and, where the claim is still ours, their verdicts.

    Returns the new status of each failed row whose verdict was applied, and how many
    outcomes came too late (another claim owns the row). Successes, the common case,
    are written with one UPDATE per (status code, claim), not one per row.
    """
    if not outcomes:
        return {}, 0
    db = _db()
    for part in _chunks(outcomes):
        # One multi-row INSERT, not executemany: one statement step instead of one per
        # row (each step hands the GIL to the event loop and back).
        values = ", ".join([_in(6)] * len(part))
        db.execute_sql(
            "INSERT INTO attempt (delivery_id, started_ms, duration_ms, status_code, error, "
            f"response_excerpt) VALUES {values}",
            [v for o in part for v in (o.delivery_id, o.started_ms, o.duration_ms,
                                       o.status_code, o.error, o.excerpt)])
    stale = 0
    delivered: dict[tuple[int | None, int], list[int]] = {}
    for o in outcomes:
        if o.verdict == Verdict.DELIVERED:
            delivered.setdefault((o.status_code, o.token), []).append(o.delivery_id)
    for (code, token), ids in delivered.items():
        for part in _chunks(ids):
            # The token check leaves a row another claim took over (lease expired) alone.
            done = db.execute_sql(
                f"UPDATE delivery SET status = 'delivered', attempts = attempts + 1, "
                f"claimed_until_ms = NULL, last_status = {db.param}, last_error = NULL, "
                f"delivered_ms = {db.param} WHERE claimed_until_ms = {db.param} "
                f"AND id IN {_in(len(part))}", (code, now_ms, token, *part)).rowcount
            stale += len(part) - done
    applied: dict[int, str] = {}
    for o in outcomes:
        if o.verdict == Verdict.DELIVERED:
            continue
        row = (Delivery.select(Delivery.status, Delivery.attempts, Delivery.claimed_until_ms)
               .where(Delivery.id == o.delivery_id).first())
        if row is not None and row.claimed_until_ms == o.token:
            applied[o.delivery_id] = _record_failure(o, row.status, row.attempts, now_ms)
        else:
            stale += 1
    note_attempts(outcomes)
    return applied, stale


MINUTE_MS = 60_000


_COUNT_MINUTES = (
    "INSERT INTO delivery_minute (minute_ms, endpoint, delivered, failed) VALUES {rows} "
    "ON CONFLICT (minute_ms, endpoint) DO UPDATE SET "
    "delivered = delivery_minute.delivered + excluded.delivered, "
    "failed = delivery_minute.failed + excluded.failed")
_LAST_SUCCESS = (
    "INSERT INTO endpoint_health (name, last_success_ms) VALUES ({p}, {p}) "
    "ON CONFLICT (name) DO UPDATE SET last_success_ms = excluded.last_success_ms")
_LAST_ERROR = (
    "INSERT INTO endpoint_health (name, last_error_ms, last_error_status, last_error) "
    "VALUES ({p}, {p}, {p}, {p}) ON CONFLICT (name) DO UPDATE SET "
    "last_error_ms = excluded.last_error_ms, last_error_status = excluded.last_error_status, "
    "last_error = excluded.last_error")


def note_attempts(outcomes: Sequence[Outcome]) -> None:
    """Count the attempts per minute and endpoint, and keep each endpoint's last delivered
    and last failed attempt (the console shows both), whichever process sent them: a few
    plain upserts per cycle, not one per attempt."""
    minutes: dict[tuple[int, str], list[int]] = {}
    ok: dict[str, int] = {}
    failed: dict[str, Outcome] = {}
    for o in outcomes:
        delivered = o.verdict == Verdict.DELIVERED
        counts = minutes.setdefault((o.started_ms // MINUTE_MS * MINUTE_MS, o.endpoint), [0, 0])
        counts[0 if delivered else 1] += 1
        if delivered:
            ok[o.endpoint] = max(ok.get(o.endpoint, 0), o.started_ms + o.duration_ms)
        elif o.endpoint not in failed or o.started_ms >= failed[o.endpoint].started_ms:
            failed[o.endpoint] = o
    if not minutes:
        return
    db = _db()
    db.execute_sql(_COUNT_MINUTES.format(rows=", ".join([_in(4)] * len(minutes))),
                   [v for (m, e), (d, f) in minutes.items() for v in (m, e, d, f)])
    for name, at_ms in ok.items():
        db.execute_sql(_LAST_SUCCESS.format(p=db.param), (name, at_ms))
    for name, o in failed.items():
        db.execute_sql(_LAST_ERROR.format(p=db.param),
                       (name, o.started_ms + o.duration_ms, o.status_code,
                        (o.error or f"HTTP {o.status_code}")[:500]))


def _record_failure(o: Outcome, status: str, attempts: int, now_ms: int) -> str:
    values: dict[str, object] = {
        "attempts": attempts + 1, "claimed_until_ms": None,
        "last_status": o.status_code, "last_error": o.error,
    }
    if o.verdict == Verdict.GONE:
        hold_endpoint(o.endpoint, "gone", f"HTTP 410 Gone from {o.endpoint}", now_ms)
        values.update(status="held", next_attempt_ms=now_ms)
    elif status == "held":  # paused while in flight: keep it for the resume
        values.update(next_attempt_ms=now_ms)
    elif o.verdict == Verdict.DEAD:
        values.update(status="dead")
    else:
        values.update(status="pending", next_attempt_ms=o.next_attempt_ms)
    Delivery.update(**values).where(Delivery.id == o.delivery_id).execute()
    return str(values.get("status", status))


def release(claims: Sequence[Claimed], now_ms: int) -> int:
    """Give back leases not used (shutdown, pause, 410): the rows are due again at once."""
    by_token: dict[int, list[int]] = {}
    for c in claims:
        by_token.setdefault(c.token, []).append(c.id)
    released = 0
    for token, ids in by_token.items():
        for part in _chunks(ids):
            released += Delivery.update(claimed_until_ms=None, next_attempt_ms=now_ms).where(
                Delivery.id.in_(list(part)) & (Delivery.claimed_until_ms == token)).execute()
    return released


def next_due_ms(endpoints: Sequence[str], now_ms: int) -> int | None:
    """The earliest future retry among `endpoints`' pending rows (for the worker's timer)."""
    if not endpoints:
        return None
    db = _db()
    (value,) = db.execute_sql(
        f"SELECT MIN(next_attempt_ms) FROM delivery WHERE status = 'pending' "
        f"AND next_attempt_ms > {db.param} AND endpoint IN {_in(len(endpoints))}",
        (now_ms, *endpoints)).fetchone()
    return int(value) if value is not None else None


def cycle(outcomes: Sequence[Outcome], wants: Mapping[str, int], now_ms: int,
          lease_until_ms: Mapping[str, int], skip_locked: bool = False,
          releases: Sequence[Claimed] = (), unhold: Sequence[str] = (),
          sweep: bool = False) -> CycleResult:
    """One worker turn in one transaction: record finished attempts, release, claim more.

    `wants` maps every endpoint the caller believes active to how many rows it may take
    now (0 when full). An endpoint paused in `endpoint_state` is never claimed, whatever
    the caller believes: another process may have paused it or seen its 410. Its pending
    rows (routed by a process that had not seen the pause yet) are held: those of the
    endpoints in `wants` on every cycle, those of every paused endpoint on a `sweep`.
    `unhold`: endpoints whose resume by another process the caller has learned of; their
    held rows are released (rows routed as held before it learned).
    """
    result = CycleResult()
    release(releases, now_ms)
    applied, result.stale = record(outcomes, now_ms)
    for o in outcomes:
        status = applied.get(o.delivery_id)
        if o.verdict == Verdict.GONE and status is not None and o.endpoint not in result.gone:
            result.gone.append(o.endpoint)
        if status == "dead":
            result.dead.append(o.delivery_id)
    result.paused = paused = paused_reasons()  # after record(): this cycle's 410s included
    if paused:
        hold_pending([name for name in paused
                      if name not in result.gone and (sweep or name in wants)])
    release_held(unhold, now_ms)  # never those paused again meanwhile
    active = [name for name in wants if name not in paused]
    for name in active:
        result.claimed.extend(claim(name, wants[name], now_ms, lease_until_ms[name],
                                    skip_locked))
    result.next_due_ms = next_due_ms(active, now_ms)
    return result
