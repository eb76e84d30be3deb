"""Re-projection: re-derive purchase rows from their input log with today's rules.

`replay()` is pure: it reads each logged input back into the snapshot today's normalizer
and verify readers make of it (webhooks from their inbox bytes, verify and poll answers
from their JSON), reconciles it as the live path does, and chains `core.decide.decide`.
`diff_batch()` compares the result with the stored row (state, expiry, grace end,
entitlements now); `apply_batch()` writes the changed rows, relays
`subscription.state_changed` with reason `reprojected` and logs a `reprojection` input,
all in the caller's transaction (`relay reproject`, cli_reproject.py).

Rows stored before the log existed have a `baseline` input (migration 8): the row as it
stood, after the webhooks the inbox still held. It stands for the inputs relay did not
log (verify and poll answers): Apple's is read as a verify answer (it wins for a later
period or a first sight, as a verify does); Google's as a re-fetch of the row's token,
except a `refunded` Google subscription (old relay refunded on any void, which today's
re-verifies) and an answer about a token the log shows replaced.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from relay.core.decide import decide
from relay.core.domain import (
    InputNote,
    PurchaseView,
    Snapshot,
    State,
    entitlement_keys,
    is_entitled,
    iso,
)
from relay.core.errors import BadRequestError, ConflictError
from relay.core.normalizer import normalize, void_snapshot
from relay.core.poll_policy import clock_input
from relay.core.rules import Rules
from relay.core.verify_snapshot import (
    AttestoResponseError,
    apple_snapshot,
    google_snapshot,
    identity_only,
    reconcile_apple,
    reconcile_google,
)
from relay.store import pipeline, statements
from relay.store.models import database

CLOCK_INPUTS = {"renewal_not_seen": State.EXPIRED, "grace_period_over": State.BILLING_RETRY}


@dataclass(frozen=True, slots=True)
class Logged:
    """One input-log row, with its webhook's inbox bytes when it is a webhook."""

    id: int
    source: str
    received_ms: int
    store_type: str | None
    ref: str | None
    user_id: str | None
    body: str | None
    inbox_body: bytes | None


@dataclass(frozen=True, slots=True)
class Diff:
    before: PurchaseView
    after: PurchaseView
    granted_before: tuple[str, ...]
    granted_after: tuple[str, ...]

    def describe(self) -> str:
        b, a = self.before, self.after
        parts = [f"{b.platform}:{b.subject_key}"]
        if a.state != b.state:
            parts.append(f"state {b.state} -> {a.state}")
        if a.expires_ms != b.expires_ms:
            parts.append(f"expires {iso(b.expires_ms) or '-'} -> {iso(a.expires_ms) or '-'}")
        if a.grace_expires_ms != b.grace_expires_ms and a.state == State.GRACE:
            parts.append(f"grace until {iso(a.grace_expires_ms) or '-'}")
        if self.granted_after != self.granted_before:
            parts.append(f"entitlements [{', '.join(self.granted_before)}] -> "
                         f"[{', '.join(self.granted_after)}]")
        if a.latest_ref != b.latest_ref:
            parts.append(f"latest {b.latest_ref} -> {a.latest_ref}")
        return "  ".join(parts)


# ---- reading the log back ----------------------------------------------------------------

def purchases_with_inputs(since_ms: int | None, after: tuple[str, str] | None,
                          limit: int) -> list[tuple[str, str]]:
    """The next `limit` purchases (key order) that have inputs (received at or after
    `since_ms`, when given) and a stored row."""
    where: list[str] = ["source <> 'reprojection'"]
    params: list[Any] = []
    if since_ms is not None:
        where.append("received_ms >= ?")
        params.append(since_ms)
    if after is not None:
        where.append("(platform > ? OR (platform = ? AND subject_key > ?))")
        params += [after[0], after[0], after[1]]
    sql = ("SELECT DISTINCT platform, subject_key FROM input_log WHERE " + " AND ".join(where)
           + " ORDER BY platform, subject_key LIMIT ?").replace("?", database.param)
    rows = database.execute_sql(sql, (*params, limit)).fetchall()
    return [(str(p), str(k)) for p, k in rows]


