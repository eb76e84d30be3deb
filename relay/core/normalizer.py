"""Attesto webhook envelope (attesto-contract §5) → a `Snapshot`, or a subject-less event.

Pure: no I/O. The envelope's shape is checked strictly (a bad one is a 400); what is inside
`data` is read leniently, because Attesto signed it and its raw bytes are kept: a field
that cannot be read is treated as absent, never as a crash.
"""

from __future__ import annotations

import binascii
from dataclasses import dataclass
from typing import Any

from relay.core.domain import InputNote, Snapshot, State, parse_time_ms
from relay.core.errors import BadRequestError
from relay.core.frozen import slot_init
from relay.core.json_codec import loads
from relay.core.ledger import apple_fact, void_fact
from relay.core.transitions import resolve_state, transition_for

MAX_EVENT_ID = 64
MAX_EVENT_NAME = 96
MAX_KEY = 4096
SOURCES = ("apple", "google")
KINDS = ("subscription", "product")
_ENVIRONMENTS = {"sandbox": "sandbox", "production": "production"}


@slot_init
@dataclass(frozen=True, slots=True)
class Normalized:
    """One delivery, read. Exactly one of `snapshot` / subject-less applies.

    `snapshot` is None when the envelope has no subject (`test`, Google voided, Apple
    summaries): the event is recorded and relayed but touches no purchase row, unless
    `refund_token` (Google voided) names a purchase relay already knows.
    """

    event_id: str
    event: str
    reason: str | None
    source: str
    occurred_ms: int
    environment: str | None
    app_user_id: str | None
    snapshot: Snapshot | None
    refund_token: str | None = None
    voided: dict[str, Any] | None = None  # Google voidedPurchaseNotification


def _bad(message: str, field: str) -> BadRequestError:
    return BadRequestError(message, code="invalid_envelope", details={"field": field})


def _str(doc: dict[str, Any], key: str, *, max_len: int, nullable: bool,
         where: str = "") -> str | None:
    value = doc.get(key)
    if value is None and nullable:
        return None
    if not isinstance(value, str) or not value or len(value) > max_len:
        name = where + key
        raise _bad(f"`{name}` must be a non-empty string of at most {max_len} characters",
                   name)
    return value


_URLSAFE = bytes.maketrans(b"-_", b"+/")


def decode_jws_payload(token: Any) -> dict[str, Any]:
    """The payload of a compact JWS, not verified (Attesto verified the outer one); {} if bad."""
    if not isinstance(token, str) or token.count(".") != 2:
        return {}
    segment = token.split(".")[1]
    try:
        # base64.urlsafe_b64decode without its Python wrappers (same result, same errors:
        # a non-ASCII segment is a ValueError, bad padding a binascii.Error).
        raw = binascii.a2b_base64(segment.encode("ascii").translate(_URLSAFE)
                                  + b"=" * (-len(segment) % 4))
        value = loads(raw)
    except (binascii.Error, ValueError, RecursionError):  # RecursionError: nested too deep
        return {}
    return value if isinstance(value, dict) else {}


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) < 20:
        return int(value)
    return None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value and len(value) <= MAX_KEY else None


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _fallback_time(doc: dict[str, Any], received_ms: int) -> int:
    try:
        return parse_time_ms(doc.get("timestamp")) or received_ms
    except (ValueError, TypeError):
        return received_ms


def envelope_ids(doc: dict[str, Any]) -> tuple[str, str]:
    """The delivery's `eventId` and `event`, checked as `normalize` checks them."""
    event_id = _str(doc, "eventId", max_len=MAX_EVENT_ID, nullable=False)
    event = _str(doc, "event", max_len=MAX_EVENT_NAME, nullable=False)
    assert event_id is not None and event is not None
    return event_id, event


