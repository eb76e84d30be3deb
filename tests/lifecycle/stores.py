"""What Apple and Google send, in the stores' documented shapes, built from their own models.

Apple payloads are built with Apple's `app-store-server-library` models (the types the
"App Store Server Notifications V2" and "App Store Server API" pages define:
ResponseBodyV2DecodedPayload, data, JWSTransactionDecodedPayload,
JWSRenewalInfoDecodedPayload, status) and serialized by the library's own converter.
Google payloads follow the androidpublisher v3 discovery document that
`google-api-python-client` ships (SubscriptionPurchaseV2 and its enums); every object built
here is checked against that document's schema, so a field the API does not define fails.
Nothing here imports relay.
"""

from __future__ import annotations

import base64
import json
import os
from functools import cache
from typing import Any

import googleapiclient
from appstoreserverlibrary.models.AutoRenewStatus import AutoRenewStatus
from appstoreserverlibrary.models.Data import Data
from appstoreserverlibrary.models.Environment import Environment
from appstoreserverlibrary.models.InAppOwnershipType import InAppOwnershipType
from appstoreserverlibrary.models.JWSRenewalInfoDecodedPayload import (
    JWSRenewalInfoDecodedPayload,
)
from appstoreserverlibrary.models.JWSTransactionDecodedPayload import (
    JWSTransactionDecodedPayload,
)
from appstoreserverlibrary.models.LibraryUtility import _get_cattrs_converter
from appstoreserverlibrary.models.NotificationTypeV2 import NotificationTypeV2
from appstoreserverlibrary.models.ResponseBodyV2DecodedPayload import (
    ResponseBodyV2DecodedPayload,
)
from appstoreserverlibrary.models.RevocationReason import RevocationReason
from appstoreserverlibrary.models.Status import Status
from appstoreserverlibrary.models.Subtype import Subtype
from appstoreserverlibrary.models.TransactionReason import TransactionReason
from appstoreserverlibrary.models.Type import Type

BUNDLE_ID = "com.example.app"
PACKAGE = "com.example.app"
DAY_MS = 86_400_000


def _unstructure(model: Any) -> dict[str, Any]:
    value: dict[str, Any] = _get_cattrs_converter(type(model)).unstructure(model)
    return value


def unsigned_jws(payload: dict[str, Any]) -> str:
    """A compact JWS carrying `payload` (Attesto verified the outer one; relay decodes)."""
    def seg(b: bytes) -> str:
        return base64.urlsafe_b64encode(b).rstrip(b"=").decode()
    body = json.dumps(payload, separators=(",", ":")).encode()
    return ".".join([seg(b'{"alg":"ES256","x5c":["MIIB"]}'), seg(body), seg(b"signature")])


# ---- Apple ------------------------------------------------------------------------------

def apple_transaction(tid: str, otid: str, product: str, purchase_ms: int,
                      expires_ms: int | None, *, signed_ms: int | None = None,
                      revocation_ms: int | None = None, app_account_token: str | None = None,
                      production: bool = True, renewal: bool = False,
                      family_shared: bool = False, upgraded: bool = False,
                      kind: Type = Type.AUTO_RENEWABLE_SUBSCRIPTION) -> dict[str, Any]:
    """JWSTransactionDecodedPayload ("App Store Server API" › JWSTransactionDecodedPayload):
    one period of an auto-renewable subscription, `expiresDate` its end, `revocationDate`
    set when the App Store refunded or revoked it."""
    txn = JWSTransactionDecodedPayload(
        originalTransactionId=otid, transactionId=tid, webOrderLineItemId=f"{tid}0",
        bundleId=BUNDLE_ID, productId=product, subscriptionGroupIdentifier="20000001",
        purchaseDate=purchase_ms, originalPurchaseDate=purchase_ms, expiresDate=expires_ms,
        quantity=1, type=kind,
        inAppOwnershipType=(InAppOwnershipType.FAMILY_SHARED if family_shared
                            else InAppOwnershipType.PURCHASED),
        signedDate=signed_ms or purchase_ms,
        environment=Environment.PRODUCTION if production else Environment.SANDBOX,
        transactionReason=TransactionReason.RENEWAL if renewal else TransactionReason.PURCHASE,
        storefront="USA", storefrontId="143441", currency="USD", price=9990,
        appAccountToken=app_account_token, isUpgraded=True if upgraded else None)
    if revocation_ms is not None:
        txn.revocationDate = revocation_ms
        txn.revocationReason = RevocationReason.REFUNDED_DUE_TO_ISSUE
    return _unstructure(txn)