def logged_inputs(platform: str, subject_key: str) -> list[Logged]:
    """The purchase's inputs, oldest first, webhooks with their inbox bytes."""
    sql = ("SELECT l.id, l.source, l.received_ms, l.store_type, l.ref, l.user_id, l.body, "
           "i.body FROM input_log l LEFT OUTER JOIN inbox i ON i.event_id = l.inbox_event_id "
           "WHERE l.platform = ? AND l.subject_key = ? ORDER BY l.id"
           ).replace("?", database.param)
    return [Logged(int(i), str(src), int(at), st, ref, user, body,
                   bytes(raw) if raw is not None else None)
            for i, src, at, st, ref, user, body, raw
            in database.execute_sql(sql, (platform, subject_key)).fetchall()]


class IncompleteLog(Exception):
    """An input whose body is gone (pruned by `[input_log] retention_s`): not re-derivable."""


# ---- replay --------------------------------------------------------------------------------

def replay(inputs: Sequence[Logged], stored: PurchaseView, rules: Rules) -> PurchaseView | None:
    """The row today's rules derive from `inputs`, or None when they make none."""
    current: PurchaseView | None = None
    for logged in inputs:
        snaps = _snapshots(logged, stored, current, rules)
        for snap in snaps:
            user_id = snap.user_id
            if user_id is None and snap.app_user_id is not None \
                    and snap.app_user_id == stored.app_user_id:
                user_id = stored.user_id
            try:
                after, _events, _stale = decide(snap, current, user_id, rules,
                                                         logged.received_ms)
            except ConflictError:
                continue  # refused then as now (owner_conflict = "keep")
            current = after
        if logged.store_type in CLOCK_INPUTS or _baseline_clock(logged):
            # A decision of the clock (the re-poll found no news): taken again with
            # today's rule at the same time, on the row as re-derived.
            lapsed = clock_input(current, logged.received_ms, rules.entitlement_policy) \
                if current is not None else None
            if lapsed is not None:
                current, _events, _stale = decide(lapsed, current, None, rules,
                                                           logged.received_ms)
    return current


def _baseline_clock(logged: Logged) -> bool:
    """A baseline row whose state old relay's clock decided (renewal_not_seen, ...)."""
    if logged.source != "baseline" or logged.body is None:
        return False
    return json.loads(logged.body).get("state_reason") in CLOCK_INPUTS


def _snapshots(logged: Logged, stored: PurchaseView, current: PurchaseView | None,
               rules: Rules) -> list[Snapshot]:
    key = stored.subject_key
    grace_ms = rules.poll.apple_renewal_grace_s * 1000
    if logged.source == "webhook":
        if logged.inbox_body is None or not logged.inbox_body:
            raise IncompleteLog(f"input {logged.id}: its inbox body was pruned")
        try:
            norm = normalize(json.loads(logged.inbox_body), logged.received_ms)
        except (BadRequestError, ValueError):
            return []
        if norm.snapshot is not None:
            return [replace(norm.snapshot, subject_key=key)]
        if norm.refund_token is not None and current is not None:
            return [void_snapshot(norm, key, current.kind, logged.received_ms)]
        return []
    if logged.source in ("verify", "restore", "poll"):
        if logged.body is None:
            return []  # a clock input: `replay` takes it again
        return _answer(logged, stored, current, grace_ms)
    if logged.source == "baseline" and logged.body is not None:
        return _baseline(json.loads(logged.body), logged, current, grace_ms)
    return []  # reprojection (an output), admin (none yet)


def _answer(logged: Logged, stored: PurchaseView, current: PurchaseView | None,
            grace_ms: int) -> list[Snapshot]:
    assert logged.body is not None
    body: dict[str, Any] = json.loads(logged.body)
    user = logged.user_id if logged.source != "poll" else None
    try:
        if stored.platform == "apple":
            snap = apple_snapshot(body, user, logged.received_ms, logged.source)
            return [reconcile_apple(replace(snap, subject_key=stored.subject_key), current,
                                    grace_ms)]
        token = logged.ref or stored.subject_key
        snap, linked = google_snapshot(body, token, user, logged.received_ms, logged.source)
    except AttestoResponseError:
        return []
    snap = replace(snap, subject_key=stored.subject_key)
    if current is None:
        return [snap]
    if token in (current.subject_key, current.latest_ref):
        # A poll reads the row's current token; any other is one it moved on from.
        is_current = token == (current.latest_ref or current.subject_key) \
            if logged.source == "poll" else current.latest_ref in (None, token)
    else:
        is_current = linked is not None  # a new token linked to this purchase
    return [reconcile_google(snap, current, is_current)]


