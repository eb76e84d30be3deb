"""Store-thread queries of the verify API: purchase and user views, entitlements, the Google
token chain and the appUserId binding. Every function here runs inside `store.read/write`.
"""

from __future__ import annotations

from relay import ids
from relay.domain import Entitlement, PurchaseView, Snapshot, entitlements_of
from relay.errors import ConflictError
from relay.models import AppUser, Purchase
from relay.pipeline import Rules, view_of


def purchase_view(platform: str, subject_key: str) -> PurchaseView | None:
    row = Purchase.get_or_none((Purchase.platform == platform)
                               & (Purchase.subject_key == subject_key))
    return view_of(row) if row is not None else None


def user_purchases(user_id: str) -> list[PurchaseView]:
    rows = Purchase.select().where(Purchase.user_id == user_id).order_by(
        Purchase.created_ms, Purchase.subject_key)
    return [view_of(r) for r in rows]


def user_entitlements(user_id: str, rules: Rules, now_ms: int) -> list[Entitlement]:
    """What `user_id` is entitled to now, from every purchase bound to them."""
    return entitlements_of(user_purchases(user_id), rules.entitlements, now_ms,
                           rules.entitlement_policy)


def _google_row(token: str) -> Purchase | None:
    row = Purchase.get_or_none((Purchase.platform == "google") & (Purchase.subject_key == token))
    if row is None:
        row = (Purchase.select().where((Purchase.platform == "google")
                                       & (Purchase.latest_ref == token)).first())
    return row


def resolve_google_key(token: str, linked: str | None) -> tuple[str, bool]:
    """The row key for a verified subscription token, and whether it is the newest known.

    Webhooks key a subscription on the ROOT token of its `linkedPurchaseToken` chain, so
    an upgrade keeps one row: a token that is a row's key or newest ref maps to that row;
    else its linked token's row; else the linked token itself (the root after one
    upgrade), else the token. The token is not the newest when the row already knows a
    newer one (its key is the root and `latest_ref` moved on).
    """
    row = _google_row(token)
    if row is not None:
        return row.subject_key, row.latest_ref in (None, token)
    if linked:
        row = _google_row(linked)
        return (row.subject_key if row is not None else linked), True
    return token, True


def check_app_user_owner(snap: Snapshot, rules: Rules) -> None:
    """Under `keep`, a verify by another user than the appUserId's owner is refused (409)."""
    if rules.owner_conflict != "keep" or not snap.app_user_id or not snap.user_id:
        return
    bound = AppUser.get_or_none(AppUser.app_user_id == snap.app_user_id)
    if bound is not None and bound.user_id != snap.user_id:
        raise ConflictError("this purchase belongs to another user",
                            code="purchase_owned_by_other_user")


def app_user_id_for(user_id: str, now_ms: int) -> str:
    """The user's appUserId (UUID v4): minted on the first call, the same ever after."""
    bound = AppUser.get_or_none(AppUser.user_id == user_id)
    if bound is not None:
        return str(bound.app_user_id)
    value = ids.app_user_uuid()
    AppUser.insert(user_id=user_id, app_user_id=value, created_ms=now_ms).execute()
    return value