def apple_renewal(otid: str, product: str, *, auto_renew: bool, signed_ms: int,
                  grace_expires_ms: int | None = None, in_billing_retry: bool | None = None,
                  renewal_ms: int | None = None, production: bool = True,
                  auto_renew_product: str | None = None) -> dict[str, Any]:
    """JWSRenewalInfoDecodedPayload: `autoRenewStatus`, `isInBillingRetryPeriod`,
    `gracePeriodExpiresDate` ("the time when the billing grace period ... expires")."""
    info = JWSRenewalInfoDecodedPayload(
        originalTransactionId=otid, productId=product,
        autoRenewProductId=auto_renew_product or product,
        autoRenewStatus=AutoRenewStatus.ON if auto_renew else AutoRenewStatus.OFF,
        isInBillingRetryPeriod=in_billing_retry, gracePeriodExpiresDate=grace_expires_ms,
        signedDate=signed_ms, renewalDate=renewal_ms,
        environment=Environment.PRODUCTION if production else Environment.SANDBOX)
    return _unstructure(info)


def apple_notification(notification_type: str, subtype: str | None, *, uuid: str,
                       signed_ms: int, txn: dict[str, Any] | None,
                       renewal: dict[str, Any] | None = None, status: int | None = None,
                       production: bool = True) -> dict[str, Any]:
    """ResponseBodyV2DecodedPayload (the decoded `signedPayload`), with `data.status`
    ("App Store Server Notifications" › status: 1 active, 2 expired, 3 billing retry,
    4 billing grace period, 5 revoked)."""
    data = Data(environment=Environment.PRODUCTION if production else Environment.SANDBOX,
                appAppleId=1234567890, bundleId=BUNDLE_ID, bundleVersion="42",
                signedTransactionInfo=unsigned_jws(txn) if txn is not None else None,
                signedRenewalInfo=unsigned_jws(renewal) if renewal is not None else None,
                status=Status(status) if status is not None else None)
    payload = ResponseBodyV2DecodedPayload(
        notificationType=NotificationTypeV2(notification_type),
        subtype=Subtype(subtype) if subtype else None, notificationUUID=uuid,
        data=data, version="2.0", signedDate=signed_ms)
    return _unstructure(payload)


# ---- Google -----------------------------------------------------------------------------

@cache
def discovery() -> dict[str, Any]:
    """The androidpublisher v3 discovery document google-api-python-client ships."""
    path = os.path.join(os.path.dirname(googleapiclient.__file__), "discovery_cache",
                        "documents", "androidpublisher.v3.json")
    with open(path, encoding="utf-8") as fh:
        doc: dict[str, Any] = json.load(fh)
    return doc


def subscription_states() -> list[str]:
    """SubscriptionPurchaseV2.subscriptionState's documented values."""
    prop = discovery()["schemas"]["SubscriptionPurchaseV2"]["properties"]["subscriptionState"]
    return list(prop["enum"])


def check_schema(value: Any, schema: str) -> None:
    """Fail if `value` uses a field or enum value the discovery document does not define."""
    spec = discovery()["schemas"][schema]
    props = spec["properties"]
    for key, item in value.items():
        assert key in props, f"{schema}.{key} is not a field of the Play Developer API"
        _check_property(item, props[key], f"{schema}.{key}")


def _check_property(item: Any, prop: dict[str, Any], where: str) -> None:
    if "$ref" in prop:
        assert isinstance(item, dict), where
        check_schema(item, prop["$ref"])
    elif prop.get("type") == "array":
        assert isinstance(item, list), where
        for element in item:
            _check_property(element, prop["items"], where)
    elif "enum" in prop:
        assert item in prop["enum"], f"{where}: {item!r} is not one of {prop['enum']}"


