"""Online backup of the SQLite store through SQLite's backup API (safe while relay runs)."""

from __future__ import annotations

import sqlite3
from pathlib import Path


class BackupError(Exception):
    """The backup could not be taken or did not verify."""


def backup_sqlite(source: Path, target: Path, pages_per_step: int = 1024) -> int:
    """Copy `source` to `target` as one consistent snapshot; return the schema version.

    Uses its own read connection: the daemon keeps writing (WAL) while this runs."""
    if not source.is_file():
        raise BackupError(f"no database at {source}")
    if target.exists():
        raise BackupError(f"{target} exists; refusing to overwrite it")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".partial")
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=30)
    try:
        dst = sqlite3.connect(tmp)
        try:
            src.backup(dst, pages=pages_per_step)
            dst.execute("PRAGMA journal_mode=DELETE")
            check = dst.execute("PRAGMA integrity_check").fetchone()[0]
            if check != "ok":
                raise BackupError(f"integrity check of the copy failed: {check}")
            row = dst.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        finally:
            dst.close()
    finally:
        src.close()
    tmp.rename(target)
    return int(row[0]) if row else 0
