"""A scripted loopback Attesto for the lifecycle corpus: it answers each verify with exactly
the store answer the scenario step set, and wraps store notifications in Attesto's webhook
envelope, as attesto-contract.md says (§2 verify bodies, §4.2 signature, §5 envelope,
§5.2 event/reason mapping). It shares nothing with relay's own simulator.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.lifecycle.stores import PACKAGE, unsigned_jws

API_KEY = "attesto_test_" + "L" * 43
SECRET = "whsec-lifecycle-0123456789abcdefghijklmnopqrstu"
TENANT = "tenant_01JQ7ZTRB4N6X8D2F5H9K3M1PA"

# attesto-contract §5.2, Apple: TYPE:SUBTYPE first, then bare TYPE (reason dropped).
APPLE_EVENTS: dict[str, tuple[str, str | None]] = {
    "SUBSCRIBED": ("subscription.purchased", "initial"),
    "SUBSCRIBED:INITIAL_BUY": ("subscription.purchased", "initial"),
    "SUBSCRIBED:RESUBSCRIBE": ("subscription.purchased", "resubscribe"),
    "SUBSCRIBED:UPGRADE": ("subscription.upgraded", None),
    "SUBSCRIBED:DOWNGRADE": ("subscription.downgraded", None),
    "DID_RENEW": ("subscription.renewed", None),
    "DID_RENEW:BILLING_RECOVERY": ("subscription.recovered", None),
    "DID_CHANGE_RENEWAL_STATUS:AUTO_RENEW_DISABLED": (
        "subscription.cancellation_scheduled", None),
    "DID_CHANGE_RENEWAL_STATUS:AUTO_RENEW_ENABLED": ("subscription.cancellation_revoked", None),
    "EXPIRED": ("subscription.expired", None),
    "EXPIRED:VOLUNTARY": ("subscription.expired", "voluntary"),
    "EXPIRED:BILLING_RETRY": ("subscription.expired", "billing_retry"),
    "EXPIRED:PRODUCT_NOT_FOR_SALE": ("subscription.expired", "product_not_for_sale"),
    "REVOKE": ("subscription.revoked", None),
    "REFUND": ("subscription.refunded", None),
    "DID_FAIL_TO_RENEW": ("subscription.in_billing_retry", None),
    "DID_FAIL_TO_RENEW:GRACE_PERIOD": ("subscription.in_grace_period", None),
    "GRACE_PERIOD_EXPIRED": ("subscription.grace_period_expired", None),
    "DID_CHANGE_RENEWAL_PREF": ("subscription.renewal_pref_changed", None),
    "REFUND_DECLINED": ("subscription.refund_declined", None),
    "REFUND_REVERSED": ("subscription.refund_reversed", None),
    "PRICE_INCREASE": ("subscription.price_change_pending", None),
    "PRICE_INCREASE:PENDING": ("subscription.price_change_pending", None),
    "PRICE_INCREASE:ACCEPTED": ("subscription.price_change_accepted", None),
    "OFFER_REDEEMED": ("subscription.offer_redeemed", None),
    "RENEWAL_EXTENDED": ("subscription.renewal_extended", None),
    "RENEWAL_EXTENSION": ("subscription.renewal_extension_complete", None),
    "CONSUMPTION_REQUEST": ("subscription.consumption_request", None),
    "EXTERNAL_PURCHASE_TOKEN": ("subscription.external_purchase_token", None),
    "ONE_TIME_CHARGE": ("product.charged", None),
    "TEST": ("test", None),
}
# attesto-contract §5.2, Google subscription notification codes.
GOOGLE_EVENTS: dict[int, tuple[str, str | None]] = {
    1: ("subscription.recovered", None), 2: ("subscription.renewed", None),
    3: ("subscription.cancellation_scheduled", None), 4: ("subscription.purchased", "initial"),
    5: ("subscription.on_hold", None), 6: ("subscription.in_grace_period", None),
    7: ("subscription.cancellation_revoked", None), 8: ("subscription.price_change_accepted", None),
    9: ("subscription.deferred", None), 10: ("subscription.paused", None),
    11: ("subscription.pause_schedule_changed", None), 12: ("subscription.revoked", None),
    13: ("subscription.expired", None), 17: ("subscription.pending_purchase_canceled", None),
    19: ("subscription.price_change_updated", None),
    20: ("subscription.price_change_rejected", None),
}


def apple_event(notification_type: str, subtype: str | None) -> tuple[str, str | None]:
    if subtype and f"{notification_type}:{subtype}" in APPLE_EVENTS:
        return APPLE_EVENTS[f"{notification_type}:{subtype}"]
    if notification_type in APPLE_EVENTS:
        event, reason = APPLE_EVENTS[notification_type]
        return event, (None if subtype else reason)
    return "unknown", None


def _iso(ms: int) -> str:
    import datetime as dt
    t = dt.datetime.fromtimestamp(ms // 1000, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{t}.{ms % 1000:03d}Z"


def _jsonb(value: Any) -> Any:
    """PostgreSQL jsonb key order (§5.5: `data`/`raw` come back out of jsonb)."""
    if isinstance(value, dict):
        return {k: _jsonb(value[k]) for k in sorted(value, key=lambda k: (len(k), k))}
    if isinstance(value, list):
        return [_jsonb(v) for v in value]
    return value


def _compact(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def _payload(jws: Any) -> dict[str, Any]:
    if not isinstance(jws, str):
        return {}
    seg = jws.split(".")[1]
    value: dict[str, Any] = json.loads(base64.urlsafe_b64decode(seg + "=" * (-len(seg) % 4)))
    return value


def apple_envelope(notification: dict[str, Any], *, event_id: str, received_ms: int) -> bytes:
    """§5.1 envelope of an Apple notification: subject from the inner transaction."""
    event, reason = apple_event(notification["notificationType"], notification.get("subtype"))
    txn = _payload(notification.get("data", {}).get("signedTransactionInfo"))
    subject = None
    if txn.get("originalTransactionId"):
        kind = "subscription" if txn.get("type") in (
            "Auto-Renewable Subscription", "Non-Renewing Subscription") else "product"
        subject = {"key": txn["originalTransactionId"], "productId": txn.get("productId"),
                   "type": kind}
    platform_event = "apple." + ".".join(
        x.lower() for x in (notification["notificationType"], notification.get("subtype")) if x)
    if event == "unknown":
        platform_event = "apple.unknown"
    return _compact({
        "event": event, "reason": reason, "platformEvent": platform_event,
        "eventId": event_id, "externalId": notification["notificationUUID"],
        "timestamp": _iso(received_ms), "tenantId": TENANT, "source": "apple",
        "subject": subject, "appUserId": txn.get("appAccountToken"),
        "data": _jsonb(notification),
        "raw": {"signedPayload": unsigned_jws(notification)}})


def google_envelope(notification: dict[str, Any], *, event_id: str, received_ms: int,
                    root_token: str | None, app_user_id: str | None = None) -> bytes:
    """§5.1 envelope of a Google RTDN: subject key = the root of the token chain (§5.3),
    null for voided purchases; appUserId from Attesto's Play fetch (§5.4)."""
    sub = notification.get("subscriptionNotification")
    if sub is not None:
        event, reason = GOOGLE_EVENTS.get(sub["notificationType"], ("unknown", None))
        platform_event = f"google.subscription.{sub['notificationType']}"
        subject: dict[str, Any] | None = {"key": root_token or sub["purchaseToken"],
                                          "productId": sub["subscriptionId"],
                                          "type": "subscription"}
    elif "voidedPurchaseNotification" in notification:
        event, reason, platform_event, subject = ("subscription.refunded", None,
                                                  "google.voided", None)
        app_user_id = None
    else:
        event, reason, platform_event, subject = "test", None, "google.test", None
        app_user_id = None
    message_id = event_id[-12:]
    raw = {"message": {"data": base64.b64encode(_compact(notification)).decode(),
                       "messageId": message_id, "publishTime": _iso(received_ms)}}
    return _compact({
        "event": event, "reason": reason, "platformEvent": platform_event,
        "eventId": event_id, "externalId": message_id, "timestamp": _iso(received_ms),
        "tenantId": TENANT, "source": "google", "subject": subject, "appUserId": app_user_id,
        "data": _jsonb(notification), "raw": raw})