def play_subscription(state: str, *, product: str, expiry_ms: int | None,
                      start_ms: int, auto_renew: bool | None = True,
                      base_plan: str = "monthly", order_id: str = "GPA.0000-0000-0000-00000",
                      linked: str | None = None, test: bool = False,
                      account_id: str | None = None, replaced: bool = False,
                      canceled_by_user: bool = False) -> dict[str, Any]:
    """purchases.subscriptionsv2 › SubscriptionPurchaseV2: `subscriptionState`, one
    `lineItems[]` (its `expiryTime`: the end of access, the grace end while in grace),
    `linkedPurchaseToken`, `testPurchase` (present only for a test purchase),
    `canceledStateContext.replacementCancellation` (the token was replaced)."""
    line: dict[str, Any] = {"productId": product, "offerDetails": {"basePlanId": base_plan},
                            "latestSuccessfulOrderId": order_id}
    if expiry_ms is not None:
        line["expiryTime"] = _rfc3339(expiry_ms)
    if auto_renew is not None:
        line["autoRenewingPlan"] = {"autoRenewEnabled": auto_renew}
    sub: dict[str, Any] = {
        "kind": "androidpublisher#subscriptionPurchaseV2", "regionCode": "US",
        "startTime": _rfc3339(start_ms), "subscriptionState": state,
        "acknowledgementState": "ACKNOWLEDGEMENT_STATE_ACKNOWLEDGED", "lineItems": [line]}
    if linked:
        sub["linkedPurchaseToken"] = linked
    if test:
        sub["testPurchase"] = {}
    if account_id:
        sub["externalAccountIdentifiers"] = {"obfuscatedExternalAccountId": account_id}
    if replaced:
        sub["canceledStateContext"] = {"replacementCancellation": {}}
    elif canceled_by_user:
        sub["canceledStateContext"] = {"userInitiatedCancellation": {}}
    check_schema(sub, "SubscriptionPurchaseV2")
    return sub


def _rfc3339(ms: int) -> str:
    import datetime as dt
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# "Real-time developer notifications reference" › SubscriptionNotification.notificationType,
# the codes Attesto maps (attesto-contract §5.2); any other code arrives as `unknown`.
RTDN_SUBSCRIPTION = {
    1: "SUBSCRIPTION_RECOVERED", 2: "SUBSCRIPTION_RENEWED", 3: "SUBSCRIPTION_CANCELED",
    4: "SUBSCRIPTION_PURCHASED", 5: "SUBSCRIPTION_ON_HOLD", 6: "SUBSCRIPTION_IN_GRACE_PERIOD",
    7: "SUBSCRIPTION_RESTARTED", 8: "SUBSCRIPTION_PRICE_CHANGE_CONFIRMED",
    9: "SUBSCRIPTION_DEFERRED", 10: "SUBSCRIPTION_PAUSED",
    11: "SUBSCRIPTION_PAUSE_SCHEDULE_CHANGED", 12: "SUBSCRIPTION_REVOKED",
    13: "SUBSCRIPTION_EXPIRED", 17: "SUBSCRIPTION_PENDING_PURCHASE_CANCELED",
    19: "SUBSCRIPTION_PRICE_CHANGE_UPDATED", 20: "SUBSCRIPTION_PRICE_STEP_UP_CONSENT_UPDATED",
}


def rtdn_subscription(code: int, token: str, product: str, event_ms: int) -> dict[str, Any]:
    """DeveloperNotification with a SubscriptionNotification (RTDN reference)."""
    return {"version": "1.0", "packageName": PACKAGE, "eventTimeMillis": str(event_ms),
            "subscriptionNotification": {"version": "1.0", "notificationType": code,
                                         "purchaseToken": token, "subscriptionId": product}}


def rtdn_voided(token: str, order_id: str, event_ms: int, *, product_type: int = 1,
                refund_type: int = 1) -> dict[str, Any]:
    """DeveloperNotification with a VoidedPurchaseNotification: `orderId` (the order voided:
    the first purchase or one renewal order), `productType` (1 subscription, 2 one-time),
    `refundType` (1 full refund, 2 quantity-based partial refund)."""
    return {"version": "1.0", "packageName": PACKAGE, "eventTimeMillis": str(event_ms),
            "voidedPurchaseNotification": {"purchaseToken": token, "orderId": order_id,
                                           "productType": product_type,
                                           "refundType": refund_type}}
