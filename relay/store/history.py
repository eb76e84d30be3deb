"""Store-thread reads for a purchase's history and a user's purchases: the input log page
by page (oldest first, `id` the cursor), the input that set a purchase's state, every
purchase a user ever had, and what `explain` needs (`relay.core.explain` decides). Plain
return values, for the JSON routes, the CLI and an HTML page alike.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from relay.core.domain import PurchaseView, entitlement_keys
from relay.core.explain import Explanation, Held, explain_key
from relay.core.history import InputView
from relay.core.rules import Rules
from relay.store import lookups, statements

_COLUMNS = ("l.id, l.platform, l.subject_key, l.source, l.received_ms, l.observed_ms, "
            "l.store_type, l.store_subtype, l.event_type, l.ref, l.transaction_id, "
            "l.expires_ms, l.state_before, l.state_after, l.event_ids, l.user_id, l.repeats, "
            "l.last_ms")
_WIDTH = 18
_PAGE = (f"SELECT {_COLUMNS} FROM input_log l WHERE l.platform = {{p}} "
         "AND l.subject_key = {p} AND l.id > {p} ORDER BY l.id LIMIT {p}")
_PAGE_RAW = (f"SELECT {_COLUMNS}, l.body, i.body FROM input_log l "
             "LEFT OUTER JOIN inbox i ON i.event_id = l.inbox_event_id "
             "WHERE l.platform = {p} AND l.subject_key = {p} AND l.id > {p} "
             "ORDER BY l.id LIMIT {p}")
# The newest input that moved the purchase into its state (or first saw it in it).
_SET_BY = (f"SELECT {_COLUMNS} FROM input_log l WHERE l.platform = {{p}} "
           "AND l.subject_key = {p} AND l.state_after = {p} "
           "AND (l.state_before IS NULL OR l.state_before <> l.state_after) "
           "ORDER BY l.id DESC LIMIT 1")
# Rows from before the log (a `baseline`) or a log that begins mid-way: the oldest input
# that shows the state.
_FIRST_IN = (f"SELECT {_COLUMNS} FROM input_log l WHERE l.platform = {{p}} "
             "AND l.subject_key = {p} AND l.state_after = {p} ORDER BY l.id LIMIT 1")


def _view(row: tuple[Any, ...], raw: bool = False) -> InputView:
    text: str | None = None
    if raw:
        body, inbox = row[_WIDTH], row[_WIDTH + 1]
        text = body if body is not None else (
            bytes(inbox).decode("utf-8", "replace") if inbox is not None else None)
    view = InputView(*row[:_WIDTH])
    return replace(view, raw=text) if raw else view


def inputs_page(platform: str, subject_key: str, after: int, limit: int,
                raw: bool = False) -> list[InputView]:
    """The purchase's inputs after the cursor `after`, oldest first; with their exact
    bodies when `raw` (a webhook's inbox bytes, a verify or poll answer's JSON)."""
    if raw:
        rows = statements.execute("history_raw", _PAGE_RAW,
                                  (platform, subject_key, after, limit)).fetchall()
    else:
        rows = statements.execute("history", _PAGE,
                                  (platform, subject_key, after, limit)).fetchall()
    return [_view(tuple(r), raw) for r in rows]


def state_set_by(p: PurchaseView) -> InputView | None:
    """The input that set the purchase's current state: the newest that moved it there,
    else the oldest that shows it (a row stored before the log began)."""
    for name, sql in (("history_set_by", _SET_BY), ("history_first_in", _FIRST_IN)):
        row = statements.execute(name, sql, (p.platform, p.subject_key, p.state)).fetchone()
        if row is not None:
            return _view(tuple(row))
    return None


def purchases_ever(user_id: str) -> list[PurchaseView]:
    """Every purchase bound to the user now, then those the user verified that another
    user holds now (moved by `owner_conflict = "transfer"`)."""
    mine = lookups.user_purchases(user_id)
    return mine + [p for p, _how in _verified_by(user_id, {(p.platform, p.subject_key)
                                                           for p in mine})]


def _verified_by(user_id: str, skip: set[tuple[str, str]]
                 ) -> list[tuple[PurchaseView, str]]:
    keys = {(str(p), str(k)) for p, k in statements.execute(
        "history_verified_by", "SELECT DISTINCT platform, subject_key FROM input_log "
        "WHERE user_id = {p}", (user_id,)).fetchall()} - skip
    found = statements.load_purchases(keys) if keys else {}
    return [(found[k], "verified_by_user") for k in sorted(found)
            if found[k].user_id != user_id]


def _bound_to(user_id: str) -> list[tuple[PurchaseView, str]]:
    """Purchases the store binds to the user's appUserId that another user holds."""
    row = statements.execute("history_app_user", 'SELECT "app_user_id" FROM "app_user" '
                             'WHERE "user_id" = {p}', (user_id,)).fetchone()
    if row is None:
        return []
    keys = {(str(p), str(k)) for p, k in statements.execute(
        "history_bound_to", 'SELECT "platform", "subject_key" FROM "purchase" '
        'WHERE "app_user_id" = {p}', (row[0],)).fetchall()}
    found = statements.load_purchases(keys) if keys else {}
    return [(found[k], "bound_to_user") for k in sorted(found)
            if found[k].user_id not in (None, user_id)]


def explain(user_id: str, key: str, rules: Rules, now_ms: int) -> Explanation:
    """Why the user has the entitlement `key` now, or why not (`core.explain`). The input
    that set a state is read only for the purchases explain shows: those that grant the
    key, else (no purchase grants it) the user's own."""
    def grants(p: PurchaseView) -> bool:
        return key in entitlement_keys(rules.entitlements, p.product_id, p.base_plan_id)

    purchases = lookups.user_purchases(user_id)
    shown = [p for p in purchases if grants(p)] or purchases
    mine = [Held(p, state_set_by(p)) for p in shown]
    seen = {(p.platform, p.subject_key) for p in purchases}
    others = []
    for p, how in _verified_by(user_id, seen) + _bound_to(user_id):
        if grants(p) and (p.platform, p.subject_key) not in seen:
            seen.add((p.platform, p.subject_key))
            others.append(Held(p, state_set_by(p), how))
    return explain_key(user_id, key, mine, others, rules, now_ms)


def explain_all(user_id: str, rules: Rules, now_ms: int) -> list[Explanation]:
    """`explain` for every key the configuration knows and the user's purchases grant."""
    keys = {k for values in rules.entitlements.values() for k in values}
    return [explain(user_id, k, rules, now_ms) for k in sorted(keys)]
