"""Downstream endpoints as the outbox sends to them: URL, timeout, schedule, signing keys.

Built from the configuration, whose load already checked key material and literal
addresses (`relay.config.downstream_problems`). No database, no HTTP.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from relay.config import Config, ConfigError, downstream_problems, downstream_where, split_keys
from relay.core.addresses import SsrfError


@dataclass(frozen=True, slots=True)
class Endpoint:
    name: str
    url: str
    timeout_s: float
    schedule: tuple[float, ...]
    hmac_keys: tuple[bytes, ...]
    ed25519_keys: tuple[Ed25519PrivateKey, ...]
    enabled: bool

    @property
    def schemes(self) -> list[str]:
        return ["v1"] * bool(self.hmac_keys) + ["v1a"] * bool(self.ed25519_keys)

    @property
    def can_sign(self) -> bool:
        return bool(self.hmac_keys or self.ed25519_keys)


def build_endpoints(config: Config) -> dict[str, Endpoint]:
    """The endpoints by name; ConfigError (exit 78 at start) if any is unusable."""
    problems = downstream_problems(config)
    if problems:
        raise ConfigError(problems)
    out: dict[str, Endpoint] = {}
    for ds in config.downstream:
        hmac_keys, ed_keys = split_keys(
            ds.name, config.credentials.downstream_secrets.get(ds.name, ()), [])
        out[ds.name] = Endpoint(
            name=ds.name, url=ds.url, timeout_s=ds.timeout_s,
            schedule=ds.retry_schedule_s or config.outbox.retry_schedule_s,
            hmac_keys=hmac_keys, ed25519_keys=ed_keys, enabled=ds.enabled)
    return out


def hostname_problem(config: Config, index: int, exc: SsrfError) -> ConfigError:
    ds = config.downstream[index]
    return ConfigError([f"{config.source}: {downstream_where(index, ds)} url refused by the "
                        f"SSRF guard ({exc.rule}): {exc}"])
