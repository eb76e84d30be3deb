"""What applying a snapshot needs from the configuration: routes to endpoints and policies. Pure."""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass, field

from relay.core.domain import EntitlementPolicy
from relay.core.poll_policy import PollPolicy


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
        return any(fnmatch.fnmatchcase(event_type, pattern) for pattern in self.events)


@dataclass(frozen=True, slots=True)
class Rules:
    """Everything from the configuration that applying a snapshot needs."""

    routes: tuple[Route, ...] = ()
    entitlements: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    owner_conflict: str = "transfer"
    entitlement_policy: EntitlementPolicy = field(default_factory=EntitlementPolicy)
    poll: PollPolicy = field(default_factory=PollPolicy)
