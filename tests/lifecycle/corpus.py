"""The lifecycle conformance corpus: scenarios written from the stores' documentation.

Each scenario is one purchase taken through a named sequence of inputs as the stores send
them (through Attesto's envelope), with what each step must leave: the purchase's state,
what `GET /v1/users/{id}/entitlements` grants, and the events relayed (type, state).
`cite` names the documentation page and section the expectations come from.

Sources (quoted in `cite`):
  [ASN]  Apple, "App Store Server Notifications V2": notificationType, subtype, status
         (1 active, 2 expired, 3 billing retry, 4 billing grace period, 5 revoked),
         JWSRenewalInfoDecodedPayload (autoRenewStatus, gracePeriodExpiresDate,
         isInBillingRetryPeriod), JWSTransactionDecodedPayload (expiresDate,
         revocationDate, purchaseDate).
  [ASA]  Apple, "App Store Server API": Get Transaction Info (what a verify sees).
  [RTDN] Google Play, "Real-time developer notifications reference":
         SubscriptionNotification.notificationType codes, VoidedPurchaseNotification
         (orderId, productType, refundType).
  [SUB]  Google Play, "purchases.subscriptionsv2" SubscriptionPurchaseV2
         (subscriptionState, lineItems[].expiryTime, linkedPurchaseToken, testPurchase,
         canceledStateContext) and "Subscription lifecycle" (subscriptionsv2.get is the
         source of truth after each notification).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tests.lifecycle.stores import (
    DAY_MS,
    apple_notification,
    apple_renewal,
    apple_transaction,
    play_subscription,
    rtdn_subscription,
    rtdn_voided,
)

T0 = 1_800_000_000_000  # the fake clock's start (tests.conftest.Clock), ms
H = 3_600_000
PREMIUM, PRO = ("premium",), ("premium", "pro")
NONE: tuple[str, ...] = ()
P, PP = "com.example.premium", "com.example.pro"  # Apple products
G, GP = "premium_monthly", "pro_monthly"  # Google products


@dataclass(frozen=True)
class Expect:
    state: str | None = None
    entitled: tuple[str, ...] | None = None
    events: tuple[tuple[str, str], ...] | None = None  # (type, state), in order
    expires_ms: int | None = None
    latest_ref: str | None = None
    product: str | None = None


@dataclass(frozen=True)
class Step:
    name: str
    kind: str  # apple | google | void | verify_apple | verify_google | apple_store | play
    #            | repoll | clock
    payload: Any = None
    expect: Expect | None = None

    @property
    def delivery(self) -> bool:
        """A webhook: it takes part in the out-of-order pairs."""
        return self.kind in ("apple", "google", "void")


@dataclass(frozen=True)
class Scenario:
    name: str
    platform: str
    key: str
    cite: str
    steps: tuple[Step, ...]
    user: str = "u1"
    # Out-of-order pairs (i, j) whose final state differs from the in-order one, with why.
    order_exceptions: dict[tuple[int, int], tuple[Expect, str]] = field(default_factory=dict)


# ---- Apple ------------------------------------------------------------------------------

class Apple:
    """Builds one Apple subscription's steps on a timeline (days from T0)."""

    def __init__(self, key: str, product: str = P) -> None:
        self.key, self.product, self.txns = key, product, {}  # type: dict[str, dict]

    def txn(self, n: int, start_d: float, end_d: float, product: str | None = None,
            **kw: Any) -> dict[str, Any]:
        t = apple_transaction(f"{self.key}-t{n}", self.key, product or self.product,
                              T0 + int(start_d * DAY_MS), T0 + int(end_d * DAY_MS),
                              renewal=n > 1, **kw)
        self.txns[t["transactionId"]] = t
        return t

    def note(self, name: str, ntype: str, subtype: str | None, txn: dict[str, Any],
             at_d: float, status: int | None, *, auto_renew: bool = True,
             grace_end_d: float | None = None, retry: bool | None = None,
             renew_product: str | None = None, expect: Expect | None = None) -> Step:
        signed = T0 + int(at_d * DAY_MS)
        renewal = apple_renewal(
            self.key, txn["productId"], auto_renew=auto_renew, signed_ms=signed,
            grace_expires_ms=T0 + int(grace_end_d * DAY_MS) if grace_end_d else None,
            in_billing_retry=retry, auto_renew_product=renew_product)
        payload = apple_notification(ntype, subtype, uuid=f"{self.key}-{name}",
                                     signed_ms=signed, txn=txn, renewal=renewal, status=status)
        return Step(name, "apple", payload, expect)

    def store(self, txn: dict[str, Any]) -> Step:
        """Apple's server now answers Get Transaction Info for `txn` with this."""
        return Step(f"store {txn['transactionId']}", "apple_store", txn)

    def verify(self, txn: dict[str, Any], expect: Expect | None = None) -> Step:
        return Step(f"verify {txn['transactionId']}", "verify_apple", txn, expect)

    def buy(self, t1: dict[str, Any]) -> list[Step]:
        """SUBSCRIBED/INITIAL_BUY with status 1, then the app's verify binds the user."""
        return [self.store(t1),
                # No appAccountToken: the user is unknown until the app's verify.
                self.note("subscribed", "SUBSCRIBED", "INITIAL_BUY", t1, 0, 1,
                          expect=Expect("active", NONE, (("subscription.purchased", "active"),))),
                self.verify(t1, Expect("active", PREMIUM if t1["productId"] == P else PRO,
                                       (("subscription.user_bound", "active"),)))]


