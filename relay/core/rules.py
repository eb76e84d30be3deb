"""What applying a snapshot needs from the configuration: routes to endpoints and policies. Pure."""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass, field

from relay.core.domain import EntitlementPolicy
from relay.core.poll_policy import PollPolicy

# Event families an endpoint receives only when its `events` names them, with a pattern
# that begins with the family ("transaction.*", "transaction.recorded"): the default
# `["*"]`, or `*.refunded`, does not take them, so a new family reaches no endpoint that
# did not ask for it.
OPT_IN_FAMILIES = ("transaction.",)


def _family(event_type: str) -> str | None:
    return next((f for f in OPT_IN_FAMILIES if event_type.startswith(f)), None)


@dataclass(frozen=True, slots=True)
class Route:
    """A downstream endpoint as the fan-out sees it."""

    name: str
    events: tuple[str, ...] = ("*",)
    platforms: tuple[str, ...] = ()
    environments: tuple[str, ...] = ()
    active: bool = True  # False: rows are stored as held

    def matches(self, event_type: str, platform: str | None, environment: str | None) -> bool:
        if self.environments and environment not in self.environments:
            return False
        return self.matches_event(event_type, platform)

    def matches_event(self, event_type: str, platform: str | None) -> bool:
        """The filters but the environment's (a purchase's may not be known yet)."""
        if self.platforms and platform not in self.platforms:
            return False
        family = _family(event_type)
        return any(fnmatch.fnmatchcase(event_type, pattern)
                   and (family is None or pattern.startswith(family))
                   for pattern in self.events)


@dataclass(frozen=True, slots=True)
class Rules:
    """Everything from the configuration that applying a snapshot needs."""

    routes: tuple[Route, ...] = ()
    entitlements: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    owner_conflict: str = "transfer"
    entitlement_policy: EntitlementPolicy = field(default_factory=EntitlementPolicy)
    poll: PollPolicy = field(default_factory=PollPolicy)
    # (event type, platform) -> the routes that take it, environment aside: worked out
    # once per pair (the patterns are fixed with the rules) instead of per event.
    _by_event: dict[tuple[str, str | None], tuple[Route, ...]] = field(
        default_factory=dict, init=False, repr=False, compare=False)

    def routes_for_event(self, event_type: str, platform: str | None) -> tuple[Route, ...]:
        """The routes whose filters take `event_type` on `platform`, the environment's
        aside (`Route.matches_event`), in configuration order."""
        key = (event_type, platform)
        found = self._by_event.get(key)
        if found is None:
            found = tuple(r for r in self.routes if r.matches_event(event_type, platform))
            if len(self._by_event) < _MAX_MEMO:  # event types are Attesto's: a few dozen
                self._by_event[key] = found
        return found


_MAX_MEMO = 4096
