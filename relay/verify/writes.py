"""A valid verify's write on the store thread (`store.write_many`'s batch function): the
row read and reconciled, the apply, and the user's entitlements after it."""

from __future__ import annotations

from dataclasses import dataclass

from relay.core.domain import Entitlement, PurchaseView, Snapshot, entitlements_of
from relay.core.frozen import evolve, slot_init
from relay.core.rules import Rules
from relay.core.verify_snapshot import reconcile_apple, reconcile_google
from relay.store import lookups, pipeline


@slot_init
@dataclass(frozen=True, slots=True)
class VerifyWrite:
    """What one valid verify writes: its snapshot, applied in the store's transaction."""

    snap: Snapshot
    linked: str | None  # Google: the linkedPurchaseToken Attesto reported
    rules: Rules
    now_ms: int
    with_entitlements: bool


def apply_verifies(writes: list[VerifyWrite]
                   ) -> list[tuple[pipeline.Applied, list[Entitlement]]]:
    """`store.write_many`'s batch for verifies: each row read and reconciled in order, the
    applies shared by a few multi-row statements, the users' entitlements read once.

    A write sees every write before it: a purchase that repeats, a change of rules, and
    a Google subscription (its token chain is read from the rows) first apply what is
    pending. Raises what `pipeline.apply` raises (ConflictError); the store then runs
    each write alone, so only that one fails.
    """
    if (len(writes) == 1 and writes[0].with_entitlements and writes[0].snap.user_id
            and not _chained(writes[0].snap)):
        return [_apply_alone(writes[0])]  # one verify in flight
    applied: dict[int, pipeline.Applied] = {}
    chunk: list[tuple[int, Snapshot, PurchaseView | None]] = []

    def flush() -> None:
        if not chunk:
            return
        first = writes[chunk[0][0]]
        now_ms = max(writes[i].now_ms for i, _, _ in chunk)
        known = {(s.platform, s.subject_key): stored for _, s, stored in chunk}
        done = pipeline.apply_many([s for _, s, _ in chunk], first.rules, now_ms, known=known)
        applied.update(zip((i for i, _, _ in chunk), done, strict=True))
        chunk.clear()

    for i, w in enumerate(writes):
        if chunk and (w.rules is not writes[chunk[0][0]].rules or _chained(w.snap)):
            flush()
        s, stored = _reconcile(w.snap, w.linked, w.rules)
        if any(s.platform == c.platform and s.subject_key == c.subject_key
               for _, c, _ in chunk):
            flush()  # the same purchase again: read it as the earlier write left it
            s, stored = _reconcile(w.snap, w.linked, w.rules)
        chunk.append((i, s, stored))
    flush()
    users = lookups.purchases_by_user({w.snap.user_id or "" for w in writes
                                       if w.with_entitlements})
    return [(applied[i], entitlements_of(users[w.snap.user_id or ""], w.rules.entitlements,
                                         w.now_ms, w.rules.entitlement_policy)
             if w.with_entitlements else [])
            for i, w in enumerate(writes)]


def _chained(snap: Snapshot) -> bool:
    """A Google subscription: its row is found through the token chain other rows hold."""
    return snap.platform == "google" and snap.kind == "subscription"


def _apply_alone(w: VerifyWrite) -> tuple[pipeline.Applied, list[Entitlement]]:
    """`apply_verifies` for one write (not a Google subscription): the row and the user's
    other purchases in one read; the entitlements from those and the applied row."""
    snap, user = w.snap, w.snap.user_id or ""
    stored, others = lookups.purchase_and_others(snap.platform, snap.subject_key, user)
    s = _reconciled(snap, stored, True, w.rules)
    applied = pipeline.apply_many([s], w.rules, w.now_ms,
                                  known={(s.platform, s.subject_key): stored})[0]
    mine = _with_applied(others, applied.purchase, stored, user)
    if mine is None:  # where the applied row goes in the order is in doubt: read it
        mine = lookups.user_purchases(user)
    return applied, entitlements_of(mine, w.rules.entitlements, w.now_ms,
                                    w.rules.entitlement_policy)


def _with_applied(others: list[PurchaseView], after: PurchaseView | None,
                  stored: PurchaseView | None, user: str) -> list[PurchaseView] | None:
    """`user_purchases(user)` after the apply, from the user's other purchases (as read
    before it; the apply changed only its own row) and the applied row; None when the
    order (created_ms, then subject_key in the database's collation) is in doubt."""
    if after is None or (stored is not None and stored.created_ms != after.created_ms):
        return None
    if after.user_id != user:
        return others
    at = 0
    for view in others:
        if view.created_ms == after.created_ms:
            return None
        if view.created_ms > after.created_ms:
            break
        at += 1
    return [*others[:at], after, *others[at:]]


def _reconcile(snap: Snapshot, linked: str | None,
               rules: Rules) -> tuple[Snapshot, PurchaseView | None]:
    """Runs in the write: pick the row, then decide what this verify may change on it.
    Returns the snapshot to apply and the row as read (the apply does not read it again)."""
    current = True
    if _chained(snap):
        key, current = lookups.resolve_google_key(snap.subject_key, linked)
        snap = evolve(snap, subject_key=key)
    stored = lookups.purchase_view(snap.platform, snap.subject_key)
    return _reconciled(snap, stored, current, rules), stored


def _reconciled(snap: Snapshot, stored: PurchaseView | None, current: bool,
                rules: Rules) -> Snapshot:
    """What this verify may change on the row `stored` (`current`: its token is the newest
    known)."""
    if snap.platform == "apple":
        return reconcile_apple(snap, stored, rules.poll.apple_renewal_grace_s * 1000)
    return reconcile_google(snap, stored, current)
