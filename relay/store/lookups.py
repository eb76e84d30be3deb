"""Store-thread queries of the verify API: purchase and user views, entitlements, the Google
token chain and the appUserId binding. Every function here runs inside `store.read/write`.

The hot reads are plain SQL with fixed text: building them through the ORM on every
verify cost more than running them (they are on the path of every verify).
"""

from __future__ import annotations

import json
from collections.abc import Collection
from typing import Any

from peewee import SQL

from relay.core import ids
from relay.core.domain import Entitlement, PurchaseView, entitlements_of
from relay.core.rules import Rules
from relay.store import statements
from relay.store.models import AppUser, Event, Purchase

_SELECT = statements.SELECT_PURCHASES  # the columns of PurchaseView, in order


def _views(name: str, where: str, params: tuple[Any, ...]) -> list[PurchaseView]:
    """Purchase views of `_SELECT` + `where` (`{p}` placeholders; text cached by name)."""
    rows = statements.execute(name, _SELECT + where, params).fetchall()
    return [statements.purchase_of(row) for row in rows]


def purchase_view(platform: str, subject_key: str) -> PurchaseView | None:
    found = _views("purchase_view", '"platform" = {p} AND "subject_key" = {p}',
                   (platform, subject_key))
    return found[0] if found else None


def user_purchases(user_id: str) -> list[PurchaseView]:
    return _views("user_purchases", '"user_id" = {p} ORDER BY "created_ms", "subject_key"',
                  (user_id,))


def purchase_and_others(platform: str, subject_key: str, user_id: str
                        ) -> tuple[PurchaseView | None, list[PurchaseView]]:
    """The purchase, and `user_id`'s other purchases (in `user_purchases`' order): one
    statement, each part through its own index."""
    stored, others = None, []
    for view in _views("purchase_and_others", '"platform" = {p} AND "subject_key" = {p} '
                       "UNION ALL " + _SELECT + '"user_id" = {p} '
                       'ORDER BY "created_ms", "subject_key"',
                       (platform, subject_key, user_id)):
        if view.subject_key == subject_key and view.platform == platform:
            stored = view  # (twice when it is the user's)
        else:
            others.append(view)
    return stored, others


def purchases_by_user(user_ids: Collection[str]) -> dict[str, list[PurchaseView]]:
    """`user_purchases` for several users in one query (each list in the same order)."""
    out: dict[str, list[PurchaseView]] = {u: [] for u in user_ids}
    users = sorted(out)
    for i in range(0, len(users), 500):
        part = users[i:i + 500]
        where = (f'"user_id" IN ({", ".join(["{p}"] * len(part))}) '
                 'ORDER BY "created_ms", "subject_key"')
        for view in _views(f"purchases_by_user/{len(part)}", where, tuple(part)):
            out[view.user_id or ""].append(view)
    return out


def events_by_id(ids: Collection[str]) -> list[dict[str, Any]]:
    """These events (by relay's event id), newest first, bodies parsed."""
    if not ids:
        return []
    rows: Any = (Event.select(Event.cursor, Event.id, Event.type, Event.source, Event.sequence,
                              Event.occurred_ms, Event.received_ms, Event.stale, Event.body)
                 .where(Event.id.in_(list(ids))).order_by(Event.cursor.desc()).dicts())
    return [{**r, "body": json.loads(r["body"])} for r in rows]


def user_entitlements(user_id: str, rules: Rules, now_ms: int) -> list[Entitlement]:
    """What `user_id` is entitled to now, from every purchase bound to them."""
    return entitlements_of(user_purchases(user_id), rules.entitlements, now_ms,
                           rules.entitlement_policy)


# The condition of the partial index purchase_google_latest_ref (migration 11), as text: a
# bound 'google' would not let SQLite use that index.
GOOGLE = SQL("platform = 'google'")


def google_row(token: str) -> Purchase | None:
    """The Google purchase `token` names: as its key (root token), else as its newest token."""
    row = Purchase.get_or_none((Purchase.platform == "google") & (Purchase.subject_key == token))
    if row is None:
        row = Purchase.select().where(GOOGLE & (Purchase.latest_ref == token)).first()
    return row


def resolve_google_key(token: str, linked: str | None) -> tuple[str, bool]:
    """The row key for a verified subscription token, and whether it is the newest known.

    Webhooks key a subscription on the ROOT token of its `linkedPurchaseToken` chain, so
    an upgrade keeps one row: a token that is a row's key or newest ref maps to that row;
    else its linked token's row; else the linked token itself (the root after one
    upgrade), else the token. The token is not the newest when the row already knows a
    newer one (its key is the root and `latest_ref` moved on).
    """
    row = google_row(token)
    if row is not None:
        return row.subject_key, row.latest_ref in (None, token)
    if linked:
        row = google_row(linked)
        return (row.subject_key if row is not None else linked), True
    return token, True


def app_user_id_for(user_id: str, now_ms: int) -> str:
    """The user's appUserId (UUID v4): minted on the first call, the same ever after."""
    bound = AppUser.get_or_none(AppUser.user_id == user_id)
    if bound is not None:
        return str(bound.app_user_id)
    value = ids.app_user_uuid()
    AppUser.insert(user_id=user_id, app_user_id=value, created_ms=now_ms).execute()
    return value
