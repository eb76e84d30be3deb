"""Numbered schema migrations and the schema version check.

Each step runs in its own transaction and bumps `meta.schema_version`. A step that
alters a table created by an earlier step must freeze that earlier definition here
rather than use the live model, so an old database always migrates the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from peewee import Database

from relay.models import (
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
    Lease,
    Meta,
    Purchase,
)

log = logging.getLogger(__name__)


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


# Fills delivery_minute from the attempts table (migration 7; bench/console.py's fill).
COUNT_ATTEMPTS_PER_MINUTE = (
    "INSERT INTO delivery_minute (minute_ms, endpoint, delivered, failed) "
    "SELECT a.started_ms / 60000 * 60000, d.endpoint, "
    "SUM(CASE WHEN a.status_code >= 200 AND a.status_code < 300 THEN 1 ELSE 0 END), "
    "SUM(CASE WHEN a.status_code >= 200 AND a.status_code < 300 THEN 0 ELSE 1 END) "
    "FROM attempt AS a JOIN delivery AS d ON d.id = a.delivery_id "
    "GROUP BY a.started_ms / 60000 * 60000, d.endpoint")


def _m7_console(db: Database) -> None:
    """The console: sessions, sign-in throttle, endpoint health and attempts per minute
    (counted from the attempts kept so far); deliveries by endpoint, newest first (the
    endpoint page, `relay deliveries --endpoint`)."""
    db.create_tables([EndpointHealth, DeliveryMinute, ConsoleSession, ConsoleThrottle])
    db.execute_sql(COUNT_ATTEMPTS_PER_MINUTE)  # type: ignore[no-untyped-call]
    db.execute_sql("CREATE INDEX IF NOT EXISTS delivery_endpoint_id "  # type: ignore[no-untyped-call]
                   "ON delivery (endpoint, id)")


MIGRATIONS: tuple[Callable[[Database], None], ...] = (
    _m1_core, _m2_attempts_users_leases, _m3_purchase_latest_ref_index, _m4_endpoint_state,
    _m5_delivery_claim_index, _m6_purchase_period_pending, _m7_console,
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
