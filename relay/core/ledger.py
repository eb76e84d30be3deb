"""The transaction ledger's pure part: what an input says about a paid store transaction
(`TxnFact`, read from the stores' payloads), a ledger row as the API shows it
(`LedgerEntry`), and the `transaction.*` events a change of a row relays.

What a transaction is, per store (the ledger's key is (platform, transaction id)):

- Apple `transactionId`: "the unique identifier for a transaction such as an in-app
  purchase, restored in-app purchase, or subscription renewal"; `originalTransactionId`
  (relay's subject key) is the lineage they share (App Store Server API ›
  JWSTransactionDecodedPayload). `price` is in milli-units (attesto-contract §2.1),
  `revocationDate` is "the date that the App Store refunded the transaction or revoked
  it from Family Sharing".
- Google order id: "the order id which uniquely identifies a one-time purchase,
  subscription purchase, or subscription renewal" (androidpublisher v3 › VoidedPurchase
  .orderId); a subscription's paid orders are read from the re-verify,
  `lineItems[].latestSuccessfulOrderId` ("the order id of the latest successful order
  associated with this item"), else Attesto's `orderId` (the deprecated `latestOrderId`,
  which may name a declined order, so only while Play says the subscription is paid up).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

from relay.core.domain import MAX_TIME_MS, PurchaseView, TxnFact, iso, parse_time_ms
from relay.core.frozen import slot_init
from relay.core.json_codec import dumps

# Event types, relayed only to endpoints whose `events` name them (core.rules: opt-in).
FAMILY = "transaction."
RECORDED = "transaction.recorded"
REFUNDED = "transaction.refunded"
REVOKED = "transaction.revoked"
REFUND_REVERSED = "transaction.refund_reversed"
EVENT_TYPES = (RECORDED, REFUNDED, REVOKED, REFUND_REVERSED)

# A row's last change (`change`), what the cursor API re-delivers it for.
CHANGES = ("recorded", "refunded", "revoked", "refund_reversed", "user_bound")


def _ms(value: Any) -> int | None:
    """A store time (epoch ms or ISO-8601), leniently: unreadable is unknown."""
    if type(value) is int:  # Apple's payloads: epoch ms (the webhook path's common case)
        return value if 0 <= value <= MAX_TIME_MS else None
    try:
        return parse_time_ms(value)
    except (ValueError, TypeError):
        return None


def _text(value: Any, limit: int = 256) -> str | None:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)  # Apple ids are strings; tolerate a number
    return value if isinstance(value, str) and value and len(value) <= limit else None


def apple_fact(payload: Mapping[str, Any], observed_ms: int, *,
               revoke: bool = False) -> TxnFact | None:
    """One Apple transaction (a decoded `signedTransactionInfo`, or a verify answer's
    transaction with its `rawDecodedPayload` fields over it). It always says whether the
    transaction is revoked: `revocationDate` set (refunded; revoked when the notification
    is a REVOKE or the transaction is FAMILY_SHARED) or absent (not, or no longer:
    REFUND_REVERSED)."""
    tid = _text(payload.get("transactionId"), 128)
    if tid is None:
        return None
    price = payload.get("price")
    price_micros = price * 1000 if isinstance(price, int) and not isinstance(price, bool) \
        else None
    ownership = payload.get("inAppOwnershipType")
    family = ownership == "FAMILY_SHARED"
    revoked_at = _ms(payload.get("revocationDate"))
    by_revoke = revoked_at is not None and (revoke or family)
    return TxnFact(
        transaction_id=tid, product_id=_text(payload.get("productId")),
        period_start_ms=_ms(payload.get("purchaseDate")),
        period_end_ms=_ms(payload.get("expiresDate")), price_micros=price_micros,
        currency=_text(payload.get("currency"), 8),
        ownership=ownership.lower() if isinstance(ownership, str) and ownership in (
            "PURCHASED", "FAMILY_SHARED") else None,
        refunded_ms=None if by_revoke else revoked_at,
        revoked_ms=revoked_at if by_revoke else None, observed_ms=max(observed_ms, 1))


def google_facts(purchase: Mapping[str, Any], raw: Mapping[str, Any],
                 paid: bool) -> tuple[TxnFact, ...]:
    """The paid orders a `purchases.subscriptionsv2` answer names: each line item's
    `latestSuccessfulOrderId`; failing those, Attesto's `orderId` while `paid` (Play says
    the subscription is paid up: active, or canceled with time left). Its period ends at
    the line item's `expiryTime` while paid (in grace or hold that time is not what the
    order bought); the first order's period starts at `startTime`. Says nothing about
    refunds (`observed_ms` 0)."""
    found = raw.get("lineItems")
    lines: list[Any] = found if isinstance(found, list) else []
    start = _ms(raw.get("startTime", purchase.get("startTime")))
    price = purchase.get("priceAmountMicros")
    micros = int(price) if isinstance(price, str) and price.isascii() and price.isdigit() \
        and len(price) < 19 else None
    currency = _text(purchase.get("priceCurrencyCode"), 8)
    facts: list[TxnFact] = []
    for n, line in enumerate(x for x in lines if isinstance(x, dict)):
        order = _text(line.get("latestSuccessfulOrderId"))
        if order is None:
            continue
        facts.append(TxnFact(
            transaction_id=order,
            product_id=_text(line.get("productId")) or _text(purchase.get("productId")),
            period_start_ms=start if ".." not in order else None,
            period_end_ms=_ms(line.get("expiryTime")) if paid else None,
            price_micros=micros if n == 0 else None, currency=currency if n == 0 else None))
    order = _text(purchase.get("orderId"))
    if not facts and paid and order is not None:
        facts.append(TxnFact(
            transaction_id=order, product_id=_text(purchase.get("productId")),
            period_start_ms=start if ".." not in order else None,
            period_end_ms=_ms(purchase.get("expiryTime")), price_micros=micros,
            currency=currency))
    return tuple(facts)


def google_product_fact(purchase: Mapping[str, Any]) -> TxnFact | None:
    """A one-time product's order (`purchases.products`: `purchaseState` 0 is purchased)."""
    order = _text(purchase.get("orderId"))
    if order is None or purchase.get("purchaseState") != 0:
        return None
    return TxnFact(transaction_id=order, product_id=_text(purchase.get("productId")),
                   period_start_ms=_ms(purchase.get("purchaseTimeMillis")))


