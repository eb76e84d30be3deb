"""`next_poll_ms`: when each kind of purchase is re-polled, row by row."""

from __future__ import annotations

import pytest

from relay.core.domain import PurchaseView, State
from relay.core.poll_policy import PollPolicy, next_poll_ms

NOW = 1_800_000_000_000
DAY = 86_400_000
POLICY = PollPolicy(poll_after_expiry_s=600, apple_renewal_grace_s=86_400,
                    sweep_interval_s=86_400, billing_retry_poll_s=14_400,
                    retention_s=2_592_000)


def view(state: State, *, platform: str = "apple", kind: str = "subscription",
         expires_ms: int | None = None, updated_ms: int = NOW) -> PurchaseView:
    return PurchaseView(
        platform=platform, subject_key="k", kind=kind, user_id=None, app_user_id=None,
        product_id="p", base_plan_id=None, state=state, state_reason=None,
        environment="production", expires_ms=expires_ms, auto_renew=True, latest_ref=None,
        package_name=None, store_time_ms=NOW, sequence=1, created_ms=NOW,
        updated_ms=updated_ms)


@pytest.mark.parametrize(("p", "expected"), [
    (view(State.REVOKED), None),
    (view(State.REFUNDED), None),
    (view(State.OWNED, kind="product"), None),
    (view(State.EXPIRED, updated_ms=NOW - DAY), NOW + DAY),  # watched for a while
    (view(State.EXPIRED, updated_ms=NOW - 31 * DAY), None),  # then left alone
    (view(State.BILLING_RETRY), NOW + 14_400_000),
    (view(State.ON_HOLD, platform="google"), NOW + 14_400_000),
    (view(State.ACTIVE), NOW + DAY),  # no expiry known: the daily sweep
    (view(State.ACTIVE, expires_ms=NOW + 3_600_000), NOW + 3_600_000 + 600_000),
    (view(State.ACTIVE, expires_ms=NOW + 5 * DAY), NOW + DAY),  # the sweep comes first
    (view(State.ACTIVE, expires_ms=NOW - 3_600_000), NOW - 3_600_000 + DAY),  # Apple grace
    (view(State.ACTIVE, platform="google", expires_ms=NOW - 3_600_000), NOW + 600_000),
    (view(State.ACTIVE, expires_ms=NOW - 2 * DAY), NOW + 600_000),  # overdue
])
def test_next_poll(p: PurchaseView, expected: int | None) -> None:
    assert next_poll_ms(p, NOW, POLICY) == expected


def test_poll_now_wins_over_everything() -> None:
    assert next_poll_ms(view(State.REVOKED), NOW, POLICY, poll_now=True) == NOW


def test_updated_ms_given_replaces_the_rows() -> None:
    """The pipeline asks before it stores the row's new updated_ms (one replace, not two):
    an expired row touched now is watched again, whatever its old updated_ms said."""
    old = view(State.EXPIRED, updated_ms=NOW - 31 * DAY)
    assert next_poll_ms(old, NOW, POLICY) is None
    assert next_poll_ms(old, NOW, POLICY, updated_ms=NOW) == NOW + DAY
