"""When a purchase is re-polled next (`next_poll_ms`), and what the clock itself decides
when a re-poll finds no news (`clock_input`): the due-queue policy. Pure."""

from __future__ import annotations

from dataclasses import dataclass

from relay.core.domain import (
    SUSPENDED_STATES,
    TERMINAL_STATES,
    EntitlementPolicy,
    InputNote,
    PurchaseView,
    Snapshot,
    State,
)


@dataclass(frozen=True, slots=True)
class PollPolicy:
    """The `[scheduler]` settings the policy needs (seconds)."""

    poll_after_expiry_s: int = 600
    apple_renewal_grace_s: int = 86_400
    sweep_interval_s: int = 86_400
    billing_retry_poll_s: int = 14_400
    retention_s: int = 2_592_000


def next_poll_ms(p: PurchaseView, now_ms: int, policy: PollPolicy,
                 poll_now: bool = False, *, updated_ms: int | None = None) -> int | None:
    """The next time to re-poll `p`, or None for never.

    `updated_ms`: the row's `updated_ms` once this change is stored, when the caller has
    not put it in `p` yet (default `p.updated_ms`).
    """
    if poll_now:
        return now_ms
    state = State(p.state) if p.state in State.__members__.values() else None
    if state in TERMINAL_STATES or p.kind == "product":
        return None
    sweep = now_ms + policy.sweep_interval_s * 1000
    if state == State.EXPIRED:
        # Keep an eye on it for a while (a resubscribe or late renewal), then stop.
        updated = p.updated_ms if updated_ms is None else updated_ms
        if now_ms - updated > policy.retention_s * 1000:
            return None
        return sweep
    if state in SUSPENDED_STATES:
        return now_ms + policy.billing_retry_poll_s * 1000
    if p.expires_ms is None:
        return sweep
    end = p.expires_ms
    if state == State.GRACE and p.grace_expires_ms is not None:
        end = max(end, p.grace_expires_ms)  # Apple: nothing to learn before the grace end
    after_expiry = end + policy.poll_after_expiry_s * 1000
    if after_expiry > now_ms:
        return min(after_expiry, sweep)
    if p.platform == "apple" and state in (State.ACTIVE, State.GRACE):
        # Past expiry with no renewal seen: check again at the end of the grace.
        grace_end = p.expires_ms + policy.apple_renewal_grace_s * 1000
        if grace_end > now_ms:
            return min(grace_end, sweep)
    # Overdue: poll soon, spaced so a failing row does not spin.
    return now_ms + policy.poll_after_expiry_s * 1000


def clock_input(p: PurchaseView, now_ms: int, policy: EntitlementPolicy) -> Snapshot | None:
    """What the clock says about an Apple subscription whose access ran out with no news:
    past expiry + `apple_renewal_grace_s` with no renewal seen, `expired`
    (renewal_not_seen); past its billing grace end, `billing_retry` (Apple keeps retrying
    the charge without access: GRACE_PERIOD_EXPIRED). None: nothing to say yet."""
    if p.platform != "apple" or p.kind != "subscription" or p.expires_ms is None:
        return None
    leeway_ms = policy.clock_leeway_s * 1000
    if p.state == State.GRACE and p.grace_expires_ms is not None:
        if now_ms < max(p.expires_ms, p.grace_expires_ms) + leeway_ms:
            return None
        return _clock(p, now_ms, State.BILLING_RETRY, "grace_period_over",
                      "subscription.grace_period_expired")
    if p.state == State.ACTIVE_NOT_RENEWING:
        over = now_ms >= p.expires_ms + leeway_ms
    elif p.state in (State.ACTIVE, State.GRACE):
        over = now_ms >= p.expires_ms + policy.apple_renewal_grace_s * 1000
    else:
        over = False
    return _clock(p, now_ms, State.EXPIRED, "renewal_not_seen",
                  "subscription.expired") if over else None


def _clock(p: PurchaseView, now_ms: int, state: State, reason: str, event: str) -> Snapshot:
    return Snapshot(
        platform=p.platform, subject_key=p.subject_key, source="poll",
        observed_ms=max(now_ms, p.store_time_ms), received_ms=now_ms, state=state,
        state_reason=reason, event_type=event, event_reason=reason, note=InputNote(reason))
