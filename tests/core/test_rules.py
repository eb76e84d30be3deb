"""relay.core.rules: the routes an event takes, worked out once per (event type, platform)."""

from __future__ import annotations

from dataclasses import replace

from relay.core import relayed
from relay.core.rules import Route, Rules

RULES = Rules(routes=(
    Route("all"), Route("apple", events=("subscription.*",), platforms=("apple",)),
    Route("prod", environments=("production",), active=False),
    Route("ledger", events=("transaction.*",))))


def test_routes_for_event_is_the_filters_in_order() -> None:
    for event, platform in [("subscription.renewed", "apple"), ("subscription.renewed", "google"),
                            ("transaction.recorded", "apple"), ("test", None)]:
        want = tuple(r for r in RULES.routes if r.matches_event(event, platform))
        assert RULES.routes_for_event(event, platform) == want
        assert RULES.routes_for_event(event, platform) == want  # from the memo


def test_route_and_routes_for_take_the_environment_into_account() -> None:
    assert relayed.route(RULES, "subscription.renewed", "apple", None) == [
        ("all", "pending"), ("apple", "pending"), ("prod", "unrouted")]
    assert relayed.route(RULES, "subscription.renewed", "apple", "sandbox") == [
        ("all", "pending"), ("apple", "pending")]
    assert [r.name for r in relayed.routes_for(RULES, "test", None, "production")] == [
        "all", "prod"]


def test_new_rules_start_with_their_own_memo() -> None:
    RULES.routes_for_event("subscription.renewed", "apple")
    fewer = replace(RULES, routes=RULES.routes[:1])
    assert [r.name for r in fewer.routes_for_event("subscription.renewed", "apple")] == ["all"]
    assert fewer == Rules(routes=RULES.routes[:1])