def _baseline(view: dict[str, Any], logged: Logged, current: PurchaseView | None,
              grace_ms: int) -> list[Snapshot]:
    state = State(view["state"]) if view["state"] in State.__members__.values() else None
    snap = Snapshot(
        platform=view["platform"], subject_key=view["subject_key"], source="baseline",
        observed_ms=view["store_time_ms"], received_ms=logged.received_ms, kind=view["kind"],
        product_id=view["product_id"], base_plan_id=view["base_plan_id"], state=state,
        state_reason=view["state_reason"], expires_ms=view["expires_ms"],
        environment=view["environment"], auto_renew=view["auto_renew"],
        user_id=view["user_id"], app_user_id=view["app_user_id"],
        latest_ref=view["latest_ref"], package_name=view["package_name"],
        note=InputNote("baseline"))
    if view["platform"] == "apple":
        if view["state_reason"] in CLOCK_INPUTS and current is not None:
            # Old relay's clock decision: `replay` takes it again with today's rule.
            return [identity_only(snap, current)]
        if view["state_reason"] in CLOCK_INPUTS:
            snap = replace(snap, state=State.ACTIVE, state_reason=None)  # as first verified
        return [reconcile_apple(snap, current, grace_ms)]
    if view["kind"] == "subscription" and state == State.REFUNDED:
        # Old relay refunded a Google subscription on any voided notification; the void
        # (still in the log) is re-decided by today's rules instead.
        snap = replace(snap, state=None, state_reason=None)
    if current is None:
        return [snap]
    if current.latest_ref is not None and view["latest_ref"] != current.latest_ref:
        return [identity_only(snap, current)]  # about a token the log shows replaced
    return [replace(snap, observed_ms=max(snap.observed_ms, current.store_time_ms))]


# ---- compare and write ---------------------------------------------------------------------

def granted(p: PurchaseView | None, rules: Rules, now_ms: int) -> tuple[str, ...]:
    if p is None or not is_entitled(p, now_ms, rules.entitlement_policy):
        return ()
    return entitlement_keys(rules.entitlements, p.product_id, p.base_plan_id)


def diff_batch(keys: Iterable[tuple[str, str]], rules: Rules, now_ms: int
               ) -> tuple[list[Diff], list[str]]:
    """Re-derive each purchase; return the changed ones and the ones it could not."""
    stored_rows = statements.load_purchases(list(keys))
    diffs, skipped = [], []
    for key in keys:
        stored = stored_rows.get(key)
        if stored is None:
            continue
        try:
            derived = replay(logged_inputs(*key), stored, rules)
        except IncompleteLog as exc:
            skipped.append(f"{key[0]}:{key[1]}: {exc}")
            continue
        if derived is None:
            continue
        target = _target(stored, derived)
        before_ents, after_ents = granted(stored, rules, now_ms), granted(target, rules, now_ms)
        if (target.state, target.expires_ms, target.grace_expires_ms, after_ents,
                target.latest_ref) != (stored.state, stored.expires_ms,
                                       stored.grace_expires_ms, before_ents,
                                       stored.latest_ref):
            diffs.append(Diff(stored, target, before_ents, after_ents))
    return diffs, skipped


def _target(stored: PurchaseView, derived: PurchaseView) -> PurchaseView:
    """The stored row with what the log decides; identity, sequence and times kept."""
    return replace(
        stored, state=derived.state, state_reason=derived.state_reason,
        expires_ms=derived.expires_ms, auto_renew=derived.auto_renew,
        latest_ref=derived.latest_ref, product_id=derived.product_id or stored.product_id,
        base_plan_id=derived.base_plan_id or stored.base_plan_id,
        grace_expires_ms=derived.grace_expires_ms, period_start_ms=derived.period_start_ms,
        voided_ms=derived.voided_ms, period_pending=derived.period_pending,
        user_id=stored.user_id or derived.user_id,
        environment=stored.environment or derived.environment)


def apply_batch(keys: Sequence[tuple[str, str]], rules: Rules, now_ms: int
                ) -> tuple[list[Diff], list[str]]:
    """`diff_batch`, then write each changed row in the caller's transaction."""
    diffs, skipped = diff_batch(keys, rules, now_ms)
    for d in diffs:
        pipeline.apply_reprojected(d.before, d.after, rules, now_ms)
    return diffs, skipped
