"""Acceptance of `relay reproject` (issue 15): on a store written by relay at 52d9077 through
the defective sequences (tests/lifecycle/old_store.py), the dry run shows the expected
diff and a count, `--apply` makes those rows right and relays their state changes, and a
second run shows no diff. On PostgreSQL the old store's rows are loaded into a database
at schema 6 first, so `relay migrate` upgrades it as it would a deployment.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from relay.service import cli
from tests.support.store import ON_POSTGRES, store_config

OLD_STORE = Path(__file__).parent / "data" / "store-52d9077.sqlite3"
EXPECTED = {  # subject -> what the dry run must say (each phrase appears on its line)
    "apple:a-expired": ["state active -> expired", "entitlements [premium] -> []"],
    "apple:a-grace": ["state expired -> grace", "grace until 2096-10-19",
                      "entitlements [] -> [premium]"],
    "apple:a-oldrefund": ["state refunded -> active", "-> 2096-11-03",
                          "entitlements [] -> [premium]", "latest a-oldrefund-1 -> a-oldrefund-2"],
    "apple:a-status": ["state expired -> billing_retry"],
    "google:g-root": ["state expired -> active", "entitlements [] -> [premium, pro]",
                      "latest g-root -> g-root-b"],
    "google:g-void": ["state refunded -> active", "entitlements [] -> [premium]"],
}
TABLES = ("meta", "purchase", "inbox", "event", "delivery", "attempt", "app_user", "lease",
          "endpoint_state")
BOOLEANS = {"auto_renew", "period_pending", "stale"}


def _old_store(tmp_path: Path) -> Path:
    """The old store as a deployment's: a SQLite file, or its rows in a PostgreSQL
    database at schema 6. Returns the config file pointing at it."""
    cfg = store_config(tmp_path, "old")
    if ON_POSTGRES:
        _load_into_postgres(cfg.url)
        store = f'url = "{cfg.url}"'
    else:
        Path(cfg.path).write_bytes(OLD_STORE.read_bytes())
        store = f'path = "{cfg.path}"'
    config = tmp_path / "relay.toml"
    config.write_text(f"""