def void_fact(order_id: str | None, refund_type: int | None,
              observed_ms: int) -> TxnFact | None:
    """A Google voided purchase names the order refunded (RTDN reference ›
    VoidedPurchaseNotification). A full refund (`refundType` 1, or none given) refunds
    the order; a quantity-based partial refund (2: "applicable only to multi-quantity
    purchases") leaves it standing: recorded, not refunded."""
    order = _text(order_id)
    if order is None:
        return None
    if refund_type == 2:
        return TxnFact(transaction_id=order)
    return TxnFact(transaction_id=order, refunded_ms=observed_ms,
                   observed_ms=max(observed_ms, 1))


def with_period_start(fact: TxnFact, before: PurchaseView | None) -> TxnFact:
    """A Google renewal order's period starts where the purchase's previous one ended
    (Play gives no start per order): the stored expiry, when this order's is later."""
    if (fact.period_start_ms is not None or before is None or before.expires_ms is None
            or fact.period_end_ms is None or fact.period_end_ms <= before.expires_ms):
        return fact
    return replace(fact, period_start_ms=before.expires_ms)


@slot_init
@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One ledger row (its columns, in order): a paid store transaction of a purchase.

    `cursor` moves to the end each time the row changes in a way a consumer must see
    again (a refund, a revoke, a refund reversed, its user learned); `change` says which.
    `version` counts the `transaction.*` events the row relayed (their `sequence`).
    """

    cursor: int
    platform: str
    transaction_id: str
    subject_key: str
    user_id: str | None
    product_id: str | None
    environment: str | None
    ownership: str | None
    period_start_ms: int | None
    period_end_ms: int | None
    price_micros: int | None
    currency: str | None
    refunded_ms: int | None
    revoked_ms: int | None
    observed_ms: int
    created_ms: int
    updated_ms: int
    version: int
    change: str

    def to_json(self) -> dict[str, Any]:
        price = None if self.price_micros is None else format(
            (Decimal(self.price_micros) / 1_000_000).normalize(), "f")
        return {
            "cursor": str(self.cursor), "change": self.change, "platform": self.platform,
            "transaction_id": self.transaction_id, "subject_key": self.subject_key,
            "user_id": self.user_id, "product_id": self.product_id,
            "environment": self.environment, "ownership": self.ownership,
            "period_start": iso(self.period_start_ms), "period_end": iso(self.period_end_ms),
            "price": price, "price_micros": self.price_micros, "currency": self.currency,
            "refunded_at": iso(self.refunded_ms), "revoked_at": iso(self.revoked_ms),
            "recorded_at": iso(self.created_ms), "updated_at": iso(self.updated_ms)}


def change_events(entry: LedgerEntry) -> list[tuple[str, int]]:
    """The events (type, sequence) a changed row relays. A row recorded already refunded
    or revoked (its first input was the refund) relays both, in that order."""
    if entry.change == "recorded":
        out = [(RECORDED, 1)]
        if entry.refunded_ms is not None:
            out.append((REFUNDED, 2))
        elif entry.revoked_ms is not None:
            out.append((REVOKED, 2))
        return out
    event = {"refunded": REFUNDED, "revoked": REVOKED,
             "refund_reversed": REFUND_REVERSED}.get(entry.change)
    return [(event, entry.version)] if event else []


def event_body(event_id: str, event_type: str, source: str, occurred_ms: int,
               received_ms: int, entry: LedgerEntry, sequence: int,
               attesto_event_id: str | None) -> str:
    """The relayed body of a `transaction.*` event: the fields every event has, and the
    ledger row as `transaction`. `sequence` counts per transaction."""
    return dumps({
        "id": event_id, "type": event_type, "reason": None,
        "occurred_at": iso(occurred_ms), "received_at": iso(received_ms), "source": source,
        "platform": entry.platform, "subject_key": entry.subject_key,
        "user_id": entry.user_id, "product_id": entry.product_id,
        "environment": entry.environment, "transaction": entry.to_json(),
        "sequence": sequence, "stale": False, "attesto_event_id": attesto_event_id})


def lane(platform: str, transaction_id: str) -> str:
    """The outbox ordering lane of a transaction's events (`delivery.subject`): one per
    transaction, so its refund is never sent before its record."""
    return f"transaction:{platform}:{transaction_id}"
