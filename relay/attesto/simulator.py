"""Attesto simulator: the verify API and signed webhook deliveries, as the contract says.

Shipped for tests and local development (`relay demo`), never enabled by `serve`.
It follows ../shared/attesto-contract.md: status codes, error envelope, key order,
`YYYY-MM-DDTHH:MM:SS.sssZ` timestamps, compact JSON, and `X-Attesto-Signature`.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from relay.attesto.signature import sign_attesto
from relay.core import ids
from relay.core.domain import iso

VERSION = "sim"
JSON_ERR = "application/json; charset=utf-8"

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


def compact(value: Any) -> bytes:
    """JSON.stringify: compact, non-ASCII left as is."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def jsonb_order(value: Any) -> Any:
    """Re-order keys as PostgreSQL jsonb does (shorter first, then bytewise)."""
    if isinstance(value, dict):
        return {k: jsonb_order(value[k]) for k in sorted(value, key=lambda k: (len(k.encode()),
                                                                               k.encode()))}
    if isinstance(value, list):
        return [jsonb_order(v) for v in value]
    return value


def unsigned_jws(payload: dict[str, Any]) -> str:
    """A JWS-shaped string (header.payload.sig); relay decodes it without verifying."""
    def seg(b: bytes) -> str:
        return base64.urlsafe_b64encode(b).rstrip(b"=").decode()
    return ".".join([seg(b'{"alg":"ES256","x5c":["..."]}'), seg(compact(payload)), seg(b"sig")])


@dataclass
class AppleTransaction:
    transaction_id: str
    original_transaction_id: str
    product_id: str
    expires_ms: int | None
    purchase_ms: int
    type: str = "Auto-Renewable Subscription"
    environment: str = "sandbox"
    app_account_token: str | None = None
    revocation_ms: int | None = None
    revocation_reason: int | None = None
    bundle_id: str = "com.example.app"
    signed_ms: int = 0

    def decoded(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "transactionId": self.transaction_id,
            "originalTransactionId": self.original_transaction_id,
            "bundleId": self.bundle_id, "productId": self.product_id,
            "purchaseDate": self.purchase_ms, "originalPurchaseDate": self.purchase_ms,
            "type": self.type, "inAppOwnershipType": "PURCHASED", "quantity": 1,
            "environment": "Sandbox" if self.environment == "sandbox" else "Production",
            "signedDate": self.signed_ms or self.purchase_ms,
            "transactionReason": "PURCHASE",
        }
        if self.expires_ms is not None:
            d["expiresDate"] = self.expires_ms
        if self.app_account_token:
            d["appAccountToken"] = self.app_account_token
        if self.revocation_ms is not None:
            d["revocationDate"] = self.revocation_ms
            d["revocationReason"] = self.revocation_reason or 0
        return d

    def normalized(self) -> dict[str, Any]:
        d = self.decoded()
        return {
            "transactionId": d["transactionId"],
            "originalTransactionId": d["originalTransactionId"], "bundleId": d["bundleId"],
            "productId": d["productId"], "purchaseDate": iso(d["purchaseDate"]),
            "originalPurchaseDate": iso(d["originalPurchaseDate"]),
            "expiresDate": iso(self.expires_ms), "type": d["type"],
            "inAppOwnershipType": "PURCHASED", "quantity": 1, "webOrderLineItemId": None,
            "revocationDate": iso(self.revocation_ms),
            "revocationReason": d.get("revocationReason"), "offerType": None,
            "offerIdentifier": None, "appAccountToken": self.app_account_token,
            "storefront": None, "storefrontId": None, "transactionReason": "PURCHASE",
            "currency": None, "price": None, "signedTransactionInfo": unsigned_jws(d),
            "rawDecodedPayload": d,
        }


@dataclass
class GooglePurchase:
    token: str
    product_id: str
    kind: str = "subscription"  # subscription | product
    state: str = "SUBSCRIPTION_STATE_ACTIVE"
    expiry_ms: int | None = None
    start_ms: int = 0
    auto_renew: bool | None = True
    base_plan_id: str | None = "monthly"
    linked_token: str | None = None
    account_id: str | None = None
    purchase_state: int = 0  # products: 0 purchased, 1 canceled, 2 pending
    consumption_state: int = 0
    test: bool = True

    def raw(self) -> dict[str, Any]:
        if self.kind == "product":
            return {"kind": "androidpublisher#productPurchase",
                    "purchaseTimeMillis": str(self.start_ms), "purchaseState": self.purchase_state,
                    "consumptionState": self.consumption_state, "acknowledgementState": 1,
                    "orderId": f"GPA.{self.token[-8:]}",
                    "obfuscatedExternalAccountId": self.account_id, "purchaseType": 0}
        line: dict[str, Any] = {"productId": self.product_id, "expiryTime": iso(self.expiry_ms)}
        if self.auto_renew is not None:
            line["autoRenewingPlan"] = {"autoRenewEnabled": self.auto_renew}
        if self.base_plan_id:
            line["offerDetails"] = {"basePlanId": self.base_plan_id}
        raw: dict[str, Any] = {
            "kind": "androidpublisher#subscriptionPurchaseV2", "regionCode": "US",
            "startTime": iso(self.start_ms), "subscriptionState": self.state,
            "latestOrderId": f"GPA.{self.token[-8:]}",
            "acknowledgementState": "ACKNOWLEDGEMENT_STATE_ACKNOWLEDGED", "lineItems": [line],
        }
        if self.linked_token:
            raw["linkedPurchaseToken"] = self.linked_token
        if self.account_id:
            raw["externalAccountIdentifiers"] = {"obfuscatedExternalAccountId": self.account_id}
        if self.test:
            raw["testPurchase"] = {}
        return raw


