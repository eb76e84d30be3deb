"""Numbered schema migrations and the schema version check.

Each step runs in its own transaction and bumps `meta.schema_version`. A step that
alters a table created by an earlier step must freeze that earlier definition here
rather than use the live model, so an old database always migrates the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from peewee import Database

from relay.store.models import (
    SCHEMA_VERSION,
    AppUser,
    Attempt,
    ConsoleSession,
    ConsoleThrottle,
    Delivery,
    DeliveryMinute,
    EndpointHealth,
    EndpointState,
    Event,
    Inbox,
    InputLog,
    Lease,
    Ledger,
    Meta,
    Purchase,
)

log = logging.getLogger("relay.migrations")


class SchemaError(Exception):
    """The database schema is newer than this code, or not migrated and auto_migrate is off."""


def _m1_core(db: Database) -> None:
    """Purchases, inbox, events and the outbox."""
    db.create_tables([Meta, Purchase, Inbox, Event, Delivery])


def _m2_attempts_users_leases(db: Database) -> None:
    """Delivery attempts, appUserId bindings and job leases."""
    db.create_tables([Attempt, AppUser, Lease])


def _m3_purchase_latest_ref_index(db: Database) -> None:
    """Index purchases by their newest reference (a Google upgrade's token finds its row)."""
    db.execute_sql("CREATE INDEX IF NOT EXISTS purchase_platform_latest_ref "  # type: ignore[no-untyped-call]
                   "ON purchase (platform, latest_ref)")


def _m4_endpoint_state(db: Database) -> None:
    """Paused and disabled (410) downstream endpoints."""
    db.create_tables([EndpointState])


def _m5_delivery_claim_index(db: Database) -> None:
    """Index the outbox claim's exact order: (endpoint, status, next_attempt_ms, id).

    PostgreSQL could not stop the claim at its LIMIT with (status, next_attempt_ms): rows
    due at the same millisecond were sorted by id first, so every claim read the whole
    backlog (about 29 ms per claim at 20,000 pending rows, under the write lock)."""
    db.execute_sql("CREATE INDEX IF NOT EXISTS delivery_claim "  # type: ignore[no-untyped-call]
                   "ON delivery (endpoint, status, next_attempt_ms, id)")


def _m6_purchase_period_pending(db: Database) -> None:
    """`purchase.period_pending`: a Google renewal announced, its expiry not yet read."""
    if "period_pending" not in {c.name for c in db.get_columns("purchase")}:
        db.execute_sql("ALTER TABLE purchase ADD COLUMN period_pending "  # type: ignore[no-untyped-call]
                       "BOOLEAN NOT NULL DEFAULT FALSE")


def _m7_input_log(db: Database) -> None:
    """The input log, and what the lifecycle needs on a purchase: the Apple grace end, the
    latest transaction's start, a Google void awaiting its re-fetch."""
    have = {c.name for c in db.get_columns("purchase")}
    for column in ("grace_expires_ms", "period_start_ms", "voided_ms"):
        if column not in have:
            db.execute_sql(f"ALTER TABLE purchase ADD COLUMN {column} BIGINT")  # type: ignore[no-untyped-call]
    db.create_tables([InputLog])


_BASELINE_BATCH = 500


def _m8_input_log_backfill(db: Database) -> None:
    """Seed the input log with what the store already holds: every inbox row as a webhook
    input, then one `baseline` input per purchase (the row as it stood), so `relay
    reproject` can re-derive rows written before the log existed."""
    import json

    param = db.param
    insert = ("INSERT INTO input_log (platform, subject_key, source, received_ms, observed_ms, "
              "store_type, store_subtype, event_type, ref, expires_ms, state_before, "
              "state_after, event_ids, inbox_event_id, user_id, body, repeats, last_ms) "
              f"VALUES ({', '.join([param] * 18)})")
    last = ""
    while True:
        rows = db.execute_sql(  # type: ignore[no-untyped-call]
            f"SELECT event_id, received_ms, body FROM inbox WHERE event_id > {param} "
            "ORDER BY event_id LIMIT 500", (last,)).fetchall()
        if not rows:
            break
        last = rows[-1][0]
        batch = []
        for event_id, received_ms, body in rows:
            try:
                doc = json.loads(bytes(body))
            except ValueError:
                continue
            subject = doc.get("subject") if isinstance(doc, dict) else None
            data = doc.get("data") if isinstance(doc, dict) else None
            if not isinstance(data, dict):
                continue
            source = doc.get("source")
            key = subject.get("key") if isinstance(subject, dict) else None
            voided = data.get("voidedPurchaseNotification")
            if not key and isinstance(voided, dict) and isinstance(
                    voided.get("purchaseToken"), str):
                token = voided["purchaseToken"]  # a void names a token: find its purchase
                found = db.execute_sql(  # type: ignore[no-untyped-call]
                    "SELECT subject_key FROM purchase WHERE platform = 'google' AND "
                    f"(subject_key = {param} OR latest_ref = {param})", (token, token)
                ).fetchone()
                key = found[0] if found else None
            if source not in ("apple", "google") or not isinstance(key, str) or not key:
                continue
            store_type = data.get("notificationType") if source == "apple" else (
                doc.get("platformEvent"))
            batch.append((source, key, "webhook", received_ms, received_ms,
                          str(store_type)[:64] if store_type else None,
                          str(data.get("subtype"))[:64] if data.get("subtype") else None,
                          str(doc.get("event"))[:96], None, None, None, None, None, event_id,
                          None, None, 1, None))
        for row in batch:
            db.execute_sql(insert, row)  # type: ignore[no-untyped-call]
    columns = ("platform", "subject_key", "kind", "user_id", "app_user_id", "product_id",
               "base_plan_id", "state", "state_reason", "environment", "expires_ms",
               "auto_renew", "latest_ref", "package_name", "store_time_ms", "created_ms",
               "updated_ms")
    after: tuple[str, str] = ("", "")
    while True:
        rows = db.execute_sql(  # type: ignore[no-untyped-call]
            f"SELECT {', '.join(columns)} FROM purchase WHERE (platform > {param}) OR "
            f"(platform = {param} AND subject_key > {param}) ORDER BY platform, subject_key "
            f"LIMIT {_BASELINE_BATCH}", (after[0], after[0], after[1])).fetchall()
        if not rows:
            break
        after = (rows[-1][0], rows[-1][1])
        for row in rows:
            view = dict(zip(columns, row, strict=True))
            if view["auto_renew"] is not None:
                view["auto_renew"] = bool(view["auto_renew"])
            db.execute_sql(insert, (  # type: ignore[no-untyped-call]
                view["platform"], view["subject_key"], "baseline", view["updated_ms"],
                view["store_time_ms"], None, None, None, view["latest_ref"],
                view["expires_ms"], view["state"], view["state"], None, None,
                view["user_id"], json.dumps(view, separators=(",", ":")), 1, None))


# Fills delivery_minute from the attempts table (migration 9; bench/console.py's fill).
COUNT_ATTEMPTS_PER_MINUTE = (
    "INSERT INTO delivery_minute (minute_ms, endpoint, delivered, failed) "
    "SELECT a.started_ms / 60000 * 60000, d.endpoint, "
    "SUM(CASE WHEN a.status_code >= 200 AND a.status_code < 300 THEN 1 ELSE 0 END), "
    "SUM(CASE WHEN a.status_code >= 200 AND a.status_code < 300 THEN 0 ELSE 1 END) "
    "FROM attempt AS a JOIN delivery AS d ON d.id = a.delivery_id "
    "GROUP BY a.started_ms / 60000 * 60000, d.endpoint")


def _m9_console(db: Database) -> None:
    """The console: sessions, sign-in throttle, endpoint health and attempts per minute
    (counted from the attempts kept so far); deliveries by endpoint, newest first (the
    endpoint page, `relay deliveries --endpoint`)."""
    db.create_tables([EndpointHealth, DeliveryMinute, ConsoleSession, ConsoleThrottle])
    db.execute_sql(COUNT_ATTEMPTS_PER_MINUTE)  # type: ignore[no-untyped-call]
    db.execute_sql("CREATE INDEX IF NOT EXISTS delivery_endpoint_id "  # type: ignore[no-untyped-call]
                   "ON delivery (endpoint, id)")


def _m10_ledger(db: Database) -> None:
    """The transaction ledger, filled from the input log; `input_log.transaction_id` (the
    ledger row an input names) and an index of the inputs by user (explain, a user's
    purchases). Only inputs with a user (verify, restore) enter that index."""
    if "transaction_id" not in {c.name for c in db.get_columns("input_log")}:
        db.execute_sql("ALTER TABLE input_log ADD COLUMN transaction_id VARCHAR(128)")  # type: ignore[no-untyped-call]
    db.execute_sql("CREATE INDEX IF NOT EXISTS input_log_user ON input_log (user_id) "  # type: ignore[no-untyped-call]
                   "WHERE user_id IS NOT NULL")
    db.create_tables([Ledger])
    from relay.store.ledger_backfill import backfill

    written = backfill()
    log.info("migration 10: %d transaction(s) recorded from the input log", written)


def _m11_fewer_indexes(db: Database) -> None:
    """Fewer index pages written per webhook: no index on `event.attesto_event_id` (no
    query reads by it), none on `delivery.event_cursor` alone (the unique (event_cursor,
    endpoint) index serves it), and the newest-token lookup indexes Google rows only
    (Apple rows change `latest_ref` on every renewal; only `lookups.google_row` reads it)."""
    db.execute_sql("DROP INDEX IF EXISTS event_attesto_event_id")  # type: ignore[no-untyped-call]
    db.execute_sql("DROP INDEX IF EXISTS delivery_event_cursor")  # type: ignore[no-untyped-call]
    db.execute_sql("CREATE INDEX IF NOT EXISTS purchase_google_latest_ref "  # type: ignore[no-untyped-call]
                   "ON purchase (latest_ref) WHERE platform = 'google'")
    db.execute_sql("DROP INDEX IF EXISTS purchase_platform_latest_ref")  # type: ignore[no-untyped-call]


MIGRATIONS: tuple[Callable[[Database], None], ...] = (
    _m1_core, _m2_attempts_users_leases, _m3_purchase_latest_ref_index, _m4_endpoint_state,
    _m5_delivery_claim_index, _m6_purchase_period_pending, _m7_input_log,
    _m8_input_log_backfill, _m9_console, _m10_ledger, _m11_fewer_indexes,
)
assert len(MIGRATIONS) == SCHEMA_VERSION


def current_version(db: Database) -> int:
    if not db.table_exists(Meta._meta.table_name):
        return 0
    row = Meta.get_or_none(Meta.key == "schema_version")
    return int(row.value) if row else 0


def migrate(db: Database, target: int = SCHEMA_VERSION) -> list[int]:
    """Apply pending migrations up to `target`; return the versions applied."""
    version = current_version(db)
    if version > SCHEMA_VERSION:
        raise SchemaError(f"database schema is version {version}, newer than this relay "
                          f"(knows up to {SCHEMA_VERSION}); upgrade relay")
    applied = []
    for number in range(version + 1, target + 1):
        step = MIGRATIONS[number - 1]
        with db.atomic():
            step(db)
            Meta.insert(key="schema_version", value=str(number)).on_conflict(
                conflict_target=[Meta.key], update={Meta.value: str(number)}).execute()
        log.info("applied migration %d (%s)", number, step.__doc__ or step.__name__)
        applied.append(number)
    return applied


def check(db: Database) -> int:
    """Refuse a newer or an unmigrated schema; return the version."""
    version = current_version(db)
    if version > SCHEMA_VERSION:
        raise SchemaError(f"database schema is version {version}, newer than this relay "
                          f"(knows up to {SCHEMA_VERSION}); upgrade relay")
    if version < SCHEMA_VERSION:
        raise SchemaError(f"database schema is version {version}, relay needs "
                          f"{SCHEMA_VERSION}: run `relay migrate` (or set "
                          "[store] auto_migrate = true)")
    return version
