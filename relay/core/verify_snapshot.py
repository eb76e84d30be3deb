"""Attesto verify answers → `Snapshot`s, and how much a verify may say over a stored row.

Pure. Apple verify sees one transaction (no renewal info): it is authoritative only
for a newer period or a refund, otherwise it only fills in identity (user, appUserId).
Google verify sees the live subscription: authoritative for the newest known token.
"""

from __future__ import annotations

from typing import Any

from relay.core.domain import InputNote, PurchaseView, Snapshot, State, parse_time_ms
from relay.core.frozen import evolve
from relay.core.json_codec import dumps
from relay.core.ledger import apple_fact, google_facts, google_product_fact


class AttestoResponseError(ValueError):
    """A `valid:true` answer that lacks what the contract promises."""


APPLE_SUBSCRIPTION_TYPES = ("Auto-Renewable Subscription", "Non-Renewing Subscription")

# SubscriptionPurchaseV2.subscriptionState -> (state, reason); CANCELED is decided by expiry.
GOOGLE_STATES: dict[str, tuple[State, str | None]] = {
    "SUBSCRIPTION_STATE_PENDING": (State.PENDING, None),
    "SUBSCRIPTION_STATE_ACTIVE": (State.ACTIVE, None),
    "SUBSCRIPTION_STATE_IN_GRACE_PERIOD": (State.GRACE, None),
    "SUBSCRIPTION_STATE_ON_HOLD": (State.ON_HOLD, None),
    "SUBSCRIPTION_STATE_PAUSED": (State.PAUSED, None),
    "SUBSCRIPTION_STATE_EXPIRED": (State.EXPIRED, None),
    "SUBSCRIPTION_STATE_PENDING_PURCHASE_CANCELED": (State.EXPIRED, "pending_purchase_canceled"),
}
GOOGLE_PRODUCT_STATES = {0: State.OWNED, 1: State.REFUNDED, 2: State.PENDING}