def normalize(doc: dict[str, Any], received_ms: int) -> Normalized:
    """Read one parsed delivery body; raise `BadRequestError` for a malformed envelope."""
    event_id, event = envelope_ids(doc)
    reason = doc.get("reason")
    if reason is not None and not isinstance(reason, str):
        raise _bad("`reason` must be a string or null", "reason")
    source = doc.get("source")
    if source not in SOURCES:
        raise _bad("`source` must be \"apple\" or \"google\"", "source")
    app_user_id = doc.get("appUserId")
    if app_user_id is not None and (not isinstance(app_user_id, str) or len(app_user_id) > 64):
        raise _bad("`appUserId` must be a string of at most 64 characters or null",
                   "appUserId")
    data = doc.get("data")
    if not isinstance(data, dict):
        raise _bad("`data` must be an object", "data")
    subject = doc.get("subject")
    if subject is not None:
        if not isinstance(subject, dict):
            raise _bad("`subject` must be an object or null", "subject")
        _str(subject, "key", max_len=MAX_KEY, nullable=False, where="subject.")
        if subject.get("type", "subscription") not in KINDS:
            raise _bad("`subject.type` must be \"subscription\" or \"product\"",
                       "subject.type")
        product = subject.get("productId")
        if product is not None and not isinstance(product, str):
            raise _bad("`subject.productId` must be a string or null", "subject.productId")
    if source == "apple":
        return _apple(doc, data, event_id, event, reason, app_user_id, subject, received_ms)
    return _google(doc, data, event_id, event, reason, app_user_id, subject, received_ms)


def _apple(doc: dict[str, Any], data: dict[str, Any], event_id: str, event: str,
           reason: str | None, app_user_id: str | None, subject: dict[str, Any] | None,
           received_ms: int) -> Normalized:
    inner = _obj(data.get("data"))
    occurred_ms = _int(data.get("signedDate")) or _fallback_time(doc, received_ms)
    txn = decode_jws_payload(inner.get("signedTransactionInfo"))
    environment = _ENVIRONMENTS.get(str(inner.get("environment") or txn.get("environment")
                                        or "").lower())
    if subject is None:
        return Normalized(event_id, event, reason, "apple", occurred_ms, environment,
                          app_user_id, None)
    kind = subject.get("type") or "subscription"
    tid = _text(txn.get("transactionId")) or _str_of(txn.get("transactionId"))
    fact = apple_fact(txn, occurred_ms, revoke=data.get("notificationType") == "REVOKE")
    state: State | None = None
    state_reason: str | None = None
    expires_ms = grace_expires_ms = None
    auto_renew: bool | None = None
    row = transition_for(event)
    if row.touches:
        renewal = decode_jws_payload(inner.get("signedRenewalInfo"))
        # The renewal info is the truth about auto-renew; the event name is the fallback.
        renew = _int(renewal.get("autoRenewStatus"))
        auto_renew = row.auto_renew if renew not in (0, 1) else renew == 1
        # data.status is the whole subscription's status at signedDate: it wins over the
        # event name (transitions.resolve_state).
        state = resolve_state(event, kind, auto_renew=auto_renew,
                              apple_status=_int(inner.get("status")),
                              revoked=txn.get("revocationDate") is not None)
        state_reason = reason if state is not None else None
        expires_ms = _int(txn.get("expiresDate"))
        grace_expires_ms = _int(renewal.get("gracePeriodExpiresDate"))
    return Normalized(event_id, event, reason, "apple", occurred_ms, environment, app_user_id,
                      Snapshot(
        note=InputNote(_text(data.get("notificationType")), _text(data.get("subtype")), tid),
        platform="apple", subject_key=subject["key"], source="webhook",
        observed_ms=occurred_ms, received_ms=received_ms, kind=kind,
        product_id=_text(subject.get("productId")) or _text(txn.get("productId")),
        environment=environment, app_user_id=app_user_id, event_type=event,
        event_reason=reason, attesto_event_id=event_id,
        # The newest transaction: what a re-poll must ask for (attesto-contract §3).
        latest_ref=tid, period_start_ms=_int(txn.get("purchaseDate")),
        transactions=(fact,) if fact is not None else (), state=state,
        state_reason=state_reason, expires_ms=expires_ms, auto_renew=auto_renew,
        grace_expires_ms=grace_expires_ms))


