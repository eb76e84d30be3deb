"""Opening the database: the SQLite file (under the state directory) with its pragmas, or a
PostgreSQL URL read by libpq; the cross-process write lock of a shared SQLite file; and
which database errors mean "the store cannot take writes now" (a 503, retried)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from peewee import (
    Database,
    DatabaseError,
    InterfaceError,
    InternalError,
    OperationalError,
    SqliteDatabase,
)

from relay.config import ConfigError, StoreConfig
from relay.core.errors import BadRequestError, StoreUnavailableError

# PostgreSQL: every write group takes this transaction-scoped advisory lock first, so the
# write groups of all instances commit one at a time, as on SQLite. Event cursors are
# then handed out in commit order (GET /v1/events never skips a late commit), and the
# read-then-write code (monotonic apply, sequences, leases) sees no concurrent writer.
WRITE_LOCK_KEY = 0x72656C6179  # "relay"


def resolve_sqlite_path(path: str, environ: Mapping[str, str] | None = None) -> Path:
    """Relative paths live under `$STATE_DIRECTORY` (systemd), else the working directory."""
    env = os.environ if environ is None else environ
    p = Path(path)
    if p.is_absolute():
        return p
    state_dir = env.get("STATE_DIRECTORY", "").split(":")[0]
    return (Path(state_dir) if state_dir else Path.cwd()) / p


def postgres_params(url: str) -> tuple[str, dict[str, str]]:
    """The database name and every other connection parameter of a PostgreSQL URL, read by
    libpq itself (percent-decoding, sslmode, sslrootcert, several hosts...). ConfigError
    when libpq refuses it; the message never carries the password."""
    try:
        from psycopg2 import ProgrammingError
        from psycopg2.extensions import parse_dsn
    except ImportError:
        raise ConfigError(["[store] url needs the PostgreSQL driver: "
                           "pip install 'relay[postgres]'"]) from None
    try:
        params: dict[str, str] = parse_dsn(url)
    except ProgrammingError as exc:
        reason = str(exc).strip()
        password = urlsplit(url).password if "@" in url else None
        if password:
            reason = reason.replace(password, "***")
        raise ConfigError([f"[store] url is not a PostgreSQL URL libpq accepts: {reason}"]
                          ) from None
    return params.pop("dbname", "") or "postgres", params


def make_database(cfg: StoreConfig, environ: Mapping[str, str] | None = None,
                  pragmas: Mapping[str, Any] | None = None) -> Database:
    if cfg.url:
        from playhouse.pool import PooledPostgresqlDatabase

        name, params = postgres_params(cfg.url)
        pg: Database = PooledPostgresqlDatabase(name, max_connections=4, stale_timeout=300,
                                                autoconnect=False, **params)
        return pg
    path = resolve_sqlite_path(cfg.path, environ)
    path.parent.mkdir(parents=True, exist_ok=True)
    all_pragmas: dict[str, Any] = {
        "journal_mode": "wal",
        # FULL: every commit is fsynced; group commit amortises the cost.
        "synchronous": "full",
        "foreign_keys": 1,
        "cache_size": -16000,
        "busy_timeout": int(cfg.busy_timeout_s * 1000),
        # The statement journal of a savepoint (a group commit's per-item savepoint) and
        # temporary indexes in memory, not in a file created and deleted per commit.
        "temp_store": "memory",
    }
    all_pragmas.update(pragmas or {})
    # Multi-row statements have one text per row count (statements.py); keep them all
    # prepared rather than re-parse them (sqlite3's default cache holds 128).
    return SqliteDatabase(str(path), pragmas=all_pragmas, autoconnect=False,
                          check_same_thread=False, cached_statements=1024)


@contextlib.contextmanager
def exclusive_write(lock_file: Any) -> Iterator[None]:
    """Hold the cross-process write lock of a shared SQLite file (`<file>.lock`)."""
    fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(lock_file.fileno(), fcntl.LOCK_UN)


# The database cannot take writes now (disk full, lock timeout, lost connection; on
# PostgreSQL also InternalError: a read-only standby after failover, an aborted transaction).
UNAVAILABLE = (OperationalError, InterfaceError, InternalError, sqlite3.OperationalError)


def unavailable(exc: BaseException) -> StoreUnavailableError:
    return StoreUnavailableError(f"the store could not commit: {exc}")


def translate(exc: BaseException) -> BaseException:
    if isinstance(exc, ValueError) and "NUL (0x00)" in str(exc):
        # PostgreSQL text cannot hold NUL; the input is at fault, not the store.
        return BadRequestError("text fields must not contain NUL (\\u0000) characters",
                               code="invalid_request")
    if isinstance(exc, UNAVAILABLE):
        return unavailable(exc)
    if isinstance(exc, DatabaseError) and "full" in str(exc).lower():
        return unavailable(exc)
    return exc
