"""Attesto's webhook deliveries as the simulator builds them: the event vocabulary (§5.2),
the envelope in wire order (§5.1), Apple and Google payloads (§5.5), the headers and the
signature (§4), and posting one to a receiver."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import aiohttp

from relay.attesto.signature import sign_attesto
from relay.attesto.sim_records import (
    AppleTransaction,
    GooglePurchase,
    compact,
    jsonb_order,
    unsigned_jws,
)
from relay.core import ids
from relay.core.domain import iso

# Apple notificationType[:subtype] -> (event, reason); Attesto's normalize.ts (§5.2).
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

# Google subscriptionNotification.notificationType -> (event, reason).
GOOGLE_SUB_EVENTS: dict[int, tuple[str, str | None]] = {
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

GOOGLE_PRODUCT_EVENTS = {1: "product.purchased", 2: "product.canceled"}


def apple_event_for(notification_type: str, subtype: str | None) -> tuple[str, str | None]:
    """Attesto's lookup: TYPE:SUBTYPE, then bare TYPE (reason dropped), else unknown."""
    if subtype and f"{notification_type}:{subtype}" in APPLE_EVENTS:
        return APPLE_EVENTS[f"{notification_type}:{subtype}"]
    if notification_type in APPLE_EVENTS:
        event, reason = APPLE_EVENTS[notification_type]
        return (event, reason if not subtype else None)
    return ("unknown", None)