def clock(days: float, expect: Expect | None = None) -> Step:
    return Step(f"clock +{days}d", "clock", days * 86_400, expect)


def repoll(expect: Expect | None = None) -> Step:
    return Step("re-poll", "repoll", None, expect)


def _apple() -> list[Scenario]:
    out = []

    a = Apple("a-buy")
    t1 = a.txn(1, 0, 30)
    out.append(Scenario("apple initial buy", "apple", a.key,
                        "[ASN] SUBSCRIBED/INITIAL_BUY: the customer subscribed for the first "
                        "time; status 1 active", tuple(a.buy(t1))))

    a = Apple("a-renew")
    t1, t2 = a.txn(1, 0, 30), a.txn(2, 30, 60)
    out.append(Scenario("apple renewal", "apple", a.key,
                        "[ASN] DID_RENEW (no subtype): an active subscription renewed; "
                        "expiresDate of the new transaction", (
                            *a.buy(t1), clock(29.9),
                            a.note("renew", "DID_RENEW", None, t2, 29.9, 1, expect=Expect(
                                "active", PREMIUM, (("subscription.renewed", "active"),),
                                expires_ms=T0 + 60 * DAY_MS, latest_ref=t2["transactionId"])),
                            clock(31, Expect("active", PREMIUM)))))

    a = Apple("a-cancel")
    t1 = a.txn(1, 0, 30)
    out.append(Scenario("apple voluntary cancel and expiry", "apple", a.key,
                        "[ASN] DID_CHANGE_RENEWAL_STATUS/AUTO_RENEW_DISABLED: service until "
                        "expiresDate; EXPIRED/VOLUNTARY: expired after auto-renew was "
                        "disabled, status 2", (
                            *a.buy(t1), clock(5),
                            a.note("off", "DID_CHANGE_RENEWAL_STATUS", "AUTO_RENEW_DISABLED",
                                   t1, 5, 1, auto_renew=False, expect=Expect(
                                       "active_not_renewing", PREMIUM,
                                       (("subscription.cancellation_scheduled",
                                         "active_not_renewing"),))),
                            clock(25.1),
                            a.note("expired", "EXPIRED", "VOLUNTARY", t1, 30.1, 2,
                                   auto_renew=False, expect=Expect(
                                       "expired", NONE, (("subscription.expired", "expired"),))))))

    a = Apple("a-grace")
    t1, t2 = a.txn(1, 0, 30), a.txn(2, 33, 63)
    out.append(Scenario("apple grace period entered and recovered", "apple", a.key,
                        "[ASN] DID_FAIL_TO_RENEW/GRACE_PERIOD: continue to provide service "
                        "through the grace period (gracePeriodExpiresDate), status 4; "
                        "DID_RENEW/BILLING_RECOVERY: recovered", (
                            *a.buy(t1), clock(30.01),
                            a.note("fail", "DID_FAIL_TO_RENEW", "GRACE_PERIOD", t1, 30.01, 4,
                                   grace_end_d=46, retry=True, expect=Expect(
                                       "grace", PREMIUM,
                                       (("subscription.in_grace_period", "grace"),))),
                            clock(3, Expect("grace", PREMIUM)),
                            repoll(Expect("grace", PREMIUM)),
                            a.store(t2),
                            a.note("recovered", "DID_RENEW", "BILLING_RECOVERY", t2, 33.02, 1,
                                   expect=Expect("active", PREMIUM,
                                                 (("subscription.recovered", "active"),),
                                                 expires_ms=T0 + 63 * DAY_MS)))))

    a = Apple("a-grace-out")
    t1 = a.txn(1, 0, 30)
    out.append(Scenario("apple grace period expired into billing retry, then expired",
                        "apple", a.key,
                        "[ASN] GRACE_PERIOD_EXPIRED: the billing grace period ended without "
                        "renewing, you can turn off access (status 3 billing retry); "
                        "EXPIRED/BILLING_RETRY: the billing retry period ended, status 2", (
                            *a.buy(t1), clock(30.01),
                            a.note("fail", "DID_FAIL_TO_RENEW", "GRACE_PERIOD", t1, 30.01, 4,
                                   grace_end_d=46, retry=True,
                                   expect=Expect("grace", PREMIUM)),
                            clock(16.5, Expect("grace", NONE)),
                            a.note("grace over", "GRACE_PERIOD_EXPIRED", None, t1, 46.5, 3,
                                   retry=True, expect=Expect(
                                       "billing_retry", NONE,
                                       (("subscription.grace_period_expired",
                                         "billing_retry"),))),
                            clock(44),
                            a.note("expired", "EXPIRED", "BILLING_RETRY", t1, 90.6, 2,
                                   auto_renew=False, expect=Expect(
                                       "expired", NONE, (("subscription.expired", "expired"),))))))

    for outcome in ("recovered", "expired"):
        a = Apple(f"a-retry-{outcome}")
        t1, t2 = a.txn(1, 0, 30), a.txn(2, 32, 62)
        last = (a.note("recovered", "DID_RENEW", "BILLING_RECOVERY", t2, 32, 1, expect=Expect(
                    "active", PREMIUM, (("subscription.recovered", "active"),)))
                if outcome == "recovered" else
                a.note("expired", "EXPIRED", "BILLING_RETRY", t1, 90, 2, auto_renew=False,
                       expect=Expect("expired", NONE, (("subscription.expired", "expired"),))))
        out.append(Scenario(f"apple billing retry without grace, {outcome}", "apple", a.key,
                            "[ASN] DID_FAIL_TO_RENEW (no subtype): not in a grace period, you "
                            "can stop providing the service; status 3 billing retry", (
                                *a.buy(t1), clock(30.01),
                                a.note("fail", "DID_FAIL_TO_RENEW", None, t1, 30.01, 3,
                                       retry=True, expect=Expect(
                                           "billing_retry", NONE,
                                           (("subscription.in_billing_retry",
                                             "billing_retry"),))),
                                clock(1.9 if outcome == "recovered" else 60), a.store(t2),
                                last)))

    a = Apple("a-toggle")
    t1 = a.txn(1, 0, 30)
    out.append(Scenario("apple auto-renew toggled while active", "apple", a.key,
                        "[ASN] DID_CHANGE_RENEWAL_STATUS: AUTO_RENEW_DISABLED then "
                        "AUTO_RENEW_ENABLED, status 1 throughout", (
                            *a.buy(t1),
                            a.note("off", "DID_CHANGE_RENEWAL_STATUS", "AUTO_RENEW_DISABLED",
                                   t1, 1, 1, auto_renew=False,
                                   expect=Expect("active_not_renewing", PREMIUM)),
                            a.note("on", "DID_CHANGE_RENEWAL_STATUS", "AUTO_RENEW_ENABLED",
                                   t1, 2, 1, expect=Expect(
                                       "active", PREMIUM,
                                       (("subscription.cancellation_revoked", "active"),))))))

    a = Apple("a-toggle-grace")
    t1 = a.txn(1, 0, 30)
    out.append(Scenario("apple auto-renew toggled in grace", "apple", a.key,
                        "[ASN] status 4 billing grace period: service continues until "
                        "gracePeriodExpiresDate whatever autoRenewStatus says", (
                            *a.buy(t1), clock(30.01),
                            a.note("fail", "DID_FAIL_TO_RENEW", "GRACE_PERIOD", t1, 30.01, 4,
                                   grace_end_d=46, retry=True, expect=Expect("grace", PREMIUM)),
                            a.note("off", "DID_CHANGE_RENEWAL_STATUS", "AUTO_RENEW_DISABLED",
                                   t1, 30.02, 4, auto_renew=False, grace_end_d=46, retry=True,
                                   expect=Expect("grace", PREMIUM)),
                            a.note("on", "DID_CHANGE_RENEWAL_STATUS", "AUTO_RENEW_ENABLED",
                                   t1, 30.03, 4, grace_end_d=46, retry=True,
                                   expect=Expect("grace", PREMIUM)),
                            clock(5, Expect("grace", PREMIUM)))))

    a = Apple("a-toggle-retry")
    t1 = a.txn(1, 0, 30)
    out.append(Scenario("apple auto-renew toggled in billing retry", "apple", a.key,
                        "[ASN] status 3 billing retry: no service while Apple retries, "
                        "whatever autoRenewStatus says", (
                            *a.buy(t1), clock(30.01),
                            a.note("fail", "DID_FAIL_TO_RENEW", None, t1, 30.01, 3, retry=True,
                                   expect=Expect("billing_retry", NONE)),
                            a.note("off", "DID_CHANGE_RENEWAL_STATUS", "AUTO_RENEW_DISABLED",
                                   t1, 30.02, 3, auto_renew=False, retry=True,
                                   expect=Expect("billing_retry", NONE)),
                            a.note("on", "DID_CHANGE_RENEWAL_STATUS", "AUTO_RENEW_ENABLED",
                                   t1, 30.03, 3, retry=True,
                                   expect=Expect("billing_retry", NONE)))))

    a = Apple("a-refund")
    t1, t2 = a.txn(1, 0, 30), a.txn(2, 30, 60)
    out.append(Scenario("apple refund of the current period", "apple", a.key,
                        "[ASN] REFUND: the App Store refunded the transaction "
                        "(revocationDate); status 5 revoked: access ends now", (
                            *a.buy(t1), clock(30),
                            a.note("renew", "DID_RENEW", None, t2, 30, 1,
                                   expect=Expect("active", PREMIUM)),
                            a.note("refund", "REFUND", None,
                                   dict(t2, revocationDate=T0 + 31 * DAY_MS, revocationReason=1),
                                   31, 5, expect=Expect("refunded", NONE, (
                                       ("subscription.refunded", "refunded"),))))))

    a = Apple("a-refund-old")
    t1, t2 = a.txn(1, 0, 30), a.txn(2, 30, 60)
    out.append(Scenario("apple refund of an older period", "apple", a.key,
                        "[ASN] REFUND names the refunded transaction (last month's t1) while "
                        "status 1 says the subscription is active", (
                            *a.buy(t1), clock(30),
                            a.note("renew", "DID_RENEW", None, t2, 30, 1,
                                   expect=Expect("active", PREMIUM)),
                            a.note("refund t1", "REFUND", None,
                                   dict(t1, revocationDate=T0 + 35 * DAY_MS, revocationReason=1),
                                   35, 1, expect=Expect(
                                       "active", PREMIUM, (("subscription.refunded", "active"),),
                                       expires_ms=T0 + 60 * DAY_MS,
                                       latest_ref=t2["transactionId"])))))

    a = Apple("a-refund-declined")
    t1 = a.txn(1, 0, 30)
    out.append(Scenario("apple refund declined", "apple", a.key,
                        "[ASN] REFUND_DECLINED: the App Store declined the refund request; "
                        "status 1", (
                            *a.buy(t1),
                            a.note("declined", "REFUND_DECLINED", None, t1, 3, 1,
                                   expect=Expect("active", PREMIUM, (
                                       ("subscription.refund_declined", "active"),))))))

    a = Apple("a-refund-reversed")
    t1 = a.txn(1, 0, 30)
    out.append(Scenario("apple refund reversed", "apple", a.key,
                        "[ASN] REFUND then REFUND_REVERSED: the App Store reversed a refund, "
                        "reinstate the content or service (status back to 1)", (
                            *a.buy(t1),
                            a.note("refund", "REFUND", None,
                                   dict(t1, revocationDate=T0 + 2 * DAY_MS, revocationReason=1),
                                   2, 5, expect=Expect("refunded", NONE)),
                            a.note("reversed", "REFUND_REVERSED", None, t1, 4, 1,
                                   expect=Expect("active", PREMIUM, (
                                       ("subscription.refund_reversed", "active"),))))))

    a = Apple("a-revoke")
    t1 = a.txn(1, 0, 30, family_shared=True)
    out.append(Scenario("apple revoke (Family Sharing)", "apple", a.key,
                        "[ASN] REVOKE: an in-app purchase the customer was entitled to through "
                        "Family Sharing is no longer available; status 5", (
                            *a.buy(t1),
                            a.note("revoke", "REVOKE", None,
                                   dict(t1, revocationDate=T0 + 3 * DAY_MS, revocationReason=0),
                                   3, 5, expect=Expect(
                                       "revoked", NONE, (("subscription.revoked", "revoked"),))))))

    a = Apple("a-upgrade")
    t1, t2 = a.txn(1, 0, 30), a.txn(2, 10, 40, product=PP)
    out.append(Scenario("apple upgrade", "apple", a.key,
                        "[ASN] DID_CHANGE_RENEWAL_PREF/UPGRADE: the upgrade goes into effect "
                        "immediately, starting a new billing period (new transaction)", (
                            *a.buy(t1), clock(10),
                            a.note("upgrade", "DID_CHANGE_RENEWAL_PREF", "UPGRADE", t2, 10, 1,
                                   expect=Expect("active", PRO, (
                                       ("subscription.renewal_pref_changed", "active"),),
                                       product=PP, latest_ref=t2["transactionId"])))))

    a = Apple("a-downgrade", PP)
    t1, t2 = a.txn(1, 0, 30), a.txn(2, 30, 60, product=P)
    out.append(Scenario("apple downgrade", "apple", a.key,
                        "[ASN] DID_CHANGE_RENEWAL_PREF/DOWNGRADE: takes effect at the next "
                        "renewal date and doesn't affect the currently active plan", (
                            *a.buy(t1),
                            a.note("downgrade", "DID_CHANGE_RENEWAL_PREF", "DOWNGRADE", t1, 5, 1,
                                   renew_product=P, expect=Expect("active", PRO, product=PP)),
                            clock(30),
                            a.note("renew", "DID_RENEW", None, t2, 30, 1,
                                   expect=Expect("active", PREMIUM, product=P)))))

    a = Apple("a-crossgrade")
    t1, t2 = a.txn(1, 0, 30), a.txn(2, 30, 60, product=PP)
    out.append(Scenario("apple crossgrade at renewal", "apple", a.key,
                        "[ASN] DID_CHANGE_RENEWAL_PREF (no subtype) changes the renewal "
                        "preference only; the new product starts with the renewal", (
                            *a.buy(t1),
                            a.note("pref", "DID_CHANGE_RENEWAL_PREF", None, t1, 5, 1,
                                   renew_product=PP, expect=Expect("active", PREMIUM, product=P)),
                            clock(30),
                            a.note("renew", "DID_RENEW", None, t2, 30, 1,
                                   expect=Expect("active", PRO, product=PP)))))

    a = Apple("a-offer")
    t1 = a.txn(1, 0, 30)
    out.append(Scenario("apple offer redeemed", "apple", a.key,
                        "[ASN] OFFER_REDEEMED/INITIAL_BUY: a subscription offer redeemed for a "
                        "first purchase; status 1", (
                            a.store(t1),
                            a.note("offer", "OFFER_REDEEMED", "INITIAL_BUY", t1, 0, 1,
                                   expect=Expect("active", NONE,
                                                 (("subscription.offer_redeemed", "active"),))),
                            a.verify(t1, Expect("active", PREMIUM)))))

    a = Apple("a-extended")
    t1 = a.txn(1, 0, 30)
    out.append(Scenario("apple renewal date extended", "apple", a.key,
                        "[ASN] RENEWAL_EXTENDED: the App Store extended the renewal date "
                        "(the transaction's new expiresDate)", (
                            *a.buy(t1),
                            a.note("extended", "RENEWAL_EXTENDED", None,
                                   dict(t1, expiresDate=T0 + 37 * DAY_MS), 10, 1,
                                   expect=Expect("active", PREMIUM,
                                                 expires_ms=T0 + 37 * DAY_MS)),
                            clock(33, Expect("active", PREMIUM)))))

    a = Apple("a-price")
    t1 = a.txn(1, 0, 30)
    out.append(Scenario("apple price increase consent", "apple", a.key,
                        "[ASN] PRICE_INCREASE/PENDING (no response yet), /ACCEPTED; "
                        "EXPIRED/PRICE_INCREASE: expired because the customer didn't consent", (
                            *a.buy(t1),
                            a.note("pending", "PRICE_INCREASE", "PENDING", t1, 5, 1,
                                   expect=Expect("active", PREMIUM, (
                                       ("subscription.price_change_pending", "active"),))),
                            a.note("accepted", "PRICE_INCREASE", "ACCEPTED", t1, 6, 1,
                                   expect=Expect("active", PREMIUM)),
                            clock(30.5),
                            a.note("expired", "EXPIRED", "PRICE_INCREASE", t1, 30.5, 2,
                                   auto_renew=False, expect=Expect("expired", NONE)))))

    a = Apple("a-resubscribe")
    t1, t2 = a.txn(1, 0, 30), a.txn(2, 40, 70)
    out.append(Scenario("apple resubscribe after expiry", "apple", a.key,
                        "[ASN] SUBSCRIBED/RESUBSCRIBE: resubscribed after the subscription "
                        "expired", (
                            *a.buy(t1), clock(30.5),
                            a.note("expired", "EXPIRED", "VOLUNTARY", t1, 30.5, 2,
                                   auto_renew=False, expect=Expect("expired", NONE)),
                            clock(10),
                            a.note("resub", "SUBSCRIBED", "RESUBSCRIBE", t2, 40.5, 1,
                                   expect=Expect("active", PREMIUM,
                                                 (("subscription.purchased", "active"),))))))

    a = Apple("a-consumption")
    t1, t2 = a.txn(1, 0, 30), a.txn(2, 30, 60)
    out.append(Scenario("apple consumption request about an older period", "apple", a.key,
                        "[ASN] CONSUMPTION_REQUEST: the customer asked for a refund of the "
                        "transaction it names (t1); the subscription stays as status says", (
                            *a.buy(t1), clock(30),
                            a.note("renew", "DID_RENEW", None, t2, 30, 1,
                                   expect=Expect("active", PREMIUM)),
                            a.note("consumption", "CONSUMPTION_REQUEST", None, t1, 32, 1,
                                   expect=Expect("active", PREMIUM, (
                                       ("subscription.consumption_request", "active"),),
                                       latest_ref=t2["transactionId"])))))

    a = Apple("a-first-expired")
    t1 = a.txn(1, -35, -5)
    t2 = a.txn(2, -3, 27, revocation_ms=T0 - 60_000)
    out.append(Scenario("apple first verify of an expired and of a refunded transaction",
                        "apple", a.key,
                        "[ASA] Get Transaction Info: expiresDate in the past (expired 5 days "
                        "ago); revocationDate set (refunded)", (
                            a.store(t1),
                            a.verify(t1, Expect("expired", NONE,
                                                (("subscription.expired", "expired"),))),
                            a.store(t2),
                            a.verify(t2, Expect("refunded", NONE,
                                                (("subscription.refunded", "refunded"),))))))

    a = Apple("a-not-seen")
    t1 = a.txn(1, 0, 30)
    out.append(Scenario("apple renewal never seen", "apple", a.key,
                        "[ASA] Get Transaction Info of the latest transaction shows no later "
                        "period; no DID_RENEW arrived: access ends a day after expiresDate", (
                            *a.buy(t1), clock(30.5, Expect("active", PREMIUM)),
                            repoll(Expect("active", PREMIUM)), clock(1),
                            repoll(Expect("expired", NONE,
                                          (("subscription.expired", "expired"),))))))
    return out


