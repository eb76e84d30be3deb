"""Which store the suite runs on: SQLite always; PostgreSQL when RELAY_TEST_POSTGRES_URL is set.

`store_config(tmp_path)` gives a fresh store per test: a SQLite file under tmp_path, or a
new PostgreSQL database created from that URL and dropped (WITH FORCE) after the test.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from relay.config import StoreConfig

POSTGRES_URL = os.environ.get("RELAY_TEST_POSTGRES_URL", "")
ON_POSTGRES = bool(POSTGRES_URL)
sqlite_only = pytest.mark.skipif(ON_POSTGRES, reason="SQLite-specific (file, PRAGMA, backup)")
_created: list[str] = []


def _admin_connect() -> object:
    import psycopg2

    conn = psycopg2.connect(POSTGRES_URL)
    conn.autocommit = True
    return conn


def _with_database(url: str, name: str) -> str:
    u = urlsplit(url)
    return urlunsplit((u.scheme, u.netloc, "/" + name, u.query, u.fragment))


def create_database(name: str) -> str:
    """Create (or recreate) database `name` on the test server; return its URL."""
    conn = _admin_connect()
    try:
        cur = conn.cursor()  # type: ignore[attr-defined]
        cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        cur.execute(f'CREATE DATABASE "{name}"')
    finally:
        conn.close()  # type: ignore[attr-defined]
    _created.append(name)
    return _with_database(POSTGRES_URL, name)


def store_config(tmp_path: Path, name: str = "relay") -> StoreConfig:
    """A fresh, empty store for this test (same tmp_path + name: the same store)."""
    if not ON_POSTGRES:
        return StoreConfig(path=str(tmp_path / f"{name}.sqlite3"))
    digest = hashlib.sha1(f"{tmp_path}/{name}".encode()).hexdigest()[:16]
    db = f"relay_t_{digest}"
    url = _with_database(POSTGRES_URL, db)
    if db not in _created:
        url = create_database(db)
    return StoreConfig(url=url)


def drop_created(keep: frozenset[str] = frozenset()) -> None:
    """Drop the databases created so far, except `keep` (they belong to a longer scope)."""
    doomed = [name for name in _created if name not in keep]
    if not doomed:
        return
    conn = _admin_connect()
    try:
        cur = conn.cursor()  # type: ignore[attr-defined]
        for name in doomed:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            _created.remove(name)
    finally:
        conn.close()  # type: ignore[attr-defined]


@pytest.fixture(autouse=True)
def _drop_test_databases() -> Iterator[None]:
    # Databases that exist when the test starts were made by module- or session-scoped
    # fixtures (a live relay shared by a module): they outlive this test.
    before = frozenset(_created)
    yield
    if ON_POSTGRES:
        drop_created(keep=before)


@pytest.fixture(autouse=True, scope="session")
def _drop_remaining_databases() -> Iterator[None]:
    yield
    if ON_POSTGRES:
        drop_created()
