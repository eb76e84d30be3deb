"""The simulator's store records: an Apple transaction and a Google purchase, as Attesto's
verify answers and the stores' payloads show them (attesto-contract §2, §5.5), and the
JSON and JWS shapes they are written in."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

from relay.core.domain import iso


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