def _str_of(value: Any) -> str | None:
    # Apple ids are strings; tolerate a number rather than lose the reference.
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else None


def _google(doc: dict[str, Any], data: dict[str, Any], event_id: str, event: str,
            reason: str | None, app_user_id: str | None, subject: dict[str, Any] | None,
            received_ms: int) -> Normalized:
    occurred_ms = _int(data.get("eventTimeMillis")) or _fallback_time(doc, received_ms)
    if subject is None:
        voided = _obj(data.get("voidedPurchaseNotification"))
        return Normalized(event_id, event, reason, "google", occurred_ms, None, app_user_id,
                          None, refund_token=_text(voided.get("purchaseToken")),
                          voided=voided or None)
    kind = subject.get("type") or "subscription"
    note = _obj(data.get("subscriptionNotification") if kind == "subscription"
                else data.get("oneTimeProductNotification"))
    product_id = (_text(subject.get("productId")) or _text(note.get("subscriptionId"))
                  or _text(note.get("sku")) or _text(note.get("productId")))
    code = note.get("notificationType")
    row = transition_for(event)
    state = resolve_state(event, kind, auto_renew=row.auto_renew) if row.touches else None
    return Normalized(event_id, event, reason, "google", occurred_ms, None, app_user_id,
                      Snapshot(
        note=InputNote(f"{kind}.{code}" if isinstance(code, int) else None, None,
                       _text(note.get("purchaseToken"))),
        platform="google", subject_key=subject["key"], source="webhook",
        observed_ms=occurred_ms, received_ms=received_ms, kind=kind, product_id=product_id,
        app_user_id=app_user_id, package_name=_text(data.get("packageName")),
        event_type=event, event_reason=reason, attesto_event_id=event_id,
        latest_ref=_text(note.get("purchaseToken")) or subject["key"],
        # Google notifications carry no expiry: re-verify the newest token at once.
        poll_now=True, announces_period=event in PERIOD_EVENTS, state=state,
        state_reason=reason if state is not None else None,
        auto_renew=row.auto_renew if row.touches and kind == "subscription" else None))


# Google events that begin a new paid period: its expiry comes with the re-verify, which
# must not announce the same renewal a second time (pipeline: period_pending).
PERIOD_EVENTS = frozenset({"subscription.renewed", "subscription.recovered"})


def void_snapshot(n: Normalized, subject_key: str, kind: str, received_ms: int) -> Snapshot:
    """What a Google voided notification says once its token names a purchase: the void is
    recorded and relayed, and Play's live state, re-fetched at once, decides the purchase
    (RTDN reference: `orderId` may be an earlier renewal order; `refundType` 2 is a
    quantity-based partial refund). Only a full refund (1) can end it: the re-fetch that
    finds no access then makes it `refunded` (pipeline)."""
    voided = n.voided or {}
    refund_type = _int(voided.get("refundType"))
    order_id = _text(voided.get("orderId"))
    fact = void_fact(order_id, refund_type, n.occurred_ms)
    return Snapshot(platform=n.source, subject_key=subject_key, source="webhook",
                    observed_ms=n.occurred_ms, received_ms=received_ms, kind=kind,
                    app_user_id=n.app_user_id, event_type=n.event, event_reason=n.reason,
                    attesto_event_id=n.event_id, record_only=True, poll_now=True,
                    voided=refund_type != 2,
                    extra={"order_id": order_id, "refund_type": refund_type,
                           "product_type": _int(voided.get("productType"))},
                    note=InputNote("voided", str(refund_type) if refund_type else None,
                                   order_id),
                    transactions=(fact,) if fact is not None else ())
