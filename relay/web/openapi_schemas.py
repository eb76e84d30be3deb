"""JSON Schemas (OpenAPI 3.1 `components.schemas`) of every body relay reads or writes."""

from __future__ import annotations

from typing import Any

Schema = dict[str, Any]

STR: Schema = {"type": "string"}
INT: Schema = {"type": "integer"}
BOOL: Schema = {"type": "boolean"}
TIME: Schema = {"type": ["string", "null"], "format": "date-time"}
NSTR: Schema = {"type": ["string", "null"]}
NINT: Schema = {"type": ["integer", "null"]}
PLATFORM: Schema = {"type": "string", "enum": ["apple", "google"]}


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def obj(props: dict[str, Schema], required: tuple[str, ...] | None = None,
        extra: bool = True) -> Schema:
    """An object; every property is required unless `required` names a subset."""
    out: Schema = {"type": "object", "properties": props,
                   "required": list(props if required is None else required)}
    if not extra:
        out["additionalProperties"] = False
    return out


def arr(item: Schema, lo: int | None = None, hi: int | None = None) -> Schema:
    out: Schema = {"type": "array", "items": item}
    if lo is not None:
        out["minItems"] = lo
    if hi is not None:
        out["maxItems"] = hi
    return out


def text(hi: int) -> Schema:
    return {"type": "string", "minLength": 1, "maxLength": hi}


_ENV: Schema = {"type": "string", "enum": ["production", "sandbox"]}
_KIND: Schema = {"type": "string", "enum": ["subscription", "product", "consumable"]}
_APPLE_V1 = {"transaction_id": text(128), "product_id": text(200), "environment": _ENV}
_GOOGLE_V1 = {"package_name": text(200), "product_id": text(200),
              "purchase_token": text(4096), "type": _KIND}
_APPLE_IAP = {"transactionId": text(128), "productId": text(200), "environment": _ENV}
_GOOGLE_IAP = {"packageName": text(200), "productId": text(200),
               "purchaseToken": text(4096), "type": _KIND}
_QUEUE = obj({"pending": INT, "held": INT, "dead": INT, "failing": INT,
              "oldest_pending_age_s": NINT})
_DELIVERY_PROPS: dict[str, Schema] = {
    "id": INT, "event_id": STR, "event_type": STR, "endpoint": STR, "subject": STR,
    "sequence": INT,
    "status": {"type": "string", "enum": ["pending", "held", "delivered", "dead"]},
    "attempts": INT, "next_attempt_at": TIME, "in_flight": BOOL, "last_status": NINT,
    "last_error": NSTR, "created_at": TIME, "delivered_at": TIME}
_ATTEMPT = obj({"started_at": TIME, "duration_ms": NINT, "status_code": NINT, "error": NSTR,
                "response_excerpt": NSTR})
_IAP_ENT = obj({"key": STR, "productId": NSTR, "expiresAt": TIME, "platform": PLATFORM})
_IAP_TX = obj({"id": NSTR, "productId": NSTR, "expiresAt": TIME, "verifiedAt": TIME})
_IAP_ITEM = obj({"index": INT, "platform": PLATFORM, "valid": {"type": ["boolean", "null"]},
                 "granted": arr(STR), "reason": NSTR})
_IAP_FAILURE = {"valid": {"const": False}, "error": STR, "message": STR}