# ---- Google -----------------------------------------------------------------------------

class Google:
    """Builds one Google subscription's steps; `play(...)` sets what subscriptionsv2.get
    answers for a token from then on."""

    def __init__(self, key: str, product: str = G, test: bool = False) -> None:
        self.key, self.product, self.test = key, product, test

    def note(self, name: str, code: int, at_d: float, token: str | None = None,
             product: str | None = None, expect: Expect | None = None) -> Step:
        return Step(name, "google", (rtdn_subscription(code, token or self.key,
                                                       product or self.product,
                                                       T0 + int(at_d * DAY_MS)), self.key),
                    expect)

    def void(self, name: str, order: str, at_d: float, refund_type: int = 1,
             expect: Expect | None = None) -> Step:
        return Step(name, "void", rtdn_voided(self.key, order, T0 + int(at_d * DAY_MS),
                                              refund_type=refund_type), expect)

    def play(self, state: str, expiry_d: float | None, *, token: str | None = None,
             product: str | None = None, order: str = "GPA.1234-5678-9012-34567",
             **kw: Any) -> Step:
        kw.setdefault("test", self.test)
        sub = play_subscription(state, product=product or self.product,
                                expiry_ms=T0 + int(expiry_d * DAY_MS) if expiry_d else None,
                                start_ms=T0, order_id=order, **kw)
        return Step(f"play {state}", "play", (token or self.key, sub, product or self.product))

    def verify(self, expect: Expect | None = None) -> Step:
        return Step("verify", "verify_google", (self.key, self.product), expect)

    def buy(self) -> list[Step]:
        return [self.play("SUBSCRIPTION_STATE_ACTIVE", 30),
                self.note("purchased", 4, 0, expect=Expect(
                    "active", NONE, (("subscription.purchased", "active"),))),
                repoll(Expect("active", NONE, expires_ms=T0 + 30 * DAY_MS)),
                self.verify(Expect("active", PREMIUM, (("subscription.user_bound", "active"),)))]


