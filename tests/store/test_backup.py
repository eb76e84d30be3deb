"""Online backup under write load: the copy opens, verifies, and is one consistent snapshot."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from relay.config import StoreConfig
from relay.store.backup import BackupError, backup_sqlite
from relay.store.database import Store
from relay.store.models import Event, Inbox

ROOT = Path(__file__).resolve().parents[2]


async def test_backup_under_write_load_matches_row_counts(tmp_path: Path) -> None:
    store = Store(StoreConfig(path=str(tmp_path / "live.sqlite3")))
    await store.open()
    stop = threading.Event()

    def one(i: int) -> None:  # an inbox row and its event in ONE transaction
        Inbox.insert(event_id=f"evt_{i}", event_type="t", received_ms=i, signature_t=i,
                     headers="{}", body=b"x" * 200).execute()
        Event.insert(id=f"rly_{i}", type="t", source="webhook", occurred_ms=i,
                     received_ms=i, body="{}").execute()

    import asyncio

    some_landed = asyncio.Event()

    async def load() -> int:
        i = 0
        while not stop.is_set():
            await store.write(lambda i=i: one(i))
            i += 1
            if i == 20:
                some_landed.set()
        return i

    writer = asyncio.create_task(load())
    await asyncio.wait_for(some_landed.wait(), 10)  # the copy starts mid-load
    target = tmp_path / "copy.sqlite3"
    version = await asyncio.get_running_loop().run_in_executor(
        None, backup_sqlite, tmp_path / "live.sqlite3", target)
    stop.set()
    written = await writer
    await store.close()
    assert version >= 1
    db = sqlite3.connect(target)
    inbox = db.execute("SELECT count(*) FROM inbox").fetchone()[0]
    events = db.execute("SELECT count(*) FROM event").fetchone()[0]
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.close()
    assert inbox == events  # a consistent point: never an inbox row without its event
    assert 0 < inbox <= written


def test_backup_refuses_to_overwrite_and_missing_source(tmp_path: Path) -> None:
    (tmp_path / "exists").write_text("x")
    with pytest.raises(BackupError, match="no database"):
        backup_sqlite(tmp_path / "absent.sqlite3", tmp_path / "c")
    sqlite3.connect(tmp_path / "db.sqlite3").close()
    with pytest.raises(BackupError, match="refusing to overwrite"):
        backup_sqlite(tmp_path / "db.sqlite3", tmp_path / "exists")


def test_cli_backup(tmp_path: Path) -> None:
    env = {"PYTHONPATH": str(ROOT), "RELAY_STORE__PATH": str(tmp_path / "live.sqlite3")}
    migrate = subprocess.run([sys.executable, "-m", "relay", "migrate", "--config",
                              str(ROOT / "relay.toml")], env=env, capture_output=True,
                             text=True, timeout=60)
    assert migrate.returncode == 0, migrate.stderr
    out = subprocess.run([sys.executable, "-m", "relay", "backup", "--config",
                          str(ROOT / "relay.toml"), str(tmp_path / "b.sqlite3")], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "schema" in out.stdout and (tmp_path / "b.sqlite3").is_file()
