"""Downstream endpoints as the outbox sends to them: URL, timeout, schedule, signing keys.

Also the start-time checks (key material, SSRF rules) that turn a bad `[[downstream]]`
into a configuration error naming the key and the setting. No database, no HTTP.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from relay.config import Config, ConfigError, DownstreamConfig, Secret
from relay.outbox.signing import (
    SECRET_PREFIX,
    SIGNING_KEY_PREFIX,
    parse_secret,
    parse_signing_key,
)
from relay.outbox.ssrf import Network, Resolve, SsrfError, check_url, parse_allow_networks


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


def _where(index: int, ds: DownstreamConfig) -> str:
    return f"[[downstream]] #{index + 1} ({ds.name})"


def _split_keys(name: str, secrets: Sequence[Secret], problems: list[str]
                ) -> tuple[tuple[bytes, ...], tuple[Ed25519PrivateKey, ...]]:
    hmac_keys: list[bytes] = []
    ed_keys: list[Ed25519PrivateKey] = []
    for line, secret in enumerate(secrets, start=1):
        text = secret.reveal()
        try:
            if text.startswith(SIGNING_KEY_PREFIX):
                ed_keys.append(parse_signing_key(text))
            elif text.startswith(SECRET_PREFIX):
                hmac_keys.append(parse_secret(text))
            # A line with neither prefix is reported by config.load_credentials.
        except ValueError as exc:  # the messages never echo key material
            problems.append(f"credential downstream-{name}-secret line {line}: {exc}")
    return tuple(hmac_keys), tuple(ed_keys)


def url_problem(url: str, allow: Sequence[Network], resolve: Resolve | None = None
                ) -> str | None:
    """Why the SSRF guard refuses `url` (scheme, literal IP; hostnames too if `resolve`)."""
    try:
        check_url(url, allow, resolve=resolve)
    except SsrfError as exc:
        return f"url refused by the SSRF guard ({exc.rule}): {exc}"
    return None


def downstream_problems(config: Config) -> list[str]:
    """Every key-material and literal-address problem of the `[[downstream]]` tables."""
    problems: list[str] = []
    o = config.outbox
    if len(config.downstream) > 1 and o.per_endpoint_concurrency >= o.concurrency:
        problems.append(
            f"{config.source}: [outbox] per_endpoint_concurrency ({o.per_endpoint_concurrency})"
            f" must be below concurrency ({o.concurrency}) with several [[downstream]] "
            "endpoints, or one slow endpoint could take every slot")
    try:
        allow = parse_allow_networks(config.outbox.allow_networks)
    except ValueError as exc:
        return [str(exc)]
    for i, ds in enumerate(config.downstream):
        _split_keys(ds.name, config.credentials.downstream_secrets.get(ds.name, ()), problems)
        problem = url_problem(ds.url, allow)
        if problem is not None:
            problems.append(f"{config.source}: {_where(i, ds)} {problem}")
    return problems


def build_endpoints(config: Config) -> dict[str, Endpoint]:
    """The endpoints by name; ConfigError (exit 78 at start) if any is unusable."""
    problems = downstream_problems(config)
    if problems:
        raise ConfigError(problems)
    out: dict[str, Endpoint] = {}
    for ds in config.downstream:
        hmac_keys, ed_keys = _split_keys(
            ds.name, config.credentials.downstream_secrets.get(ds.name, ()), [])
        out[ds.name] = Endpoint(
            name=ds.name, url=ds.url, timeout_s=ds.timeout_s,
            schedule=ds.retry_schedule_s or config.outbox.retry_schedule_s,
            hmac_keys=hmac_keys, ed25519_keys=ed_keys, enabled=ds.enabled)
    return out


def hostname_problem(config: Config, index: int, exc: SsrfError) -> ConfigError:
    ds = config.downstream[index]
    return ConfigError([f"{config.source}: {_where(index, ds)} url refused by the SSRF guard "
                        f"({exc.rule}): {exc}"])
