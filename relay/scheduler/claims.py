"""Claims on due purchases: a row whose re-poll is in flight is not claimed again.

Durable (`claim_due`, a shared SQLite file or PostgreSQL): the claim is an UPDATE that
pushes the rows' `next_poll_ms` out by CLAIM_MS, committed before the polls start, so
another process or instance does not take them; the poll's outcome sets the real next
time. In memory (`Claims`, when this process owns the SQLite file): the claim is a read
of the due rows, skipping the keys this process holds; a claim ends when its poll's
outcome is stored, or after CLAIM_MS. A crash loses the claims: their rows are due
again at once (they still are, in the database).
"""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass
from typing import Any

from relay.core.domain import PurchaseView
from relay.store.database import Store
from relay.store.models import Purchase, database

CLAIM_MS = 300_000  # a claimed row is not re-claimed for 5 minutes
CLAIM_CHUNK = 500  # keys per UPDATE / rowids per SELECT (well under SQLite's limit)

_VIEW_COLUMNS = [getattr(Purchase, f.name) for f in dataclasses.fields(PurchaseView)]
# The due order from the next_poll_ms index alone (it holds the rowid): skipping the
# rows held in memory costs no table read.
_DUE_ROWIDS = ('SELECT rowid FROM "purchase" WHERE "next_poll_ms" <= ? '
               'ORDER BY "next_poll_ms"')


def claim_due(now_ms: int, limit: int) -> list[PurchaseView]:
    """Select up to `limit` due rows, oldest first, and push them out of the due window
    (the durable claim; run it in `store.write`)."""
    # Plain tuples straight into views: hydrating 500 models costs more than the query.
    views = [PurchaseView(*row) for row in  # type: ignore[misc]
             Purchase.select(*_VIEW_COLUMNS)
             .where(Purchase.next_poll_ms <= now_ms)
             .order_by(Purchase.next_poll_ms)
             .limit(limit).tuples()]
    by_platform: dict[str, list[str]] = {}
    for v in views:
        by_platform.setdefault(v.platform, []).append(v.subject_key)
    for platform, keys in by_platform.items():  # equality + IN: stays on the primary key
        for start in range(0, len(keys), CLAIM_CHUNK):
            Purchase.update(next_poll_ms=now_ms + CLAIM_MS).where(
                (Purchase.platform == platform)
                & Purchase.subject_key.in_(keys[start:start + CLAIM_CHUNK])).execute()
    return views


def select_due(now_ms: int, limit: int, held_rowids: frozenset[int],
               held_keys: frozenset[tuple[str, str]]) -> list[tuple[int, PurchaseView]]:
    """Up to `limit` due rows, oldest first, none of them held (SQLite, store thread):
    (rowid, view) pairs. Rows are skipped by rowid on the index, then checked by key."""
    out: list[tuple[int, PurchaseView]] = []
    cursor = database.execute_sql(_DUE_ROWIDS, (now_ms,))
    while len(out) < limit:
        wanted: list[int] = []
        for batch in iter(lambda: cursor.fetchmany(CLAIM_CHUNK), []):
            wanted.extend(r for (r,) in batch if r not in held_rowids)
            if len(wanted) >= limit - len(out):
                break
        if not wanted:
            break
        wanted = wanted[:limit - len(out)]
        rank = {rowid: n for n, rowid in enumerate(wanted)}
        rows = database.execute_sql(_by_rowid(len(wanted)), (now_ms, *wanted)).fetchall()
        rows.sort(key=lambda row: rank[row[0]])
        out.extend((row[0], view) for row in rows
                   if ((view := _view(row)).platform, view.subject_key) not in held_keys)
    cursor.close()
    return out


_COLUMNS = [f.name for f in dataclasses.fields(PurchaseView)]
_BOOLS = [_COLUMNS.index("auto_renew"), _COLUMNS.index("period_pending")]
_SELECT_BY_ROWID = ("SELECT rowid, " + ", ".join(f'"{c}"' for c in _COLUMNS)
                    + ' FROM "purchase" WHERE "next_poll_ms" <= ? AND rowid IN ({marks})')
_by_rowid_text: dict[int, str] = {}


def _by_rowid(n: int) -> str:
    text = _by_rowid_text.get(n)
    if text is None:
        text = _by_rowid_text[n] = _SELECT_BY_ROWID.format(marks=", ".join("?" * n))
    return text


def _view(row: tuple[Any, ...]) -> PurchaseView:
    values = list(row[1:])
    for i in _BOOLS:  # SQLite stores booleans as 0/1
        if values[i] is not None:
            values[i] = bool(values[i])
    return PurchaseView(*values)


@dataclass(slots=True)
class _Held:
    view: PurchaseView
    rowid: int
    until_ms: int


class Claims:
    """The claims of one poller: in memory when the process owns the SQLite file,
    else `claim_due`'s durable UPDATE."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.in_memory = store.owns_database
        self._held: dict[tuple[str, str], _Held] = {}
        self._lock = asyncio.Lock()

    async def take(self, now_ms: int, limit: int) -> list[PurchaseView]:
        """Claim up to `limit` due rows, oldest first."""
        if not self.in_memory:
            return await self.store.write(lambda: claim_due(now_ms, limit))
        async with self._lock:  # one claim at a time: each sees the one before
            for key in [k for k, h in self._held.items() if h.until_ms <= now_ms]:
                del self._held[key]
            rowids = frozenset(h.rowid for h in self._held.values())
            keys = frozenset(self._held)
            found = await self.store.read(lambda: select_due(now_ms, limit, rowids, keys))
            until = now_ms + CLAIM_MS
            for rowid, view in found:
                self._held[(view.platform, view.subject_key)] = _Held(view, rowid, until)
            return [view for _, view in found]

    def release(self, view: PurchaseView) -> None:
        """The poll of `view` stored its outcome: its claim ends (a later claim of the
        same row, after this one expired, is kept)."""
        key = (view.platform, view.subject_key)
        held = self._held.get(key)
        if held is not None and held.view is view:
            del self._held[key]

    def held(self) -> int:
        """How many claims are held in memory now."""
        return len(self._held)

    def held_rowids(self, now_ms: int) -> frozenset[int]:
        """The rows whose claim is held at `now_ms`: their poll is in flight, so they are
        not due (what the durable claim says by moving `next_poll_ms`)."""
        return frozenset(h.rowid for h in self._held.values() if h.until_ms > now_ms)


__all__ = ["CLAIM_MS", "Claims", "claim_due", "select_due"]
