"""Domain values: normalized states, the snapshot every input becomes, and views.

Pure: stdlib only. Times are integer milliseconds since the epoch.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from relay.core.frozen import slot_init


class State(StrEnum):
    """Normalized purchase state, one machine for both stores."""

    PENDING = "pending"  # bought, payment not settled
    ACTIVE = "active"  # paid up, set to renew
    ACTIVE_NOT_RENEWING = "active_not_renewing"  # paid up, cancelled at period end
    GRACE = "grace"  # renewal failed, store still grants access
    BILLING_RETRY = "billing_retry"  # renewal failed, store retrying, no access
    ON_HOLD = "on_hold"  # Google account hold, no access
    PAUSED = "paused"  # Google pause, no access
    EXPIRED = "expired"  # period over, not renewed
    REVOKED = "revoked"  # revoked by the store (family sharing removed, ...)
    REFUNDED = "refunded"  # money returned; access removed at once
    OWNED = "owned"  # one-time product owned
    CONSUMED = "consumed"  # consumable used up


ENTITLED_STATES = frozenset({State.ACTIVE, State.ACTIVE_NOT_RENEWING, State.GRACE, State.OWNED})
TERMINAL_STATES = frozenset({State.REVOKED, State.REFUNDED, State.CONSUMED})
SUSPENDED_STATES = frozenset({State.BILLING_RETRY, State.ON_HOLD, State.PAUSED})

SOURCES = ("webhook", "verify", "restore", "poll", "admin", "reprojection")
PLATFORMS = ("apple", "google")


def iso(ms: int | None) -> str | None:
    """ISO-8601 UTC with milliseconds and Z, as Attesto writes it; None stays None."""
    if ms is None:
        return None
    seconds, millis = divmod(ms, 1000)
    return f"{_iso_seconds(seconds)}.{millis:03d}Z"


@functools.lru_cache(maxsize=4096)  # every event writes three times, mostly recent ones
def _iso_seconds(seconds: int) -> str:
    return dt.datetime.fromtimestamp(seconds, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")


MAX_TIME_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z


def parse_time_ms(value: Any) -> int | None:
    """Parse an ISO-8601 / RFC 3339 string or an epoch-ms number (or numeric string).

    ValueError for anything that is not a time between 1970 and the year 9999."""
    ms = _parse_time_ms(value)
    if ms is not None and not 0 <= ms <= MAX_TIME_MS:
        raise ValueError(f"time out of range: {value!r}")
    return ms


def _parse_time_ms(value: Any) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ValueError(f"not a time: {value!r}")
    if isinstance(value, int | float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"not a time: {value!r}")
        return int(value)
    if isinstance(value, str):
        if value.isdigit():
            return int(value)
        text = value.strip().replace("Z", "+00:00").replace("z", "+00:00")
        # Google may send nanosecond fractions; fromisoformat takes at most 6 digits.
        if "." in text:
            head, _, rest = text.partition(".")
            digits = "".join(c for c in rest if c.isdigit())
            tail = rest[len(digits):]
            text = f"{head}.{digits[:6].ljust(6, '0')}{tail}"
        parsed = dt.datetime.fromisoformat(text)
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=dt.UTC)
        return (parsed - _EPOCH) // _ONE_MS  # exact: a float timestamp loses the last ms
    raise ValueError(f"not a time: {value!r}")


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_ONE_MS = dt.timedelta(milliseconds=1)


@slot_init
@dataclass(frozen=True, slots=True)
class Snapshot:
    """What one input says about one purchase; `pipeline.apply` stores it.

    Fields left None mean "this input does not know"; they never erase stored values.
    `observed_ms` is the store's own time of the information (Apple signedDate,
    Google eventTimeMillis, verify time): an older snapshot never overwrites a newer one.
    """

    platform: str
    subject_key: str
    source: str
    observed_ms: int
    received_ms: int
    kind: str | None = None  # subscription | product
    product_id: str | None = None
    base_plan_id: str | None = None
    state: State | None = None
    state_reason: str | None = None
    expires_ms: int | None = None
    environment: str | None = None
    auto_renew: bool | None = None
    user_id: str | None = None
    app_user_id: str | None = None
    latest_ref: str | None = None
    package_name: str | None = None
    event_type: str | None = None  # Attesto's event name when the input carries one
    event_reason: str | None = None
    attesto_event_id: str | None = None
    poll_now: bool = False  # Google webhook: re-verify the newest token at once
    announces_period: bool = False  # Google webhook: a new period began; no expiry given
    grace_expires_ms: int | None = None  # Apple gracePeriodExpiresDate (renewal info)
    period_start_ms: int | None = None  # Apple purchaseDate of the transaction it names
    # Recorded and relayed, changes no state: an Apple notification about an older
    # transaction, a Google notification about a token that is not the current one, a void.
    record_only: bool = False
    voided: bool = False  # Google voided purchase (full refund): the next re-fetch decides
    superseded: bool = False  # Google: the answer is about a token replaced by another
    extra: Mapping[str, Any] | None = None  # more fields for the relayed event body
    note: InputNote | None = None  # what the input log keeps about this input
    # The store transactions the input names (Apple transactionId, Google orderId): each is
    # a row of the transaction ledger (`relay.core.ledger`).
    transactions: tuple[TxnFact, ...] = ()


@slot_init
@dataclass(frozen=True, slots=True)
class TxnFact:
    """What one input says about one paid store transaction: an Apple `transactionId` (one
    per purchase and per renewal) or a Google order id (`GPA.…`, and `GPA.…..N` for the
    N+1th renewal order). Fields left None are unknown to this input.

    `observed_ms` is the store's time of what the input says about the transaction's
    refund: an Apple transaction payload always says (its `revocationDate` is set or
    absent), a Google full-refund void says; 0 when the input says nothing about it (a
    Google verify answer): such an input only fills in what the ledger lacks.
    """

    transaction_id: str
    product_id: str | None = None
    period_start_ms: int | None = None
    period_end_ms: int | None = None
    price_micros: int | None = None  # Apple milli-units x 1000; Google micros
    currency: str | None = None
    ownership: str | None = None  # Apple: purchased | family_shared
    refunded_ms: int | None = None
    revoked_ms: int | None = None  # Apple: revoked from Family Sharing
    observed_ms: int = 0


@slot_init
@dataclass(frozen=True, slots=True)
class InputNote:
    """One input as the input log keeps it: a one-line summary and where its raw body is.

    `store_type`/`store_subtype`: Apple notificationType/subtype, Google notification code
    (`subscription.4`, `voided`), or the answer's state (`SUBSCRIPTION_STATE_ACTIVE`);
    `ref`: the transaction id, order id or token it names; `raw`: the answer's JSON text
    (verify, poll); webhooks point at their inbox row instead (`Snapshot.attesto_event_id`).
    """

    store_type: str | None = None
    store_subtype: str | None = None
    ref: str | None = None
    raw: str | None = None
    linked: str | None = None  # Google: the linkedPurchaseToken of a verified token


@slot_init
@dataclass(frozen=True, slots=True)
class Entitlement:
    key: str
    product_id: str | None
    expires_ms: int | None
    platform: str
    subject_key: str

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "product_id": self.product_id,
                "expires_at": iso(self.expires_ms), "platform": self.platform,
                "subject_key": self.subject_key}


@slot_init
@dataclass(frozen=True, slots=True)
class PurchaseView:
    """A stored purchase as the API shows it."""

    platform: str
    subject_key: str
    kind: str
    user_id: str | None
    app_user_id: str | None
    product_id: str | None
    base_plan_id: str | None
    state: str
    state_reason: str | None
    environment: str | None
    expires_ms: int | None
    auto_renew: bool | None
    latest_ref: str | None
    package_name: str | None
    store_time_ms: int
    sequence: int
    created_ms: int
    updated_ms: int
    next_poll_ms: int | None = None
    period_pending: bool = False  # a Google webhook announced a period; expiry not yet read
    grace_expires_ms: int | None = None  # Apple: the billing grace period's end
    period_start_ms: int | None = None  # Apple: purchaseDate of the latest transaction
    voided_ms: int | None = None  # Google: a void awaits the re-fetch that decides it

    def to_json(self) -> dict[str, Any]:
        return {
            "platform": self.platform, "subject_key": self.subject_key, "kind": self.kind,
            "user_id": self.user_id, "app_user_id": self.app_user_id,
            "product_id": self.product_id, "base_plan_id": self.base_plan_id,
            "state": self.state, "state_reason": self.state_reason,
            "environment": self.environment, "expires_at": iso(self.expires_ms),
            "auto_renew": self.auto_renew, "updated_at": iso(self.updated_ms),
            "grace_expires_at": iso(self.grace_expires_ms),
        }


def entitlement_keys(entitlements: Mapping[str, tuple[str, ...]], product_id: str | None,
                     base_plan_id: str | None) -> tuple[str, ...]:
    """Keys a product grants: `product:base_plan` first, then the bare product id."""
    if product_id is None:
        return ()
    if base_plan_id and f"{product_id}:{base_plan_id}" in entitlements:
        return entitlements[f"{product_id}:{base_plan_id}"]
    return entitlements.get(product_id, ())


@dataclass(frozen=True, slots=True)
class EntitlementPolicy:
    """How long access outlives `expires_ms` (seconds)."""

    clock_leeway_s: int = 60
    apple_renewal_grace_s: int = 86_400


def access_until_ms(p: PurchaseView, policy: EntitlementPolicy) -> int | None:
    """When access ends (leeway included) for a purchase in an entitled state; None: no end.
    The rule that says so: `access_rule`."""
    return access_rule(p, policy)[0]


# The rules `access_rule` names (explain shows them in plain words).
RULE_NO_EXPIRY = "no_expiry"  # nothing ends it (a one-time product)
RULE_CLOCK_LEEWAY = "clock_leeway"  # the expiry plus [purchases] clock_leeway_s
RULE_GRACE_END = "grace_end"  # the billing grace end plus the clock leeway
RULE_RENEWAL_GRACE = "renewal_grace"  # Apple, set to renew: expiry + apple_renewal_grace_s
RULE_GRACE_END_UNKNOWN = "grace_end_unknown"  # grace, its end not read: the same leeway
RULE_PERIOD_PENDING = "period_pending"  # Google announced a period its re-verify has not read


def access_rule(p: PurchaseView, policy: EntitlementPolicy) -> tuple[int | None, str]:
    """When access ends (leeway included) for a purchase in an entitled state, and the
    rule that decides it (one of the `RULE_*` names).

    `grace` with a known end (Apple gracePeriodExpiresDate; Google's line-item expiry read
    during IN_GRACE_PERIOD): that end plus the clock leeway. Past its expiry and waiting
    for news only a webhook or an immediate re-verify brings, a purchase keeps access
    `apple_renewal_grace_s` past its expiry: an Apple `active` subscription set to renew
    (its renewal may be late), a `grace` whose end relay has not read yet, and a Google
    renewal or recovery announced by a notification whose new expiry the re-verify has not
    read yet (`period_pending`: counted from the notification's time, as a period that
    began then). Everything else: the expiry plus the clock leeway.
    """
    if p.expires_ms is None:
        return None, RULE_NO_EXPIRY
    until, leeway_s, rule = p.expires_ms, policy.clock_leeway_s, RULE_CLOCK_LEEWAY
    grace_known = p.grace_expires_ms is not None and p.grace_expires_ms >= p.expires_ms
    if p.state == State.GRACE and grace_known:
        until, rule = p.grace_expires_ms, RULE_GRACE_END  # type: ignore[assignment]
    elif p.period_pending:  # the announced period began when the store said so
        until, rule = max(until, p.store_time_ms), RULE_PERIOD_PENDING
        leeway_s = max(leeway_s, policy.apple_renewal_grace_s)
    elif p.state == State.GRACE:
        leeway_s, rule = max(leeway_s, policy.apple_renewal_grace_s), RULE_GRACE_END_UNKNOWN
    elif (p.platform == "apple" and p.kind == "subscription" and p.state == State.ACTIVE
          and p.auto_renew is not False):
        leeway_s, rule = max(leeway_s, policy.apple_renewal_grace_s), RULE_RENEWAL_GRACE
    return until + leeway_s * 1000, rule


def is_entitled(p: PurchaseView, now_ms: int, policy: EntitlementPolicy) -> bool:
    if p.state not in ENTITLED_STATES:
        return False
    until = access_until_ms(p, policy)
    return until is None or now_ms < until


def entitlements_of(purchases: list[PurchaseView], mapping: Mapping[str, tuple[str, ...]],
                    now_ms: int, policy: EntitlementPolicy) -> list[Entitlement]:
    """The entitlements a set of purchases grants now, one per (key, purchase)."""
    out: list[Entitlement] = []
    for p in purchases:
        if not is_entitled(p, now_ms, policy):
            continue
        for key in entitlement_keys(mapping, p.product_id, p.base_plan_id):
            out.append(Entitlement(key, p.product_id, p.expires_ms, p.platform, p.subject_key))
    out.sort(key=lambda e: (e.key, -(e.expires_ms or 2**62)))
    return out


@slot_init
@dataclass(frozen=True, slots=True)
class EventView:
    """A stored normalized event (the relayed body is `body`)."""

    cursor: int
    id: str
    type: str
    body: str
    platform: str | None = None
    subject_key: str | None = None
    sequence: int | None = None
    stale: bool = False
    deliveries: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
