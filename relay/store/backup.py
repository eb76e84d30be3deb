"""Online backup of the SQLite store through SQLite's backup API (safe while relay runs).

The copy holds user ids, purchase tokens and raw webhooks: it is created 0600 whatever
the umask, under a temporary name that must not exist yet (a file or a symlink planted
there is refused, never written through), and linked to its final name only if that
does not exist either.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

MODE = 0o600


class BackupError(Exception):
    """The backup could not be taken or did not verify."""


def _create_private(path: Path) -> os.stat_result:
    """Create `path` empty, 0600, refusing anything already there (symlinks included)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, MODE)
    except FileExistsError:
        raise BackupError(f"{path} exists (a file or a link left there?); refusing to "
                          "write through it: remove it and run the backup again") from None
    try:
        os.fchmod(fd, MODE)  # whatever the umask
        return os.fstat(fd)
    finally:
        os.close(fd)


def _same_file(path: Path, created: os.stat_result) -> bool:
    try:
        now = os.lstat(path)
    except FileNotFoundError:
        return False
    return (now.st_dev, now.st_ino) == (created.st_dev, created.st_ino)


def backup_sqlite(source: Path, target: Path, pages_per_step: int = 1024) -> int:
    """Copy `source` to `target` as one consistent snapshot; return the schema version.

    Uses its own read connection: the daemon keeps writing (WAL) while this runs."""
    if not source.is_file():
        raise BackupError(f"no database at {source}")
    if target.exists() or target.is_symlink():
        raise BackupError(f"{target} exists; refusing to overwrite it")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".partial")
    created = _create_private(tmp)
    try:
        row = _copy(source, tmp, created, pages_per_step)
        try:
            os.link(tmp, target)  # fails if the target appeared meanwhile: never replaced
        except FileExistsError:
            raise BackupError(f"{target} exists; refusing to overwrite it") from None
    finally:
        if _same_file(tmp, created):
            tmp.unlink()
    return int(row[0]) if row else 0


def _copy(source: Path, tmp: Path, created: os.stat_result,
          pages_per_step: int) -> tuple[str] | None:
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=30)
    try:
        if not _same_file(tmp, created):  # replaced since we made it: do not open it
            raise BackupError(f"{tmp} changed while the backup started; refusing it")
        dst = sqlite3.connect(tmp)
        try:
            src.backup(dst, pages=pages_per_step)
            dst.execute("PRAGMA journal_mode=DELETE")
            check = dst.execute("PRAGMA integrity_check").fetchone()[0]
            if check != "ok":
                raise BackupError(f"integrity check of the copy failed: {check}")
            row: tuple[str] | None = dst.execute(
                "SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        finally:
            dst.close()
    finally:
        src.close()
    if not _same_file(tmp, created):
        raise BackupError(f"{tmp} changed during the backup; refusing it")
    return row