@dataclass
class Fault:
    status: int
    error: str | None = None
    message: str = ""
    details: dict[str, Any] | None = None
    retry_after: int | None = None
    raw_body: bytes | None = None
    delay_s: float = 0.0
    drop: bool = False  # close the connection without an answer


@dataclass
class AttestoSimulator:
    """A scriptable Attesto: add purchases, queue faults, build and sign webhooks."""

    api_key: str = "attesto_test_" + "A" * 43
    webhook_secret: str = "whsec-example-0123456789abcdefghijklmnopqrstuv"
    bundle_id: str = "com.example.app"
    package_name: str = "com.example.app"
    tenant_id: str = "tenant_01JQ7ZTRB4N6X8D2F5H9K3M1PA"
    apple: dict[str, AppleTransaction] = field(default_factory=dict)
    google: dict[str, GooglePurchase] = field(default_factory=dict)
    faults: deque[Fault] = field(default_factory=deque)
    calls: list[tuple[str, dict[str, Any], dict[str, str]]] = field(default_factory=list)
    delay_s: float = 0.0

    # ---- scripting ------------------------------------------------------------------

    def add_apple(self, **kw: Any) -> AppleTransaction:
        kw.setdefault("bundle_id", self.bundle_id)
        txn = AppleTransaction(**kw)
        self.apple[txn.transaction_id] = txn
        return txn

    def add_google(self, **kw: Any) -> GooglePurchase:
        purchase = GooglePurchase(**kw)
        self.google[purchase.token] = purchase
        return purchase

    def fail_next(self, status: int, times: int = 1, **kw: Any) -> None:
        for _ in range(times):
            self.faults.append(Fault(status, **kw))

    # ---- HTTP -------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/apple/verify", self._handle_apple)
        app.router.add_post("/v1/google/verify", self._handle_google)
        app.router.add_get("/health", self._handle_health)
        return app

    async def _handle_health(self, request: web.Request) -> web.Response:
        return self._json({"status": "ok"})

    def _json(self, body: dict[str, Any], status: int = 200,
              headers: dict[str, str] | None = None) -> web.Response:
        ctype = "application/json" if status == 200 else JSON_ERR
        return web.Response(body=compact(body), status=status, headers={
            "Content-Type": ctype, "X-Attesto-Version": VERSION, **(headers or {})})

    def _error(self, status: int, code: str, message: str,
               details: dict[str, Any] | None = None,
               headers: dict[str, str] | None = None) -> web.Response:
        body: dict[str, Any] = {"valid": False, "error": code, "message": message}
        if details:
            body["details"] = details
        return self._json(body, status, headers)

    async def _prelude(self, request: web.Request) -> tuple[dict[str, Any] | None,
                                                            web.StreamResponse | None]:
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            return None, self._error(401, "UNAUTHENTICATED",
                                     "Missing or malformed Authorization header")
        if auth[len("Bearer "):].strip() != self.api_key:
            return None, self._error(401, "UNAUTHENTICATED", "Invalid or revoked API key")
        if request.content_length is not None and request.content_length > 16384:
            return None, self._error(400, "INVALID_REQUEST", "Request body too large",
                                     {"maxBytes": 16384})
        try:
            body = json.loads(await request.read())
        except ValueError:
            body = None
        self.calls.append((request.path, body if isinstance(body, dict) else {},
                           dict(request.headers)))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.faults:
            fault = self.faults.popleft()
            if fault.delay_s:
                await asyncio.sleep(fault.delay_s)
            if fault.drop:
                assert request.transport is not None
                request.transport.close()
                return None, web.Response(status=500)
            if fault.raw_body is not None:
                return None, web.Response(body=fault.raw_body, status=fault.status,
                                          content_type="application/json")
            headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after else None
            details = fault.details
            if fault.error == "RATE_LIMITED" and fault.retry_after and details is None:
                details = {"retryAfterSeconds": fault.retry_after}
            return None, self._error(fault.status, fault.error or "INTERNAL_ERROR",
                                     fault.message or "An internal error occurred", details,
                                     headers)
        if not isinstance(body, dict):
            return None, self._error(400, "INVALID_REQUEST", "Invalid request body",
                                     {"issues": [{"path": [], "message": "Invalid JSON"}]})
        return body, None

    @staticmethod
    def _issues(body: dict[str, Any], spec: dict[str, tuple[int, int]]) -> list[dict[str, Any]]:
        issues = []
        for name, (lo, hi) in spec.items():
            v = body.get(name)
            if not isinstance(v, str):
                issues.append({"path": [name], "message": "Required"})
            elif not lo <= len(v.strip() if name != "transactionId" else v) <= hi:
                issues.append({"path": [name], "message": f"Must be {lo}-{hi} characters"})
        return issues

    async def _handle_apple(self, request: web.Request) -> web.StreamResponse:
        body, early = await self._prelude(request)
        if early is not None:
            return early
        assert body is not None
        issues = self._issues(body, {"transactionId": (1, 128)})
        env = body.get("environment")
        if env is not None and env not in ("production", "sandbox"):
            issues.append({"path": ["environment"], "message": "Invalid enum value"})
        if issues:
            return self._error(400, "INVALID_REQUEST", "Invalid request body",
                               {"issues": issues})
        txn = self.apple.get(body["transactionId"])
        if txn is None or (env is not None and env != txn.environment):
            msg = ("Transaction not found" if env else
                   "Transaction not found in any environment (production or sandbox)")
            return self._json({"valid": False, "error": "TRANSACTION_NOT_FOUND",
                               "message": msg, "version": VERSION})
        if txn.bundle_id != self.bundle_id:
            return self._json({"valid": False, "error": "BUNDLE_ID_MISMATCH",
                               "message": f'Transaction belongs to bundleId "{txn.bundle_id}" '
                                          f'but tenant is configured for "{self.bundle_id}"',
                               "version": VERSION})
        return self._json({"valid": True, "environment": txn.environment,
                           "transaction": txn.normalized(), "appUserId": txn.app_account_token,
                           "version": VERSION})

    async def _handle_google(self, request: web.Request) -> web.StreamResponse:
        body, early = await self._prelude(request)
        if early is not None:
            return early
        assert body is not None
        issues = self._issues(body, {"packageName": (1, 200), "productId": (1, 200),
                                     "purchaseToken": (1, 4096)})
        if body.get("type") not in ("subscription", "product"):
            issues.append({"path": ["type"], "message": "Invalid enum value"})
        if issues:
            return self._error(400, "INVALID_REQUEST", "Invalid request body",
                               {"issues": issues})
        package, product = body["packageName"].strip(), body["productId"].strip()
        token = body["purchaseToken"].strip()
        if package != self.package_name:
            return self._json({"valid": False, "error": "PACKAGE_NAME_MISMATCH",
                               "message": f'Tenant is configured for "{self.package_name}" '
                                          f'but request was for "{package}"',
                               "version": VERSION})
        p = self.google.get(token)
        if p is None or p.kind != body["type"]:
            return self._json({"valid": False, "error": "PURCHASE_NOT_FOUND",
                               "message": "Purchase token not found", "version": VERSION})
        raw = p.raw()
        if p.kind == "product":
            purchase: dict[str, Any] = {
                "kind": "androidpublisher#productPurchase", "packageName": package,
                "productId": product, "purchaseToken": token,
                "purchaseTimeMillis": raw["purchaseTimeMillis"],
                "purchaseState": raw["purchaseState"],
                "consumptionState": raw["consumptionState"],
                "acknowledgementState": raw["acknowledgementState"], "orderId": raw["orderId"],
                "obfuscatedExternalAccountId": p.account_id, "rawResponse": raw}
        else:
            line = raw["lineItems"][0]
            purchase = {
                "kind": "androidpublisher#subscriptionPurchaseV2", "packageName": package,
                "productId": product, "purchaseToken": token, "startTime": raw["startTime"],
                "expiryTime": line["expiryTime"],
                "autoRenewing": line.get("autoRenewingPlan", {}).get("autoRenewEnabled"),
                "priceCurrencyCode": None, "priceAmountMicros": None, "countryCode": "US",
                "paymentState": None, "acknowledgementState": None,
                "orderId": raw["latestOrderId"], "obfuscatedExternalAccountId": p.account_id,
                "rawResponse": raw}
        return self._json({"valid": True, "purchase": purchase, "appUserId": p.account_id,
                           "version": VERSION})

    # ---- webhooks ---------------------------------------------------------------------

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