[store]
{store}
[log]
level = "warning"
[entitlements]
"com.example.premium" = ["premium"]
"premium_monthly" = ["premium"]
"pro_monthly" = ["premium", "pro"]
""")
    return config


def _load_into_postgres(url: str) -> None:
    import psycopg2
    from playhouse.postgres_ext import PostgresqlExtDatabase  # noqa: F401 (driver check)

    from relay.config import StoreConfig
    from relay.store import migrations
    from relay.store.connection import make_database
    from relay.store.models import database

    db = make_database(StoreConfig(url=url))
    database.initialize(db)
    db.connect()
    try:
        migrations.migrate(db, target=6)
    finally:
        db.close()
    src = sqlite3.connect(OLD_STORE)
    conn = psycopg2.connect(url)
    try:
        cur = conn.cursor()
        for table in TABLES:
            rows = src.execute(f'SELECT * FROM "{table}"')
            names = [d[0] for d in rows.description]
            for row in rows.fetchall():
                values = [bool(v) if n in BOOLEANS and v is not None else v
                          for n, v in zip(names, row, strict=True)]
                cur.execute(f'INSERT INTO "{table}" ({", ".join(names)}) VALUES '
                            f'({", ".join(["%s"] * len(names))}) ON CONFLICT DO NOTHING',
                            values)
        for table, column in (("event", "cursor"), ("delivery", "id"), ("attempt", "id")):
            cur.execute(f"SELECT setval(pg_get_serial_sequence('{table}', '{column}'), "
                        f"COALESCE((SELECT MAX({column}) FROM {table}), 1))")
        conn.commit()
    finally:
        conn.close()
        src.close()


def _relay(capsys: pytest.CaptureFixture[str], *args: str) -> list[str]:
    assert cli.main(list(args)) == 0
    return capsys.readouterr().out.splitlines()


def _query(config: Path, sql: str) -> list[tuple[Any, ...]]:
    from relay.config import load_config
    from relay.store.connection import make_database

    db = make_database(load_config(config).store)
    db.connect()
    try:
        return list(db.execute_sql(sql).fetchall())
    finally:
        db.close()


def test_reproject_fixes_what_relay_at_52d9077_stored(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]
                                                      ) -> None:
    config = _old_store(tmp_path)
    _relay(capsys, "migrate", "--config", str(config))
    before = dict(_query(config, "SELECT subject_key, state FROM purchase"))

    dry = _relay(capsys, "reproject", "--config", str(config))
    assert dry[-1] == "6 purchase(s) would change (of 8 re-derived)"
    lines = {line.split("  ")[0]: line for line in dry[:-1]}
    assert sorted(lines) == sorted(EXPECTED)
    for subject, phrases in EXPECTED.items():
        for phrase in phrases:
            assert phrase in lines[subject], (subject, phrase, lines[subject])
    # The dry run wrote nothing.
    assert dict(_query(config, "SELECT subject_key, state FROM purchase")) == before

    applied = _relay(capsys, "reproject", "--config", str(config), "--apply", "--batch", "3")
    assert applied[-1] == "6 purchase(s) changed (of 8 re-derived)"
    assert sorted(line.split("  ")[0] for line in applied[:-1]) == sorted(EXPECTED)
    after = dict(_query(config, "SELECT subject_key, state FROM purchase"))
    assert after == {**before, "a-expired": "expired", "a-grace": "grace",
                     "a-oldrefund": "active", "a-status": "billing_retry",
                     "g-root": "active", "g-void": "active"}
    relayed = [json.loads(b) for (b,) in _query(
        config, "SELECT body FROM event WHERE source = 'reprojection' ORDER BY cursor")]
    assert sorted((e["subject_key"], e["type"], e["reason"], e["previous_state"], e["state"])
                  for e in relayed) == sorted(
        (s.split(":")[1], "subscription.state_changed", "reprojected", before[s.split(":")[1]],
         after[s.split(":")[1]]) for s in EXPECTED)
    logged = _query(config, "SELECT subject_key, state_before, state_after, event_ids FROM "
                            "input_log WHERE source = 'reprojection'")
    assert sorted(r[0] for r in logged) == sorted(s.split(":")[1] for s in EXPECTED)
    assert {r[3] for r in logged} == {e["id"] for e in relayed}

    again = _relay(capsys, "reproject", "--config", str(config))
    assert again == ["0 purchase(s) would change (of 8 re-derived)"]


def test_reproject_since_limits_to_recent_inputs(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    config = _old_store(tmp_path)
    _relay(capsys, "migrate", "--config", str(config))
    # The old store's last inputs: a-expired's first verify, and g-root's last re-poll.
    [(last,)] = _query(config, "SELECT MAX(received_ms) FROM input_log "
                               "WHERE subject_key = 'g-root'")
    recent = {k for (k,) in _query(config, "SELECT DISTINCT subject_key FROM input_log "
                                           f"WHERE received_ms >= {last}")}
    assert recent == {"a-expired", "g-root"}
    out = _relay(capsys, "reproject", "--config", str(config), "--since", str(last))
    assert out[-1] == "2 purchase(s) would change (of 2 re-derived)"
    assert sorted(line.split("  ")[0] for line in out[:-1]) == ["apple:a-expired",
                                                                "google:g-root"]
    assert cli.main(["reproject", "--config", str(config), "--since", "yesterday"]) == 2


async def test_reproject_apply_is_safe_while_relay_serves(life: Any, tmp_path: Path) -> None:
    """`relay reproject --apply` (another process) writes while relay keeps storing
    webhooks on the same store: every delivery is answered 200 and kept, and every row the
    log contradicts is fixed (each batch re-reads its rows inside its write-locked
    transaction)."""
    import asyncio
    import os
    import sys

    from relay.store.models import Purchase
    from relay.web.appkeys import RUNTIME_KEY
    from tests.lifecycle.stores import apple_notification, apple_renewal, apple_transaction

    day = 86_400_000
    now = life.now_ms
    for n in range(40):
        t = apple_transaction(f"s{n}-t1", f"s{n}", "com.example.premium", now, now + 30 * day)
        await life.apple_webhook(apple_notification(
            "SUBSCRIBED", "INITIAL_BUY", uuid=f"s{n}-n", signed_ms=now, txn=t,
            renewal=apple_renewal(f"s{n}", "com.example.premium", auto_renew=True,
                                  signed_ms=now), status=1))
    # Rows the log contradicts (as an old rule would have left them).
    await life.client.app[_store_key()].write(
        lambda: Purchase.update(state="refunded").where(
            Purchase.subject_key.in_([f"s{n}" for n in range(0, 40, 2)])).execute())
    store = life.client.app[RUNTIME_KEY].config.store
    config = tmp_path / "reproject.toml"
    where = f'url = "{store.url}"' if store.url else f'path = "{store.path}"'
    config.write_text(f'[store]\n{where}\n[log]\nlevel = "warning"\n[entitlements]\n'
                      '"com.example.premium" = ["premium"]\n')
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relay", "reproject", "--config", str(config), "--apply",
        "--batch", "3", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    answered = 0
    while proc.returncode is None:  # keep relay writing until reproject is done
        t = apple_transaction(f"w{answered}-t1", f"w{answered}", "com.example.premium", now,
                              now + 30 * day)
        result = await life.apple_webhook(apple_notification(
            "SUBSCRIBED", "INITIAL_BUY", uuid=f"w{answered}-n", signed_ms=now, txn=t,
            renewal=apple_renewal(f"w{answered}", "com.example.premium", auto_renew=True,
                                  signed_ms=now), status=1))
        assert result["status"] == "accepted"
        answered += 1
        try:
            await asyncio.wait_for(proc.wait(), timeout=0.001)
        except TimeoutError:
            pass
    out, err = await proc.communicate()
    assert answered >= 1  # relay stored deliveries while reproject ran
    assert proc.returncode == 0, err.decode()
    assert out.decode().splitlines()[-1].startswith("20 purchase(s) changed")
    states = await life.client.app[_store_key()].read(
        lambda: {p.subject_key: p.state for p in Purchase.select()})
    assert all(state == "active" for state in states.values()), states
    assert len(states) == 40 + answered


def _store_key() -> Any:
    from relay.web.appkeys import STORE_KEY
    return STORE_KEY