def signed_headers(body: bytes, t: int) -> dict[str, str]:
    """§4.1/§4.2: HMAC-SHA256 over `{t}.{body}` with the secret's UTF-8 bytes."""
    doc = json.loads(body)
    mac = hmac.new(SECRET.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return {"Content-Type": "application/json", "X-Attesto-Event": doc["event"],
            "X-Attesto-Event-Id": doc["eventId"], "X-Attesto-Timestamp": str(t),
            "X-Attesto-Signature": f"t={t},v1={mac}"}


def apple_verify_answer(txn: dict[str, Any]) -> dict[str, Any]:
    """§2.1 success body for one transaction (keys in wire order)."""
    env = "production" if txn.get("environment") == "Production" else "sandbox"

    def iso_or_none(key: str) -> str | None:
        return _iso(txn[key]) if txn.get(key) is not None else None

    return {"valid": True, "environment": env, "transaction": {
        "transactionId": txn["transactionId"],
        "originalTransactionId": txn["originalTransactionId"], "bundleId": txn["bundleId"],
        "productId": txn["productId"], "purchaseDate": iso_or_none("purchaseDate"),
        "originalPurchaseDate": iso_or_none("originalPurchaseDate"),
        "expiresDate": iso_or_none("expiresDate"), "type": txn["type"],
        "inAppOwnershipType": txn.get("inAppOwnershipType", "PURCHASED"),
        "quantity": txn.get("quantity", 1), "webOrderLineItemId": txn.get("webOrderLineItemId"),
        "revocationDate": iso_or_none("revocationDate"),
        "revocationReason": txn.get("revocationReason"), "offerType": None,
        "offerIdentifier": None, "appAccountToken": txn.get("appAccountToken"),
        "storefront": txn.get("storefront"), "storefrontId": txn.get("storefrontId"),
        "transactionReason": txn.get("transactionReason"), "currency": txn.get("currency"),
        "price": txn.get("price"), "signedTransactionInfo": unsigned_jws(txn),
        "rawDecodedPayload": txn},
        "appUserId": txn.get("appAccountToken"), "version": "lifecycle"}


def google_verify_answer(sub: dict[str, Any], token: str, product: str) -> dict[str, Any]:
    """§2.2 success body for a subscription token: the envelope reads line item 0."""
    line = sub["lineItems"][0]
    account = sub.get("externalAccountIdentifiers", {}).get("obfuscatedExternalAccountId")
    return {"valid": True, "purchase": {
        "kind": "androidpublisher#subscriptionPurchaseV2", "packageName": PACKAGE,
        "productId": product, "purchaseToken": token, "startTime": sub.get("startTime"),
        "expiryTime": line.get("expiryTime"),
        "autoRenewing": line.get("autoRenewingPlan", {}).get("autoRenewEnabled"),
        "priceCurrencyCode": None, "priceAmountMicros": None, "countryCode": "US",
        "paymentState": None, "acknowledgementState": None,
        "orderId": sub.get("latestOrderId"), "obfuscatedExternalAccountId": account,
        "rawResponse": sub}, "appUserId": account, "version": "lifecycle"}


@dataclass
class ScriptedAttesto:
    """Answers `POST /v1/{apple,google}/verify` with the answer the step set for that id."""

    apple: dict[str, dict[str, Any]] = field(default_factory=dict)  # transactionId -> txn
    google: dict[str, tuple[dict[str, Any], str]] = field(default_factory=dict)
    calls: list[tuple[str, str]] = field(default_factory=list)
    # Called before an answer is sent (a step that must happen while a call is in flight).
    before_answer: Callable[[str, str], Awaitable[None]] | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/apple/verify", self._apple)
        app.router.add_post("/v1/google/verify", self._google)
        return app

    def _auth(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bearer {API_KEY}"

    async def _apple(self, request: web.Request) -> web.Response:
        if not self._auth(request):
            return web.json_response({"valid": False, "error": "UNAUTHENTICATED",
                                      "message": "Invalid or revoked API key"}, status=401)
        body = await request.json()
        tid = body["transactionId"]
        self.calls.append(("apple", tid))
        if self.before_answer is not None:
            await self.before_answer("apple", tid)
        txn = self.apple.get(tid)
        if txn is None:
            return web.json_response({"valid": False, "error": "TRANSACTION_NOT_FOUND",
                                      "message": "Transaction not found",
                                      "version": "lifecycle"})
        return web.json_response(apple_verify_answer(txn))

    async def _google(self, request: web.Request) -> web.Response:
        if not self._auth(request):
            return web.json_response({"valid": False, "error": "UNAUTHENTICATED",
                                      "message": "Invalid or revoked API key"}, status=401)
        body = await request.json()
        token = body["purchaseToken"].strip()
        self.calls.append(("google", token))
        if self.before_answer is not None:
            await self.before_answer("google", token)
        found = self.google.get(token)
        if found is None:
            return web.json_response({"valid": False, "error": "PURCHASE_NOT_FOUND",
                                      "message": "Purchase token not found",
                                      "version": "lifecycle"})
        sub, product = found
        return web.json_response(google_verify_answer(sub, token, product))
