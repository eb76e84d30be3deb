"""Request bodies of the verify API (`/v1` snake_case, `/api/iap` camelCase) → typed items.

Pure. Limits mirror Attesto's own (contract §2), so a request relay accepts is one
Attesto accepts; each problem is a 400 naming the field. Unknown keys are ignored.
"""

from __future__ import annotations

from typing import Any

from relay.core.errors import BadRequestError
from relay.verify.verifier import AppleItem, GoogleItem, Item

MAX_RESTORE_ITEMS = 100
USER_ID_MAX = 256
GOOGLE_KINDS = {"subscription": "subscription", "product": "product", "consumable": "product"}


def _bad(field: str, message: str) -> BadRequestError:
    return BadRequestError(f"{field}: {message}", details={"field": field})


def text(body: dict[str, Any], key: str, field: str, hi: int, *, trim: bool = True,
         required: bool = True) -> str | None:
    """A string of 1..hi characters (after trimming when `trim`), or None if optional."""
    value = body.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise _bad(field, "required, a string" if value is None else "must be a string")
    if trim:
        value = value.strip()
    if not 1 <= len(value) <= hi:
        raise _bad(field, f"must be 1-{hi} characters")
    return value


def user_id(value: Any, field: str = "user_id") -> str:
    got = text({"v": value}, "v", field, USER_ID_MAX)
    assert got is not None
    return got


def _environment(body: dict[str, Any], field: str) -> str | None:
    env = body.get("environment")
    if env is not None and env not in ("production", "sandbox"):
        raise _bad(field, "must be 'production' or 'sandbox'")
    return env


def _kind(body: dict[str, Any], field: str, required: bool) -> str | None:
    kind = body.get("type")
    if kind is None and not required:
        return None
    if kind not in GOOGLE_KINDS:
        raise _bad(field, "must be 'subscription', 'product' or 'consumable'")
    return GOOGLE_KINDS[kind]


def apple_item(body: dict[str, Any], prefix: str = "", *, camel: bool = False) -> AppleItem:
    tid_key, pid_key = ("transactionId", "productId") if camel else ("transaction_id",
                                                                      "product_id")
    tid = text(body, tid_key, prefix + tid_key, 128, trim=False)
    assert tid is not None
    return AppleItem(tid, _environment(body, prefix + "environment"),
                     text(body, pid_key, prefix + pid_key, 200, required=False))


def google_item(body: dict[str, Any], prefix: str = "", *, camel: bool = False,
                kind_required: bool = True) -> GoogleItem:
    keys = (("packageName", "productId", "purchaseToken") if camel
            else ("package_name", "product_id", "purchase_token"))
    package = text(body, keys[0], prefix + keys[0], 200)
    product = text(body, keys[1], prefix + keys[1], 200)
    token = text(body, keys[2], prefix + keys[2], 4096)
    assert package is not None and product is not None and token is not None
    return GoogleItem(package, product, token, _kind(body, prefix + "type", kind_required))


def restore_items(body: dict[str, Any], *, camel: bool = False) -> list[Item]:
    """`transactions: [{platform: "apple"|"google", ...}]`, 1..MAX_RESTORE_ITEMS entries."""
    items = body.get("transactions")
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_RESTORE_ITEMS:
        raise _bad("transactions", f"must be a list of 1-{MAX_RESTORE_ITEMS} transactions")
    out: list[Item] = []
    for i, entry in enumerate(items):
        prefix = f"transactions[{i}]."
        if not isinstance(entry, dict):
            raise _bad(f"transactions[{i}]", "must be an object")
        platform = entry.get("platform")
        if platform == "apple":
            out.append(apple_item(entry, prefix, camel=camel))
        elif platform == "google":
            out.append(google_item(entry, prefix, camel=camel, kind_required=False))
        else:
            raise _bad(prefix + "platform", "must be 'apple' or 'google'")
    return out