class WebhookBuilder:
    """Builds, signs and posts deliveries for an `AttestoSimulator` (its fields below)."""

    tenant_id: str
    bundle_id: str
    package_name: str
    webhook_secret: str
    calls: list[tuple[str, dict[str, Any], dict[str, str]]]

    def envelope(self, *, event: str, reason: str | None, platform_event: str, source: str,
                 subject: dict[str, Any] | None, app_user_id: str | None,
                 data: dict[str, Any], raw: dict[str, Any], external_id: str | None = None,
                 event_id: str | None = None, received_ms: int | None = None) -> bytes:
        """One delivery body, keys in Attesto's wire order (§5.1), compact."""
        now_ms = received_ms if received_ms is not None else int(time.time() * 1000)
        return compact({
            "event": event, "reason": reason, "platformEvent": platform_event,
            "eventId": event_id or f"evt_{ids.ulid(now_ms)}",
            "externalId": external_id or ids.ulid(now_ms).lower(),
            "timestamp": iso(now_ms), "tenantId": self.tenant_id, "source": source,
            "subject": subject, "appUserId": app_user_id,
            "data": jsonb_order(data), "raw": jsonb_order(raw),
        })

    def apple_webhook(self, notification_type: str, txn: AppleTransaction | None,
                      subtype: str | None = None, signed_ms: int | None = None,
                      auto_renew: bool | None = None, status: int | None = None,
                      event_id: str | None = None) -> bytes:
        event, reason = apple_event_for(notification_type, subtype)
        signed = signed_ms if signed_ms is not None else int(time.time() * 1000)
        inner: dict[str, Any] = {"bundleId": self.bundle_id, "appAppleId": 1234567890,
                                 "bundleVersion": "42",
                                 "environment": "Sandbox" if (txn is None or
                                                              txn.environment == "sandbox")
                                 else "Production"}
        subject = None
        if txn is not None:
            inner["signedTransactionInfo"] = unsigned_jws(txn.decoded())
            if auto_renew is not None:
                inner["signedRenewalInfo"] = unsigned_jws({
                    "originalTransactionId": txn.original_transaction_id,
                    "autoRenewStatus": 1 if auto_renew else 0,
                    "autoRenewProductId": txn.product_id, "signedDate": signed})
            if status is not None:
                inner["status"] = status
            kind = ("subscription" if txn.type in ("Auto-Renewable Subscription",
                                                   "Non-Renewing Subscription") else "product")
            subject = {"key": txn.original_transaction_id, "productId": txn.product_id,
                       "type": kind}
        uuid = ids.app_user_uuid()
        data = {"notificationType": notification_type, "notificationUUID": uuid,
                "version": "2.0", "signedDate": signed, "data": inner}
        if subtype:
            data["subtype"] = subtype
        platform_event = "apple." + (f"{notification_type}.{subtype}" if subtype
                                     else notification_type).lower()
        if event == "test":
            platform_event = "apple.test"
        if event == "unknown":
            platform_event = "apple.unknown"
        return self.envelope(
            event=event, reason=reason, platform_event=platform_event, source="apple",
            subject=subject, app_user_id=txn.app_account_token if txn else None, data=data,
            raw={"signedPayload": unsigned_jws(data)}, external_id=uuid, event_id=event_id)

    def google_webhook(self, notification_type: int | None, purchase: GooglePurchase | None,
                       event_time_ms: int | None = None, root_token: str | None = None,
                       kind: str = "subscription", event_id: str | None = None) -> bytes:
        """A Google RTDN delivery; notification_type None makes a test notification."""
        t = event_time_ms if event_time_ms is not None else int(time.time() * 1000)
        data: dict[str, Any] = {"version": "1.0", "packageName": self.package_name,
                                "eventTimeMillis": str(t)}
        subject, app_user = None, None
        if purchase is None or notification_type is None:
            data["testNotification"] = {"version": "1.0"}
            event, reason, platform_event = "test", None, "google.test"
        elif kind == "voided":
            data["voidedPurchaseNotification"] = {"purchaseToken": purchase.token,
                                                  "orderId": f"GPA.{purchase.token[-8:]}",
                                                  "productType": 1, "refundType": 1}
            event, reason, platform_event = "subscription.refunded", None, "google.voided"
        elif kind == "product":
            data["oneTimeProductNotification"] = {"version": "1.0",
                                                  "notificationType": notification_type,
                                                  "purchaseToken": purchase.token,
                                                  "sku": purchase.product_id}
            event = GOOGLE_PRODUCT_EVENTS.get(notification_type, "unknown")
            reason = None
            platform_event = f"google.product.{notification_type}"
            subject = {"key": purchase.token, "productId": purchase.product_id,
                       "type": "product"}
        else:
            data["subscriptionNotification"] = {"version": "1.0",
                                                "notificationType": notification_type,
                                                "purchaseToken": purchase.token,
                                                "subscriptionId": purchase.product_id}
            event, reason = GOOGLE_SUB_EVENTS.get(notification_type, ("unknown", None))
            platform_event = f"google.subscription.{notification_type}"
            subject = {"key": root_token or purchase.token, "productId": purchase.product_id,
                       "type": "subscription"}
            app_user = purchase.account_id
        message_id = str(int(t) * 1000 + len(self.calls))
        raw = {"message": {"data": base64.b64encode(compact(data)).decode(),
                           "messageId": message_id, "publishTime": iso(t)}}
        return self.envelope(event=event, reason=reason, platform_event=platform_event,
                             source="google", subject=subject, app_user_id=app_user, data=data,
                             raw=raw, external_id=message_id, event_id=event_id)

    def headers_for(self, body: bytes, t: int | None = None,
                    secret: str | None = None) -> dict[str, str]:
        """The exact headers Attesto's dispatcher sends with `body` (§4.1)."""
        ts = int(time.time()) if t is None else t
        doc = json.loads(body)
        return {"Content-Type": "application/json", "X-Attesto-Event": doc["event"],
                "X-Attesto-Event-Id": doc["eventId"], "X-Attesto-Timestamp": str(ts),
                "X-Attesto-Signature": sign_attesto(secret or self.webhook_secret, ts, body)}

    async def deliver(self, session: aiohttp.ClientSession, url: str, body: bytes,
                      t: int | None = None, secret: str | None = None) -> tuple[int, bytes]:
        """POST one signed delivery to `url`; return (status, response body)."""
        async with session.post(url, data=body, headers=self.headers_for(body, t, secret),
                                allow_redirects=False) as resp:
            return resp.status, await resp.read()