ACTIVE, CANCELED = "SUBSCRIPTION_STATE_ACTIVE", "SUBSCRIPTION_STATE_CANCELED"
GRACE, HOLD = "SUBSCRIPTION_STATE_IN_GRACE_PERIOD", "SUBSCRIPTION_STATE_ON_HOLD"
PAUSED, EXPIRED = "SUBSCRIPTION_STATE_PAUSED", "SUBSCRIPTION_STATE_EXPIRED"
PENDING = "SUBSCRIPTION_STATE_PENDING"
PENDING_CANCELED = "SUBSCRIPTION_STATE_PENDING_PURCHASE_CANCELED"


def _google() -> list[Scenario]:
    out = []
    g = Google("g-buy")
    out.append(Scenario("google initial buy", "google", g.key,
                        "[RTDN] SUBSCRIPTION_PURCHASED (4); [SUB] subscriptionState "
                        "SUBSCRIPTION_STATE_ACTIVE: grant access", tuple(g.buy())))

    g = Google("g-renew")
    out.append(Scenario("google renewal", "google", g.key,
                        "[RTDN] SUBSCRIPTION_RENEWED (2); [SUB] lineItems[].expiryTime moves",
                        (*g.buy(), clock(29.9), g.play(ACTIVE, 60, order="GPA.1234..0"),
                         g.note("renewed", 2, 29.9, expect=Expect(
                             "active", PREMIUM, (("subscription.renewed", "active"),))),
                         repoll(Expect("active", PREMIUM, expires_ms=T0 + 60 * DAY_MS)))))

    g = Google("g-cancel")
    out.append(Scenario("google cancel and expiry", "google", g.key,
                        "[RTDN] SUBSCRIPTION_CANCELED (3), SUBSCRIPTION_EXPIRED (13); [SUB] "
                        "SUBSCRIPTION_STATE_CANCELED keeps access until expiryTime", (
                            *g.buy(), clock(3),
                            g.play(CANCELED, 30, auto_renew=False, canceled_by_user=True),
                            g.note("canceled", 3, 3, expect=Expect("active_not_renewing",
                                                                   PREMIUM)),
                            repoll(Expect("active_not_renewing", PREMIUM)),
                            clock(27.1), g.play(EXPIRED, 30, auto_renew=False),
                            g.note("expired", 13, 30.1, expect=Expect(
                                "expired", NONE, (("subscription.expired", "expired"),))),
                            repoll(Expect("expired", NONE)))))

    g = Google("g-restart")
    out.append(Scenario("google cancel then restart", "google", g.key,
                        "[RTDN] SUBSCRIPTION_RESTARTED (7): the user restored a canceled "
                        "subscription before it expired; [SUB] ACTIVE, autoRenewEnabled", (
                            *g.buy(), g.play(CANCELED, 30, auto_renew=False),
                            g.note("canceled", 3, 2, expect=Expect("active_not_renewing",
                                                                   PREMIUM)),
                            repoll(), g.play(ACTIVE, 30),
                            g.note("restarted", 7, 3, expect=Expect("active", PREMIUM)),
                            repoll(Expect("active", PREMIUM)))))

    g = Google("g-grace")
    out.append(Scenario("google grace period and recovery", "google", g.key,
                        "[RTDN] SUBSCRIPTION_IN_GRACE_PERIOD (6), SUBSCRIPTION_RECOVERED (1); "
                        "[SUB] IN_GRACE_PERIOD keeps access (expiryTime is the grace end)", (
                            *g.buy(), clock(30.01), g.play(GRACE, 37),
                            g.note("grace", 6, 30.01, expect=Expect(
                                "grace", PREMIUM, (("subscription.in_grace_period", "grace"),))),
                            repoll(Expect("grace", PREMIUM, expires_ms=T0 + 37 * DAY_MS)),
                            clock(3, Expect("grace", PREMIUM)), g.play(ACTIVE, 63),
                            g.note("recovered", 1, 33.02, expect=Expect(
                                "active", PREMIUM, (("subscription.recovered", "active"),))),
                            repoll(Expect("active", PREMIUM, expires_ms=T0 + 63 * DAY_MS)))))

    g = Google("g-hold")
    out.append(Scenario("google account hold and recovery", "google", g.key,
                        "[RTDN] SUBSCRIPTION_ON_HOLD (5), SUBSCRIPTION_RECOVERED (1); [SUB] "
                        "ON_HOLD: no access", (
                            *g.buy(), clock(30.01), g.play(HOLD, 30),
                            g.note("hold", 5, 30.01, expect=Expect(
                                "on_hold", NONE, (("subscription.on_hold", "on_hold"),))),
                            repoll(Expect("on_hold", NONE)), clock(5), g.play(ACTIVE, 65),
                            g.note("recovered", 1, 35.02, expect=Expect("active", PREMIUM)),
                            repoll(Expect("active", PREMIUM)))))

    g = Google("g-pause")
    out.append(Scenario("google pause and resume", "google", g.key,
                        "[RTDN] SUBSCRIPTION_PAUSED (10), SUBSCRIPTION_PAUSE_SCHEDULE_CHANGED "
                        "(11), resumed as SUBSCRIPTION_RENEWED (2); [SUB] PAUSED: no access", (
                            *g.buy(), g.play(ACTIVE, 30),
                            g.note("schedule", 11, 20, expect=Expect("active", PREMIUM)),
                            clock(30.01), g.play(PAUSED, 30),
                            g.note("paused", 10, 30.01, expect=Expect(
                                "paused", NONE, (("subscription.paused", "paused"),))),
                            repoll(Expect("paused", NONE)), clock(30), g.play(ACTIVE, 90),
                            g.note("resumed", 2, 60.02, expect=Expect("active", PREMIUM)),
                            repoll(Expect("active", PREMIUM, expires_ms=T0 + 90 * DAY_MS)))))

    g = Google("g-deferred")
    out.append(Scenario("google deferred renewal", "google", g.key,
                        "[RTDN] SUBSCRIPTION_DEFERRED (9): the renewal time was extended; "
                        "[SUB] expiryTime moves", (
                            *g.buy(), g.play(ACTIVE, 45),
                            g.note("deferred", 9, 5, expect=Expect(
                                "active", PREMIUM, (("subscription.deferred", "active"),))),
                            repoll(Expect("active", PREMIUM, expires_ms=T0 + 45 * DAY_MS)))))

    g = Google("g-price")
    out.append(Scenario("google price change confirmed", "google", g.key,
                        "[RTDN] SUBSCRIPTION_PRICE_CHANGE_CONFIRMED (8): nothing changes for "
                        "access", (
                            *g.buy(),
                            g.note("price", 8, 5, expect=Expect("active", PREMIUM, (
                                ("subscription.price_change_accepted", "active"),))),
                            repoll(Expect("active", PREMIUM)))))

    g = Google("g-revoke")
    out.append(Scenario("google revoke", "google", g.key,
                        "[RTDN] SUBSCRIPTION_REVOKED (12): revoked before its expiry; "
                        "[SUB] EXPIRED afterwards", (
                            *g.buy(), g.play(EXPIRED, 3),
                            g.note("revoked", 12, 3, expect=Expect(
                                "revoked", NONE, (("subscription.revoked", "revoked"),))),
                            repoll(Expect("revoked", NONE)))))

    for name, order, refund_type, play_state, state, access, cite in (
            ("full refund of the current order", "GPA.1234-5678-9012-34567..1", 1, EXPIRED,
             "refunded", NONE, "a full refund (refundType 1) of the current order; [SUB] "
             "EXPIRED afterwards (no access left): refunded"),
            ("full refund of an old order", "GPA.1234-5678-9012-34567..0", 1, ACTIVE,
             "active", PREMIUM, "orderId names an earlier renewal order; [SUB] still "
             "ACTIVE: access stays"),
            ("partial refund", "GPA.1234-5678-9012-34567..1", 2, ACTIVE, "active", PREMIUM,
             "refundType 2: quantity-based partial refund; [SUB] still ACTIVE")):
        g = Google(f"g-void-{refund_type}-{play_state[19:].lower()}")
        exceptions = {} if state != "refunded" else {(1, 9): (Expect("expired", NONE), (
            "(a void of a token relay does not know yet is relayed without a subject; the "
            "purchase, seen later, ends `expired`: no access either way)"))}
        out.append(Scenario(f"google voided purchase, {name}", "google", g.key,
                            f"[RTDN] VoidedPurchaseNotification: {cite}", (
                                *g.buy(), clock(31), g.play(ACTIVE, 61, order=order[:-1] + "1"),
                                g.note("renewed", 2, 30.5), repoll(),
                                g.play(play_state, 61, order=order[:-1] + "1"),
                                g.void("voided", order, 31, refund_type, expect=Expect(
                                    "active", PREMIUM, (("subscription.refunded", "active"),))),
                                repoll(Expect(state, access))), order_exceptions=exceptions))

    g = Google("g-up", product=G)
    up_expect = Expect("active", PRO, latest_ref="g-up-b", product=GP)
    out.append(Scenario("google upgrade: token replacement in order", "google", g.key,
                        "[SUB] the new purchase's linkedPurchaseToken names the old token, "
                        "whose state is EXPIRED with canceledStateContext."
                        "replacementCancellation; [RTDN] SUBSCRIPTION_PURCHASED for the new "
                        "token, SUBSCRIPTION_EXPIRED for the old one", (
                            *g.buy(),
                            g.play(ACTIVE, 40, token="g-up-b", product=GP, linked=g.key),
                            g.play(EXPIRED, 10, replaced=True),
                            g.note("purchased b", 4, 10, token="g-up-b", product=GP,
                                   expect=Expect("active", PRO, latest_ref="g-up-b")),
                            repoll(up_expect),
                            g.note("expired a", 13, 10.001, expect=Expect(
                                "active", PRO, (("subscription.expired", "active"),),
                                latest_ref="g-up-b")),
                            repoll(up_expect))))

    g = Google("g-up-late")
    out.append(Scenario("google upgrade: the old token's notification arrives last",
                        "google", g.key,
                        "[SUB] only the current token (the one no other links to) describes "
                        "the subscription; the replaced token's EXPIRED changes nothing", (
                            *g.buy(),
                            g.play(ACTIVE, 40, token="g-up-late-b", product=GP, linked=g.key),
                            g.play(EXPIRED, 10, replaced=True),
                            g.note("purchased b", 4, 10, token="g-up-late-b", product=GP),
                            repoll(Expect("active", PRO, latest_ref="g-up-late-b")),
                            clock(1),
                            g.note("late canceled a", 3, 9.5, expect=Expect(
                                "active", PRO, latest_ref="g-up-late-b")),
                            repoll(Expect("active", PRO, latest_ref="g-up-late-b")))))

    g = Google("g-pending")
    out.append(Scenario("google pending purchase canceled", "google", g.key,
                        "[SUB] SUBSCRIPTION_STATE_PENDING (no access), then "
                        "SUBSCRIPTION_STATE_PENDING_PURCHASE_CANCELED", (
                            g.play(PENDING, None),
                            g.verify(Expect("pending", NONE,
                                            (("subscription.purchased", "pending"),))),
                            g.play(PENDING_CANCELED, None),
                            g.note("pending canceled", 17, 1, expect=Expect("pending", NONE)),
                            repoll(Expect("expired", NONE)))))
    return out


def _absolute(s: Scenario) -> Scenario:
    """Clock steps are written as advances; run them as "at T0 + t" (the in-order
    timeline), so a delivery moved earlier (whose store time moves the clock on) does not
    shift the rest of the scenario."""
    at, steps = 0.0, []
    for step in s.steps:
        if step.kind == "clock":
            at += step.payload
            step = Step(f"clock to day {at / 86_400:g}", "clock", at, step.expect)
        steps.append(step)
    return Scenario(s.name, s.platform, s.key, s.cite, tuple(steps), s.user,
                    s.order_exceptions)


def store_time_ms(step: Step) -> int | None:
    """The store's own time of a delivery (Apple signedDate, Google eventTimeMillis)."""
    if step.kind == "apple":
        return int(step.payload["signedDate"])
    if step.kind == "google":
        return int(step.payload[0]["eventTimeMillis"])
    if step.kind == "void":
        return int(step.payload["eventTimeMillis"])
    return None


SCENARIOS: tuple[Scenario, ...] = tuple(_absolute(s) for s in (*_apple(), *_google()))