def _obj(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise AttestoResponseError(f"{where} is not an object")
    return value


def _sub(d: dict[str, Any], key: str) -> dict[str, Any]:
    value = d.get(key)
    return value if isinstance(value, dict) else {}


def _text(d: dict[str, Any], key: str, where: str) -> str:
    value = d.get(key)
    if not isinstance(value, str) or not value:
        raise AttestoResponseError(f"{where}.{key} is missing or not a string")
    return value


def _opt_text(d: dict[str, Any], key: str) -> str | None:
    value = d.get(key)
    return value if isinstance(value, str) and value else None


def _time(value: Any, where: str) -> int | None:
    try:
        return parse_time_ms(value)
    except ValueError:
        raise AttestoResponseError(f"{where} is not a time") from None


def apple_snapshot(body: dict[str, Any], user_id: str | None, now_ms: int,
                   source: str = "verify") -> Snapshot:
    """Snapshot of `POST /v1/apple/verify` `valid:true`; time = revocation or purchase date."""
    txn = _obj(body.get("transaction"), "transaction")
    raw = _sub(txn, "rawDecodedPayload")
    original = _text(txn, "originalTransactionId", "transaction")
    kind = "subscription" if _text(txn, "type", "transaction") in APPLE_SUBSCRIPTION_TYPES \
        else "product"
    purchased = _time(raw.get("purchaseDate", txn.get("purchaseDate")), "purchaseDate")
    revoked = _time(raw.get("revocationDate", txn.get("revocationDate")), "revocationDate")
    expires = _time(raw.get("expiresDate", txn.get("expiresDate")), "expiresDate")
    if revoked is not None:
        state = State.REFUNDED
    else:
        state = State.ACTIVE if kind == "subscription" else State.OWNED
    env = body.get("environment")
    tid = _text(txn, "transactionId", "transaction")
    # The answer is Apple's word on the transaction now: its refund state as of now.
    fact = apple_fact({**txn, **raw}, now_ms)
    return Snapshot(
        transactions=(fact,) if fact is not None else (),
        note=InputNote("transaction", "revoked" if revoked is not None else None, tid,
                       _raw(body)),
        period_start_ms=purchased,
        platform="apple", subject_key=original, source=source,
        observed_ms=revoked or purchased or now_ms, received_ms=now_ms, kind=kind,
        product_id=_text(txn, "productId", "transaction"), state=state,
        state_reason="revoked_by_store" if revoked is not None else None,
        expires_ms=expires, environment=env if env in ("production", "sandbox") else None,
        user_id=user_id,
        app_user_id=_opt_text(body, "appUserId") or _opt_text(txn, "appAccountToken"),
        latest_ref=tid)


def _raw(body: dict[str, Any]) -> str:
    """The answer as the input log keeps it (compact JSON)."""
    return dumps(body)


def google_snapshot(body: dict[str, Any], purchase_token: str, user_id: str | None,
                    now_ms: int, source: str = "verify") -> tuple[Snapshot, str | None]:
    """Snapshot of `POST /v1/google/verify` `valid:true` keyed on the token, plus the
    `linkedPurchaseToken` (the caller resolves the row key); time = verify time."""
    purchase = _obj(body.get("purchase"), "purchase")
    raw = _obj(purchase.get("rawResponse", {}), "purchase.rawResponse")
    raw_state = raw.get("subscriptionState") if isinstance(raw, dict) else None
    common: dict[str, Any] = dict(
        note=InputNote(raw_state if isinstance(raw_state, str) else purchase.get("kind"),
                       None, purchase_token, _raw(body), _opt_text(raw, "linkedPurchaseToken")),
        platform="google", subject_key=purchase_token, source=source, observed_ms=now_ms,
        received_ms=now_ms, user_id=user_id, latest_ref=purchase_token,
        app_user_id=_opt_text(body, "appUserId"),
        package_name=_opt_text(purchase, "packageName"))
    if purchase.get("kind") == "androidpublisher#productPurchase":
        owned = GOOGLE_PRODUCT_STATES.get(purchase.get("purchaseState"))  # type: ignore[arg-type]
        if owned == State.OWNED and purchase.get("consumptionState") == 1:
            owned = State.CONSUMED
        env = "sandbox" if raw.get("purchaseType") == 0 else "production"
        fact = google_product_fact(purchase)
        return Snapshot(**common, kind="product", state=owned, environment=env,
                        product_id=_text(purchase, "productId", "purchase"),
                        transactions=(fact,) if fact is not None else ()), None
    lines = raw.get("lineItems") if isinstance(raw.get("lineItems"), list) else []
    line: dict[str, Any] = lines[0] if lines and isinstance(lines[0], dict) else {}
    offer, plan = _sub(line, "offerDetails"), _sub(line, "autoRenewingPlan")
    auto_renew = plan.get("autoRenewEnabled") if isinstance(plan.get("autoRenewEnabled"),
                                                           bool) else None
    expires = _time(line.get("expiryTime", purchase.get("expiryTime")), "expiryTime")
    state_name = raw.get("subscriptionState")
    state: State | None
    reason: str | None = None
    if state_name == "SUBSCRIPTION_STATE_CANCELED":
        still_paid = expires is not None and expires > now_ms
        state, reason = (State.ACTIVE_NOT_RENEWING if still_paid else State.EXPIRED), "canceled"
    elif isinstance(state_name, str) and state_name in GOOGLE_STATES:
        state, reason = GOOGLE_STATES[state_name]
        if state == State.ACTIVE and auto_renew is False:
            state = State.ACTIVE_NOT_RENEWING
    else:
        state = None  # unknown state: do not guess, keep what is stored
    # canceledStateContext.replacementCancellation: this token was replaced (an upgrade or
    # downgrade); only the new token's state may set the purchase.
    superseded = "replacementCancellation" in _sub(raw, "canceledStateContext")
    snap = Snapshot(
        **common, kind="subscription", superseded=superseded,
        transactions=google_facts(purchase, raw, state in (State.ACTIVE,
                                                           State.ACTIVE_NOT_RENEWING)),
        # In IN_GRACE_PERIOD the line item's expiry is the grace end.
        grace_expires_ms=expires if state == State.GRACE else None,
        product_id=_opt_text(line, "productId") or _text(purchase, "productId", "purchase"),
        base_plan_id=_opt_text(offer, "basePlanId"), state=state, state_reason=reason,
        expires_ms=expires, auto_renew=auto_renew,
        environment="sandbox" if "testPurchase" in raw else "production")
    return snap, _opt_text(raw, "linkedPurchaseToken")


def identity_only(snap: Snapshot, stored: PurchaseView) -> Snapshot:
    """What a verify may still say about a row it is not newer than: who owns it, and
    descriptive fields the row lacks. Same time as the row: not stale, changes no state
    (so a transfer it causes is a current event, not a stale one)."""
    def missing(new: str | None, old: str | None) -> str | None:
        return new if old is None else None

    return evolve(snap, observed_ms=stored.store_time_ms, kind=None, state=None,
                  state_reason=None, expires_ms=None, auto_renew=None, latest_ref=None,
                  period_start_ms=None, grace_expires_ms=None,
                  product_id=missing(snap.product_id, stored.product_id),
                  base_plan_id=missing(snap.base_plan_id, stored.base_plan_id),
                  environment=missing(snap.environment, stored.environment),
                  package_name=missing(snap.package_name, stored.package_name))


def reconcile_apple(snap: Snapshot, stored: PurchaseView | None,
                    renewal_grace_ms: int = 86_400_000) -> Snapshot:
    """Authoritative for a first sight, a later period, or a refund; else identity only.

    A subscription transaction that ended more than `renewal_grace_ms` before the answer
    (no renewal of it can still be on its way) is `expired`, not `active`: Apple's verify
    describes one transaction, and its `expiresDate` is in the past."""
    if (snap.kind == "subscription" and snap.state == State.ACTIVE
            and snap.expires_ms is not None
            and snap.expires_ms + renewal_grace_ms <= snap.received_ms):
        snap = evolve(snap, state=State.EXPIRED, state_reason="expired")
    if stored is None:
        return snap
    newer = (stored.expires_ms is None or snap.expires_ms is None
             or snap.expires_ms > stored.expires_ms)
    same_or_newer = newer or snap.expires_ms == stored.expires_ms
    if snap.state == State.REFUNDED and same_or_newer and stored.state != State.REFUNDED:
        # A refund is final: it wins over anything stored about that period or before.
        return evolve(snap, observed_ms=max(snap.observed_ms, stored.store_time_ms + 1))
    if snap.state != State.REFUNDED and stored.kind == "subscription" and newer \
            and snap.expires_ms is not None:
        # A later period than any stored: a renewal relay had not seen (or a lost webhook).
        return evolve(snap, observed_ms=max(snap.observed_ms, stored.store_time_ms + 1))
    return identity_only(snap, stored)


def reconcile_google(snap: Snapshot, stored: PurchaseView | None, current: bool) -> Snapshot:
    """Authoritative unless the verified token is an older one than the row's newest, or
    Play says it was replaced."""
    if stored is None or (current and not snap.superseded):
        return snap
    return identity_only(snap, stored)
