"""Explain: why a user has an entitlement now, or why not, in plain words and as JSON.

Pure. It decides nothing of its own: each purchase's verdict is `domain.is_entitled` and
its end `domain.access_rule` (the functions the entitlements answer uses), the keys a
product grants `domain.entitlement_keys`; this module only names the rule that applied,
the input that set the state (read by `relay.store.history`) and the reason a key is
missing: no purchase, a product not mapped to the key, a purchase that expired, was
refunded or revoked (by which input), is suspended, or belongs to another user.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from relay.core.domain import (
    ENTITLED_STATES,
    SUSPENDED_STATES,
    EntitlementPolicy,
    PurchaseView,
    State,
    access_rule,
    entitlement_keys,
    is_entitled,
    iso,
)
from relay.core.history import InputView, short
from relay.core.rules import Rules


@dataclass(frozen=True, slots=True)
class Held:
    """A purchase, the input that set its state, and for another user's purchase how it
    concerns this one (`verified_by_user`: the user verified it, it moved on;
    `bound_to_user`: the store binds it to the user's appUserId)."""

    purchase: PurchaseView
    set_by: InputView | None
    how: str | None = None


@dataclass(frozen=True, slots=True)
class PurchaseReason:
    held: Held
    keys: tuple[str, ...]  # what its product grants
    entitled: bool
    rule: str | None  # domain.access_rule's name, for a purchase in an entitled state
    until_ms: int | None  # when its access ends (leeway included)
    reason: str  # active, grace, leeway, expired, refunded, revoked, suspended, ...
    name: str  # "apple purchase 2000000123 (com.example.premium)"
    what: str  # what it is, in words

    @property
    def words(self) -> str:
        return f"{self.name} {self.what}"

    def to_json(self) -> dict[str, Any]:
        p, by = self.held.purchase, self.held.set_by
        return {"platform": p.platform, "subject_key": p.subject_key,
                "product_id": p.product_id, "owner_user_id": p.user_id,
                "state": p.state, "state_reason": p.state_reason,
                "expires_at": iso(p.expires_ms),
                "grace_expires_at": iso(p.grace_expires_ms), "keys": list(self.keys),
                "entitled": self.entitled, "rule": self.rule,
                "access_until": iso(self.until_ms), "reason": self.reason,
                "relation": self.held.how or "owned", "explanation": self.words,
                "state_set_by": by.brief() if by is not None else None}


@dataclass(frozen=True, slots=True)
class Explanation:
    user_id: str
    key: str
    now_ms: int
    entitled: bool
    reason: str
    words: str
    purchases: tuple[PurchaseReason, ...]

    def to_json(self) -> dict[str, Any]:
        return {"user_id": self.user_id, "key": self.key, "at": iso(self.now_ms),
                "entitled": self.entitled, "reason": self.reason,
                "explanation": self.words,
                "purchases": [r.to_json() for r in self.purchases]}

    def text(self) -> str:
        """Plain words: the verdict, then one line per purchase that concerns the key."""
        lines = [self.words]
        lines += [f"  - {r.words}" for r in self.purchases if r.words not in self.words]
        return "\n".join(lines)


def rule_words(rule: str | None, policy: EntitlementPolicy) -> str:
    leeway, grace = policy.clock_leeway_s, policy.apple_renewal_grace_s
    return {
        "no_expiry": "no expiry: a one-time product owned",
        "clock_leeway": f"the expiry plus the clock leeway ([purchases] clock_leeway_s, "
                        f"{leeway} s)",
        "grace_end": f"the billing grace period's end plus the clock leeway ({leeway} s)",
        "renewal_grace": f"an Apple subscription set to renew: the expiry plus [scheduler] "
                         f"apple_renewal_grace_s ({grace} s), while its renewal may still "
                         "be on its way",
        "grace_end_unknown": f"in billing grace, its end not read yet: the expiry plus "
                             f"apple_renewal_grace_s ({grace} s)",
        "period_pending": f"a renewal a Google notification announced, its expiry not read "
                          f"yet: from the notification, plus apple_renewal_grace_s ({grace} s)",
    }.get(rule or "", "its state grants no access")


def _input_words(by: InputView | None) -> str:
    return f"input #{by.id} ({by.summary()})" if by is not None else "no logged input"


def _reason(held: Held, keys: tuple[str, ...], now_ms: int,
            policy: EntitlementPolicy) -> PurchaseReason:
    p, by = held.purchase, held.set_by
    entitled = is_entitled(p, now_ms, policy)
    until, rule = access_rule(p, policy) if p.state in ENTITLED_STATES else (None, None)
    name = f"{p.platform} purchase {short(p.subject_key)} ({p.product_id or 'no product'})"
    expires = iso(p.expires_ms) or "-"
    when = iso(by.observed_ms) if by is not None else "-"
    state = State(p.state) if p.state in State.__members__.values() else None
    if entitled:
        if state == State.GRACE:
            reason, what = "grace", f"is in its billing grace period until {iso(until)}"
        elif p.expires_ms is not None and now_ms >= p.expires_ms:
            reason, what = "leeway", f"expired at {expires} but keeps access until {iso(until)}"
        else:
            reason = "active"
            what = (f"is {p.state} until {iso(until)}" if until is not None
                    else f"is {p.state}")
        what += f" ({rule_words(rule, policy)}); state set by {_input_words(by)}"
    elif state in ENTITLED_STATES or state == State.EXPIRED:
        reason = "expired"
        what = f"expired at {expires}"
        if until is not None:
            what += f" (access ended at {iso(until)}: {rule_words(rule, policy)})"
        what += f"; state set by {_input_words(by)}"
    elif state in (State.REFUNDED, State.REVOKED):
        reason = str(state)
        what = f"was {state} at {when} by {_input_words(by)}"
    elif state in SUSPENDED_STATES:
        reason = "suspended"
        what = (f"is {p.state} since {when}: no access until the store recovers it; "
                f"set by {_input_words(by)}")
    else:
        reason = p.state
        what = f"is {p.state}: no access; set by {_input_words(by)}"
    return PurchaseReason(held, keys, entitled, rule, until, reason, name, what)


def explain_key(user_id: str, key: str, mine: Sequence[Held], others: Sequence[Held],
                rules: Rules, now_ms: int) -> Explanation:
    """Why `user_id` has `key` now or not, from the user's purchases (`mine`) and those of
    other users that concern the user (`others`)."""
    policy = rules.entitlement_policy

    def grants(h: Held) -> tuple[str, ...]:
        return entitlement_keys(rules.entitlements, h.purchase.product_id,
                                h.purchase.base_plan_id)

    mapped = [_reason(h, grants(h), now_ms, policy) for h in mine if key in grants(h)]
    entitled = [r for r in mapped if r.entitled]

    def verdict(reason: str, words: str, ok: bool = False,
                shown: Sequence[PurchaseReason] = ()) -> Explanation:
        head = f"{user_id} {'has' if ok else 'does not have'} {key}: "
        return Explanation(user_id, key, now_ms, ok, reason, head + words, tuple(shown))

    if entitled:
        best = max(entitled, key=lambda r: r.until_ms if r.until_ms is not None else 2**62)
        return verdict(best.reason, best.words, True, mapped)
    if mapped:
        best = max(mapped, key=lambda r: (r.held.purchase.updated_ms,
                                          r.held.purchase.expires_ms or 0))
        return verdict(best.reason, best.words, shown=mapped)
    theirs = [_reason(h, grants(h), now_ms, policy) for h in others if key in grants(h)]
    if theirs:
        words = "; ".join(
            f"{r.name} grants {key} but belongs to user "
            f"{r.held.purchase.user_id} ("
            + ("the user verified it before; it moved to that user"
               if r.held.how == "verified_by_user"
               else "the store binds it to this user's appUserId") + ")" for r in theirs)
        return verdict("owned_by_another_user", words, shown=theirs)
    if mine:
        listed = ", ".join(
            f"{h.purchase.product_id or 'no product'} grants "
            f"[{', '.join(grants(h))}]" for h in mine)
        return verdict("product_not_mapped",
                       f"none of the user's purchases is of a product that grants it "
                       f"({listed}; [entitlements] maps products to keys)",
                       shown=[_reason(h, grants(h), now_ms, policy) for h in mine])
    return verdict("no_purchase", "relay knows no purchase of this user")