SCHEMAS: dict[str, Schema] = {
    "Error": obj({"error": obj({"code": STR, "message": STR, "details": {}},
                               ("code", "message"))}),
    "Health": obj({"status": STR, "version": STR}),
    "Ready": obj({"status": {"type": "string", "enum": ["ok", "degraded"]},
                  "checks": obj({"store": {"type": "string", "enum": ["ok", "down"]}})}),
    "Purchase": obj({
        "platform": PLATFORM, "subject_key": STR, "kind": STR, "user_id": NSTR,
        "app_user_id": NSTR, "product_id": NSTR, "base_plan_id": NSTR, "state": STR,
        "state_reason": NSTR, "environment": NSTR, "expires_at": TIME,
        "auto_renew": {"type": ["boolean", "null"]}, "updated_at": TIME,
        "grace_expires_at": TIME}),
    "Entitlement": obj({"key": STR, "product_id": NSTR, "expires_at": TIME,
                        "platform": PLATFORM, "subject_key": STR}),
    "VerifyAppleRequest": obj({"user_id": text(256), **_APPLE_V1},
                              ("user_id", "transaction_id")),
    "VerifyGoogleRequest": obj({"user_id": text(256), **_GOOGLE_V1},
                               ("user_id", "package_name", "product_id", "purchase_token",
                                "type")),
    "RestoreRequest": obj({"user_id": text(256), "transactions": arr({"oneOf": [
        obj({"platform": {"const": "apple"}, **_APPLE_V1}, ("platform", "transaction_id")),
        obj({"platform": {"const": "google"}, **_GOOGLE_V1},
            ("platform", "package_name", "product_id", "purchase_token"))]}, 1, 100)}),
    "VerifyResult": {"oneOf": [
        obj({"valid": {"const": True}, "purchase": ref("Purchase"), "granted": arr(STR),
             "entitlements": arr(ref("Entitlement"))}),
        obj({"valid": {"const": False}, "error": STR, "message": NSTR,
             "entitlements": arr(ref("Entitlement"))})]},
    "RestoreResult": obj({"user_id": STR, "entitlements": arr(ref("Entitlement")),
                          "results": arr(obj({
                              "index": INT, "platform": PLATFORM,
                              "valid": {"type": ["boolean", "null"]}, "granted": arr(STR),
                              "reason": NSTR, "purchase": ref("Purchase"), "message": NSTR,
                              "error": obj({"code": STR, "message": STR})},
                              ("index", "platform", "valid", "granted", "reason")))}),
    "Entitlements": obj({"user_id": STR, "entitlements": arr(ref("Entitlement"))}),
    "AppUserId": obj({"uuid": {"type": "string", "format": "uuid"}}),
    "IapVerifyAppleRequest": obj(_APPLE_IAP, ("transactionId",)),
    "IapVerifyGoogleRequest": obj(_GOOGLE_IAP, ("packageName", "productId", "purchaseToken",
                                                "type")),
    "IapRestoreRequest": obj({"transactions": arr({"oneOf": [
        obj({"platform": {"const": "apple"}, **_APPLE_IAP}, ("platform", "transactionId")),
        obj({"platform": {"const": "google"}, **_GOOGLE_IAP},
            ("platform", "packageName", "productId", "purchaseToken"))]}, 1, 100)}),
    "IapVerifyResult": {"oneOf": [
        obj({"valid": {"const": True}, "transaction": _IAP_TX, "entitlements": arr(_IAP_ENT)}),
        obj(_IAP_FAILURE)]},
    "IapRestoreResult": {"oneOf": [
        obj({"valid": {"const": True}, "transaction": _IAP_TX, "entitlements": arr(_IAP_ENT),
             "results": arr(_IAP_ITEM)}),
        obj({**_IAP_FAILURE, "results": arr(_IAP_ITEM)})]},
    "IapEntitlements": obj({"entitlements": arr(_IAP_ENT)}),
    "IapProducts": obj({"products": arr(obj({"id": STR, "type": _KIND,
                                              "androidPlanId": STR}, ("id", "type")))}),
    "AttestoDelivery": obj({"eventId": STR, "event": STR, "source": STR, "subject": {},
                            "data": {"type": "object"}}, ("eventId", "event", "source", "data")),
    "WebhookAck": obj({"status": {"type": "string", "enum": ["accepted", "duplicate"]}}),
    "Event": obj({
        "id": STR, "type": STR, "reason": NSTR, "occurred_at": TIME, "received_at": TIME,
        "source": STR, "platform": {"type": ["string", "null"], "enum": ["apple", "google", None]},
        "subject_key": NSTR, "user_id": NSTR, "app_user_id": NSTR, "product_id": NSTR,
        "environment": NSTR, "state": NSTR, "previous_state": NSTR, "expires_at": TIME,
        "entitlements": arr(STR), "sequence": NINT, "stale": BOOL, "attesto_event_id": NSTR},
        ("id", "type", "occurred_at", "received_at", "source")),
    "EventsPage": obj({"events": arr(ref("Event")),
                       "next": {"type": "string", "pattern": "^[0-9]+$"}}),
    "Endpoints": obj({"endpoints": arr(obj({
        "name": STR, "url": NSTR, "state": STR, "since": TIME, "events": arr(STR),
        "signing": arr(STR), "timeout_s": {"type": ["number", "null"]}, "in_flight": INT,
        "queue": _QUEUE}))}),
    "PauseResult": obj({"endpoint": STR, "state": {"const": "paused"}, "held": INT}),
    "ResumeResult": obj({"endpoint": STR, "state": STR, "released": INT}),
    "Delivery": obj(_DELIVERY_PROPS),
    "DeliveryDetail": obj({**_DELIVERY_PROPS, "history": arr(_ATTEMPT), "event": ref("Event")}),
    "DeliveriesPage": obj({"deliveries": arr(ref("Delivery")), "next_before": NSTR}),
    "RecoverRequest": obj({"since": {"type": ["string", "integer"]},
                           "until": {"type": ["string", "integer", "null"]},
                           "endpoint": NSTR, "dry_run": BOOL}, ("since",)),
    "RecoverResult": obj({"matched": INT, "reopened": INT, "dry_run": BOOL}),
    "ReplayRequest": obj({"endpoint": STR,
                          "subject": {"type": "string", "pattern": "^(apple|google):.+$"},
                          "since": {"type": ["string", "integer"]},
                          "until": {"type": ["string", "integer", "null"]},
                          "dry_run": BOOL}, ("endpoint",)),
    "ReplayResult": obj({"endpoint": STR, "matched": INT, "enqueued": INT, "held": BOOL,
                         "dry_run": BOOL, "truncated": BOOL}),
    "DueQueue": obj({"due": INT, "oldest_due_at": TIME, "overdue_s": NINT,
                     "scheduler": {"type": "string", "enum": ["running", "stopped"]}}),
    "ResyncRequest": {"oneOf": [obj({"platform": PLATFORM, "subject_key": text(4096)}),
                                obj({"user_id": text(256)}, ("user_id",))]},
    "ResyncResult": obj({"results": arr(obj({
        "platform": PLATFORM, "subject_key": STR,
        "outcome": {"type": "string", "enum": ["changed", "unchanged",
                                               "expired_renewal_not_seen", "no_state",
                                               "failed", "gone"]},
        "state": NSTR}))}),
}
