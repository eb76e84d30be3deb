"""`input_log.fold_repeats` folds a group's repeated re-poll answers as `fold_repeat` does
one purchase at a time: the same rows kept, counted and dropped."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from relay.store import input_log, statements
from relay.store.database import Store
from relay.store.models import database
from tests.conftest import make_config

T = 1_700_000_000_000


def _row(key: str, n: int, source: str = "poll", body: bytes | None = b'{"a":1}',
         before: str = "active", after: str = "active",
         events: str | None = None) -> statements.InputRow:
    return ("apple", key, source, T + n, T + n, None, None, None, None, None, None, before,
            after, events, None, None, body)


def _log() -> list[tuple[Any, ...]]:
    """Every row: key, id, source, repeats, last_ms."""
    return database.execute_sql(
        'SELECT "subject_key", "id", "source", "repeats", "last_ms" FROM "input_log" '
        'ORDER BY "subject_key", "id"').fetchall()


ROWS = [
    _row("fold", 1), _row("fold", 2),  # the same answer again: folded
    _row("one", 3),  # one row: nothing to fold
    _row("after-verify", 4, source="verify"), _row("after-verify", 5),
    _row("other-body", 6), _row("other-body", 7, body=b'{"a":2}'),
    _row("events", 8), _row("events", 9, events="rly_x"),
    _row("changed", 10), _row("changed", 11, before="active", after="grace"),
    _row("third", 12, source="verify"), _row("third", 13), _row("third", 14),
    _row("no-body", 15, body=None), _row("no-body", 16, body=None),
    *[r for i in range(130) for r in (_row(f"many{i:03}", 100 + i),
                                      _row(f"many{i:03}", 300 + i))],
]
KEYS = [("apple", k) for k in ("fold", "one", "after-verify", "other-body", "events",
                               "changed", "third", "no-body", "none")]
KEYS += [("apple", f"many{i:03}") for i in range(130)]


async def _run(tmp_path: Path, fold: Any) -> tuple[list[bool], list[Any]]:
    store = Store(make_config(tmp_path).store)
    await store.open()
    try:
        await store.write(lambda: statements.insert_inputs(ROWS))
        folded = await store.write(lambda: fold(KEYS))
        return folded, await store.read(_log)
    finally:
        await store.close()


async def test_a_group_folds_as_one_at_a_time(tmp_path: Path) -> None:
    one, one_log = await _run(tmp_path / "one",
                              lambda keys: [input_log.fold_repeat(*k) for k in keys])
    many, many_log = await _run(tmp_path / "many", input_log.fold_repeats)
    assert many == one
    assert many_log == one_log
    assert one[:9] == [True, False, False, False, False, False, True, False, False]
    assert all(one[9:])
    assert len(one_log) == len(ROWS) - sum(one)


async def test_a_purchase_named_twice_folds_once_per_name(tmp_path: Path) -> None:
    store = Store(make_config(tmp_path).store)
    await store.open()
    try:
        await store.write(lambda: statements.insert_inputs(
            [_row("k", 1), _row("k", 2), _row("k", 3)]))
        assert await store.write(lambda: input_log.fold_repeats(
            [("apple", "k"), ("apple", "k")])) == [True, True]
        assert [r[3] for r in await store.read(_log)] == [2]  # as fold_repeat twice
    finally:
        await store.close()
