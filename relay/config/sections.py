"""The configuration's shape: one frozen dataclass per `relay.toml` section, with every
key's default, and `Config`, which holds them all with the credentials. Pure."""

from __future__ import annotations

import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from relay.credentials import Credentials


class ConfigError(Exception):
    """One or more configuration problems; `problems` holds one line each."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


MAX_WORKERS = 64


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8787
    max_body_bytes: int = 262_144
    shutdown_timeout_s: float = 30.0
    # A connection must send its request line and headers within this (and, once they
    # are in, the body within as long again); idle keep-alive connections close after it.
    header_timeout_s: float = 15.0
    workers: int = 1  # processes serving the port (relay/workers.py); 1: no supervisor
    ingest_writer: bool = False  # webhook writes in a process of their own (ingest_writer.py)

    @property
    def supervised(self) -> bool:
        """`relay serve` runs a supervisor and child processes sharing the store."""
        return self.workers > 1 or self.ingest_writer


@dataclass(frozen=True, slots=True)
class StoreConfig:
    path: str = "relay.sqlite3"
    # PostgreSQL URL, maybe with a password (the `database-url` credential): not in a repr.
    url: str = field(default="", repr=False)
    auto_migrate: bool = True
    busy_timeout_s: float = 5.0


@dataclass(frozen=True, slots=True)
class AttestoConfig:
    base_url: str = "http://127.0.0.1:8000"
    timeout_s: float = 25.0
    connect_timeout_s: float = 5.0
    max_attempts: int = 4
    max_concurrency: int = 64
    breaker_threshold: int = 5  # consecutive failed attempts before calls are refused
    breaker_cooldown_s: float = 5.0  # how long they are refused before one probe


@dataclass(frozen=True, slots=True)
class WebhooksConfig:
    path: str = "/v1/webhooks/attesto"
    tolerance_s: int = 300


@dataclass(frozen=True, slots=True)
class JwtConfig:
    algorithms: tuple[str, ...] = ("HS256",)
    issuer: str = ""
    audience: str = ""
    leeway_s: int = 30


@dataclass(frozen=True, slots=True)
class PurchasesConfig:
    owner_conflict: str = "transfer"
    clock_leeway_s: int = 60


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """Per-caller budgets (relay/inbound_limits.py): defaults a real app never reaches."""

    user_rate_per_s: float = 20.0  # per end user (JWT `sub`) on every /api/iap route
    user_burst: float = 40.0
    service_key_rate_per_s: float = 500.0  # per service key on /v1 verify and restore
    service_key_burst: float = 1000.0
    restore_timeout_s: float = 30.0  # a whole restore; items not answered by then: 504


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    enabled: bool = True
    tick_s: float = 5.0
    poll_after_expiry_s: int = 600
    apple_renewal_grace_s: int = 86_400
    sweep_interval_s: int = 86_400
    billing_retry_poll_s: int = 14_400
    max_polls_per_s: float = 20.0
    max_concurrent_polls: int = 8
    batch_size: int = 500
    retention_s: int = 2_592_000


@dataclass(frozen=True, slots=True)
class InputLogConfig:
    # Seconds the input log's rows and the inbox's raw bodies are kept; 0 = for ever. The
    # inbox's eventIds (the dedupe keys) are kept for ever whatever this says.
    retention_s: int = 0


@dataclass(frozen=True, slots=True)
class OutboxConfig:
    concurrency: int = 32
    per_endpoint_concurrency: int = 8
    # About three days in all: 5 s, 30 s, 2 min, 10 min, 30 min, 1 h, 2 h, 4 h,
    # 8 h, 12 h, 24 h, 24 h (each with up to 20 % jitter).
    retry_schedule_s: tuple[float, ...] = (
        5, 30, 120, 600, 1800, 3600, 7200, 14400, 28800, 43200, 86400, 86400,
    )
    allow_networks: tuple[str, ...] = ()
    claim_timeout_s: float = 120.0
    stop_grace_s: float = 5.0
    sweep_s: float = 5.0
    delivered_retention_s: int = 604_800


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: str = "info"
    format: str = "plain"


@dataclass(frozen=True, slots=True)
class ConsoleConfig:
    """The admin console (relay/web/console/): served only while credential admin-token is
    set."""

    enabled: bool = True
    path: str = "/console"  # where it is served; changing it needs a restart
    session_ttl_s: int = 28_800  # a sign-in lasts this long (8 h), then sign in again
    max_failed_signins: int = 5  # per client address and window; then sign-in answers 429
    failed_signin_window_s: int = 900


@dataclass(frozen=True, slots=True)
class DownstreamConfig:
    name: str
    url: str
    events: tuple[str, ...] = ("*",)
    platforms: tuple[str, ...] = ()
    environments: tuple[str, ...] = ()
    enabled: bool = True
    timeout_s: float = 15.0
    retry_schedule_s: tuple[float, ...] = ()


@dataclass(frozen=True, slots=True)
class ProductConfig:
    """One entry of the catalogue `/api/iap/products` serves (@nossdev/iap's shape)."""

    id: str
    type: str  # subscription | product | consumable
    android_plan_id: str = ""  # Google base plan; @nossdev/iap requires it for subscriptions


PRODUCT_TYPES = ("subscription", "product", "consumable")


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    attesto: AttestoConfig = field(default_factory=AttestoConfig)
    webhooks: WebhooksConfig = field(default_factory=WebhooksConfig)
    jwt: JwtConfig = field(default_factory=JwtConfig)
    purchases: PurchasesConfig = field(default_factory=PurchasesConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    outbox: OutboxConfig = field(default_factory=OutboxConfig)
    input_log: InputLogConfig = field(default_factory=InputLogConfig)
    log: LogConfig = field(default_factory=LogConfig)
    console: ConsoleConfig = field(default_factory=ConsoleConfig)
    entitlements: Mapping[str, tuple[str, ...]] = field(
        default_factory=lambda: types.MappingProxyType({})
    )
    downstream: tuple[DownstreamConfig, ...] = ()
    products: tuple[ProductConfig, ...] = ()
    credentials: Credentials = field(default_factory=Credentials)
    source: str = "(defaults)"

    def disabled_features(self) -> list[str]:
        """Name each feature a missing credential turns off (it fails closed)."""
        creds, out = self.credentials, []
        if creds.attesto_api_key is None:
            out.append("verify and re-poll: credential 'attesto-api-key' is missing")
        if not creds.attesto_webhook_secrets:
            out.append("webhook receiver: credential 'attesto-webhook-secret' is missing")
        if not creds.api_keys:
            out.append("/v1 service API: credential 'api-keys' is missing")
        if creds.admin_token is None and creds.metrics_token is None:
            out.append("admin API, /metrics and the console: credential 'admin-token' is "
                       "missing (or 'metrics-token' for /metrics alone)")
        elif creds.admin_token is None:
            out.append("admin API and the console: credential 'admin-token' is missing "
                       "(/metrics answers the metrics token)")
        if creds.jwt_key is None:
            out.append("/api/iap (end-user JWTs): credential 'jwt-key' is missing")
        for ds in self.downstream:
            if not creds.downstream_secrets.get(ds.name):
                out.append(
                    f"downstream {ds.name!r}: credential 'downstream-{ds.name}-secret' "
                    "is missing (its events are held)"
                )
        return out


# TOML section name -> (Config attribute, dataclass). `auth.jwt` is the nested table.
SECTIONS: dict[str, tuple[str, type[Any]]] = {
    "server": ("server", ServerConfig),
    "store": ("store", StoreConfig),
    "attesto": ("attesto", AttestoConfig),
    "webhooks": ("webhooks", WebhooksConfig),
    "auth.jwt": ("jwt", JwtConfig),
    "purchases": ("purchases", PurchasesConfig),
    "limits": ("limits", LimitsConfig),
    "scheduler": ("scheduler", SchedulerConfig),
    "outbox": ("outbox", OutboxConfig),
    "input_log": ("input_log", InputLogConfig),
    "log": ("log", LogConfig),
    "console": ("console", ConsoleConfig),
}
