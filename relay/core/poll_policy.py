"""When a purchase is re-polled next (`next_poll_ms`): the due-queue policy. Pure."""

from __future__ import annotations

from dataclasses import dataclass

from relay.core.domain import SUSPENDED_STATES, TERMINAL_STATES, PurchaseView, State


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
    after_expiry = p.expires_ms + policy.poll_after_expiry_s * 1000
    if after_expiry > now_ms:
        return min(after_expiry, sweep)
    if p.platform == "apple" and state in (State.ACTIVE, State.GRACE):
        # Past expiry with no renewal seen: check again at the end of the grace.
        grace_end = p.expires_ms + policy.apple_renewal_grace_s * 1000
        if grace_end > now_ms:
            return min(grace_end, sweep)
    # Overdue: poll soon, spaced so a failing row does not spin.
    return now_ms + policy.poll_after_expiry_s * 1000
