"""The live configuration and what is derived from it; replaced whole on reload."""

from __future__ import annotations

import time
from collections.abc import Callable

from relay.config import Config
from relay.core.domain import EntitlementPolicy
from relay.core.poll_policy import PollPolicy
from relay.core.rules import Route, Rules


def rules_from(config: Config, paused: frozenset[str] = frozenset()) -> Rules:
    """Routing and policy for the pipeline; endpoints paused, disabled or without secret hold."""
    routes = tuple(
        Route(name=d.name, events=d.events, platforms=d.platforms,
              environments=d.environments,
              active=(d.enabled and d.name not in paused
                      and bool(config.credentials.downstream_secrets.get(d.name))))
        for d in config.downstream)
    s = config.scheduler
    return Rules(
        routes=routes, entitlements=config.entitlements,
        owner_conflict=config.purchases.owner_conflict,
        entitlement_policy=EntitlementPolicy(config.purchases.clock_leeway_s,
                                             s.apple_renewal_grace_s),
        poll=PollPolicy(s.poll_after_expiry_s, s.apple_renewal_grace_s, s.sweep_interval_s,
                        s.billing_retry_poll_s, s.retention_s))


class Runtime:
    """Holds the current `Config` and its `Rules`; handlers read it per request."""

    def __init__(self, config: Config, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.paused: frozenset[str] = frozenset()
        self.config = config
        self.rules = rules_from(config)

    def replace(self, config: Config) -> None:
        self.config = config
        self.rules = rules_from(config, self.paused)

    def set_paused(self, paused: frozenset[str]) -> None:
        self.paused = paused
        self.rules = rules_from(self.config, paused)

    def now_ms(self) -> int:
        return int(self.clock() * 1000)
