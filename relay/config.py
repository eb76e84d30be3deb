"""Configuration: typed sections, `relay.toml` + `RELAY_*` overrides + credentials
(read by `relay.credentials`).

Pure: stdlib only (plus relay's pure checkers for `[[downstream]]` keys and URLs).
`load_config` reports every problem at once in one `ConfigError`,
each line naming its source (file or variable), section and key.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

# Credentials and Secret are re-exported: callers know them as part of the Config.
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from relay.core.addresses import Network, Resolve, SsrfError, check_url, parse_allow_networks
from relay.core.signing import SECRET_PREFIX, SIGNING_KEY_PREFIX, parse_secret, parse_signing_key
from relay.credentials import Credentials as Credentials
from relay.credentials import Secret as Secret
from relay.credentials import load_credentials

T = TypeVar("T")

DEFAULT_CONFIG_PATHS = (Path("relay.toml"), Path("/etc/relay/relay.toml"))
ENV_PREFIX = "RELAY_"


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
            out.append("admin API and /metrics: credential 'admin-token' is missing "
                       "(or 'metrics-token' for /metrics alone)")
        elif creds.admin_token is None:
            out.append("admin API: credential 'admin-token' is missing (/metrics answers "
                       "the metrics token)")
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
}
_TABLE_SECTIONS = ("entitlements", "downstream", "products")
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def _suggest(name: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _field_types(cls: type[Any]) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(value: Any, hint: Any, from_env: bool) -> Any:
    """Convert one TOML value (or env string) to the field type; ValueError if it can't."""
    origin = typing.get_origin(hint)
    if origin is tuple:
        (item,) = typing.get_args(hint)[:1]
        if from_env:
            parts = [p.strip() for p in str(value).split(",")] if str(value).strip() else []
            return tuple(_coerce(p, item, True) for p in parts)
        if not isinstance(value, list):
            raise ValueError(f"expected a list, got {type(value).__name__}")
        return tuple(_coerce(v, item, False) for v in value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if from_env and str(value).strip().lower() in _TRUE | _FALSE:
            return str(value).strip().lower() in _TRUE
        raise ValueError(f"not a bool ({value!r}); use true or false")
    if hint is int:
        if isinstance(value, bool):
            raise ValueError(f"not an int ({value!r})")
        if isinstance(value, int):
            return value
        if from_env:
            try:
                return int(str(value).strip())
            except ValueError:
                pass
        raise ValueError(f"not an int ({value!r})")
    if hint is float:
        if isinstance(value, bool):
            raise ValueError(f"not a number ({value!r})")
        if isinstance(value, int | float):
            return float(value)
        if from_env:
            try:
                return float(str(value).strip())
            except ValueError:
                pass
        raise ValueError(f"not a number ({value!r})")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ValueError(f"not a string ({value!r})")
    raise ValueError(f"unsupported type {hint!r}")  # pragma: no cover - programming error


def _positive(problems: list[str], where: str, name: str, value: float) -> None:
    if value <= 0:
        problems.append(f"{where} {name} must be > 0 (got {value})")


def _check_url(problems: list[str], where: str, name: str, url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        problems.append(f"{where} {name} must be an http(s) URL (got {redact_url(url)!r})")


# Query parameters whose value is a secret (libpq's password/sslpassword, webhook tokens).
_SECRET_PARAMS = ("pass", "secret", "token", "key", "sig", "auth")


def redact_url(url: str) -> str:
    """`url` with its password, and the value of any query parameter that looks secret,
    shown as `***`: what check-config and error messages print."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "***"
    if not parts.scheme or not parts.netloc:
        return url
    netloc = parts.netloc
    userinfo, at, hostport = netloc.rpartition("@")
    if at:
        user, colon, _ = userinfo.partition(":")
        netloc = f"{user}{':***' if colon else ''}@{hostport}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, "***" if any(w in k.lower() for w in _SECRET_PARAMS) else v)
                           for k, v in pairs], safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _is_loopback(host: str | None) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False


def _validate(cfg: Config, src: str) -> list[str]:
    p: list[str] = []
    s = cfg.server
    if not 0 <= s.port <= 65535:
        p.append(f"{src}: [server] port must be 0-65535 (got {s.port})")
    _positive(p, f"{src}: [server]", "max_body_bytes", s.max_body_bytes)
    _positive(p, f"{src}: [server]", "shutdown_timeout_s", s.shutdown_timeout_s)
    _positive(p, f"{src}: [server]", "header_timeout_s", s.header_timeout_s)
    if not 1 <= s.workers <= MAX_WORKERS:
        p.append(f"{src}: [server] workers must be 1-{MAX_WORKERS} (got {s.workers})")
    if s.ingest_writer and cfg.store.url:
        p.append(f"{src}: [server] ingest_writer works with SQLite only; on PostgreSQL run "
                 "more instances")
    if cfg.store.url and not cfg.store.url.startswith(("postgresql://", "postgres://")):
        if cfg.credentials.database_url is not None:
            p.append("credential database-url must start with postgresql:// (got "
                     f"{redact_url(cfg.store.url)!r})")
        else:
            p.append(f"{src}: [store] url must start with postgresql:// "
                     f"(got {redact_url(cfg.store.url)!r})")
    if not cfg.store.url and not cfg.store.path:
        p.append(f"{src}: [store] path must not be empty when url is not set")
    _check_url(p, f"{src}: [attesto]", "base_url", cfg.attesto.base_url)
    attesto = urlsplit(cfg.attesto.base_url)
    if attesto.scheme == "http" and not _is_loopback(attesto.hostname):
        p.append(f"{src}: [attesto] base_url {cfg.attesto.base_url!r} is plain http to a host "
                 "that is not loopback: the API key would cross the network in clear; use "
                 "https:// (http only to 127.0.0.0/8, ::1 or localhost)")
    for name in ("timeout_s", "connect_timeout_s", "max_attempts", "max_concurrency",
                 "breaker_threshold", "breaker_cooldown_s"):
        _positive(p, f"{src}: [attesto]", name, getattr(cfg.attesto, name))
    if not cfg.webhooks.path.startswith("/"):
        p.append(f"{src}: [webhooks] path must start with '/' (got {cfg.webhooks.path!r})")
    _positive(p, f"{src}: [webhooks]", "tolerance_s", cfg.webhooks.tolerance_s)
    allowed_algs = {"HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384",
                    "EdDSA", "PS256"}
    for alg in cfg.jwt.algorithms:
        if alg not in allowed_algs:
            p.append(f"{src}: [auth.jwt] algorithms: unknown algorithm {alg!r}"
                     f"{_suggest(alg, sorted(allowed_algs))}")
    if cfg.purchases.owner_conflict not in ("transfer", "keep"):
        p.append(f"{src}: [purchases] owner_conflict must be 'transfer' or 'keep' "
                 f"(got {cfg.purchases.owner_conflict!r})")
    for name in ("user_rate_per_s", "user_burst", "service_key_rate_per_s",
                 "service_key_burst", "restore_timeout_s"):
        _positive(p, f"{src}: [limits]", name, getattr(cfg.limits, name))
    for burst in ("user_burst", "service_key_burst"):
        if getattr(cfg.limits, burst) < 1:
            p.append(f"{src}: [limits] {burst} must be >= 1 (one request)")
    for name in ("tick_s", "poll_after_expiry_s", "apple_renewal_grace_s", "sweep_interval_s",
                 "billing_retry_poll_s", "max_polls_per_s", "max_concurrent_polls",
                 "batch_size", "retention_s"):
        _positive(p, f"{src}: [scheduler]", name, getattr(cfg.scheduler, name))
    o = cfg.outbox
    for name in ("concurrency", "per_endpoint_concurrency", "claim_timeout_s", "sweep_s",
                 "delivered_retention_s"):
        _positive(p, f"{src}: [outbox]", name, getattr(o, name))
    if cfg.input_log.retention_s < 0:
        p.append(f"{src}: [input_log] retention_s must be >= 0 (0 keeps the log for ever; "
                 f"got {cfg.input_log.retention_s})")
    if not o.retry_schedule_s or any(d < 0 for d in o.retry_schedule_s):
        p.append(f"{src}: [outbox] retry_schedule_s must be a non-empty list of seconds >= 0")
    for net in o.allow_networks:
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            p.append(f"{src}: [outbox] allow_networks: not a network ({net!r})")
    if cfg.log.level.lower() not in ("debug", "info", "warning", "error"):
        p.append(f"{src}: [log] level must be debug, info, warning or error "
                 f"(got {cfg.log.level!r})")
    if cfg.log.format not in ("plain", "json"):
        p.append(f"{src}: [log] format must be 'plain' or 'json' (got {cfg.log.format!r})")
    names: set[str] = set()
    for i, ds in enumerate(cfg.downstream):
        where = f"{src}: [[downstream]] #{i + 1} ({ds.name})"
        if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,62}", ds.name):
            p.append(f"{where} name must be lower-case letters, digits, '-' or '_'")
        if ds.name in names:
            p.append(f"{where} name is used twice")
        names.add(ds.name)
        _check_url(p, where, "url", ds.url)
        _positive(p, where, "timeout_s", ds.timeout_s)
        for plat in ds.platforms:
            if plat not in ("apple", "google"):
                p.append(f"{where} platforms: {plat!r} is not 'apple' or 'google'")
    ids: set[str] = set()
    for i, prod in enumerate(cfg.products):
        where = f"{src}: [[products]] #{i + 1} ({prod.id})"
        if not prod.id or prod.id in ids:
            p.append(f"{where} id must be non-empty and unique")
        ids.add(prod.id)
        if prod.type not in PRODUCT_TYPES:
            p.append(f"{where} type must be one of {', '.join(PRODUCT_TYPES)} "
                     f"(got {prod.type!r})")
        if prod.type == "subscription" and not prod.android_plan_id:
            p.append(f"{where} android_plan_id is required for a subscription "
                     "(@nossdev/iap needs it)")
    if cfg.downstream and not any("allow_networks" in line for line in p):
        # Key material and the SSRF guard's refusal of literal addresses (exit 78).
        p.extend(downstream_problems(cfg))
    return p


def downstream_where(index: int, ds: DownstreamConfig) -> str:
    return f"[[downstream]] #{index + 1} ({ds.name})"


def split_keys(name: str, secrets: Sequence[Secret], problems: list[str]
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
            # A line with neither prefix is reported by load_credentials.
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
        split_keys(ds.name, config.credentials.downstream_secrets.get(ds.name, ()), problems)
        problem = url_problem(ds.url, allow)
        if problem is not None:
            problems.append(f"{config.source}: {downstream_where(i, ds)} {problem}")
    return problems


def _build_section(cls: type[Any], table: Mapping[str, Any], where: str,
                   problems: list[str]) -> dict[str, Any]:
    types_ = _field_types(cls)
    values: dict[str, Any] = {}
    for key, raw in table.items():
        if key not in types_:
            problems.append(f"{where} unknown key {key!r}{_suggest(key, list(types_))}")
            continue
        try:
            values[key] = _coerce(raw, types_[key], from_env=False)
        except ValueError as exc:
            problems.append(f"{where} {key}: {exc}")
    return values


def _read_toml(path: Path, problems: list[str]) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        problems.append(f"{path}: file not found")
    except tomllib.TOMLDecodeError as exc:
        problems.append(f"{path}: not valid TOML: {exc}")
    except OSError as exc:
        problems.append(f"{path}: cannot read: {exc.strerror}")
    return {}


def _flatten_sections(doc: Mapping[str, Any], src: str,
                      problems: list[str]) -> dict[str, Mapping[str, Any]]:
    """Map the TOML document to {'server': {...}, 'auth.jwt': {...}, ...}."""
    known = list(SECTIONS) + list(_TABLE_SECTIONS) + ["auth"]
    out: dict[str, Mapping[str, Any]] = {}
    for name, table in doc.items():
        if name == "auth":
            if not isinstance(table, dict):
                problems.append(f"{src}: [auth] must be a table")
                continue
            for sub, subtable in table.items():
                full = f"auth.{sub}"
                if full not in SECTIONS or not isinstance(subtable, dict):
                    problems.append(f"{src}: unknown section [{full}]"
                                    f"{_suggest(full, list(SECTIONS))}")
                    continue
                out[full] = subtable
        elif name in SECTIONS or name in _TABLE_SECTIONS:
            out[name] = table
        else:
            problems.append(f"{src}: unknown section [{name}]{_suggest(name, known)}")
    return out


def _env_overrides(environ: Mapping[str, str], problems: list[str]
                   ) -> dict[str, dict[str, tuple[str, str]]]:
    """Collect RELAY_<SECTION>__<KEY> variables: {section: {key: (value, var)}}."""
    env_names = {name.upper().replace(".", "_"): name for name in SECTIONS}
    out: dict[str, dict[str, tuple[str, str]]] = {}
    for var, value in environ.items():
        if not var.startswith(ENV_PREFIX) or "__" not in var:
            continue
        section_part, _, key_part = var[len(ENV_PREFIX):].partition("__")
        if section_part in ("DOWNSTREAM", "ENTITLEMENTS", "PRODUCTS"):
            problems.append(f"env {var}: [{section_part.lower()}] can only be set in the file")
            continue
        section = env_names.get(section_part)
        if section is None:
            problems.append(f"env {var}: unknown section {section_part.lower()!r}"
                            f"{_suggest(section_part, list(env_names))}")
            continue
        out.setdefault(section, {})[key_part.lower()] = (value, var)
    return out


def _array_of_tables(sections: Mapping[str, Any], name: str, cls: type[T],
                     required: tuple[str, ...], src: str, problems: list[str]) -> list[T]:
    """Build `[[name]]` tables into `cls` instances; problems name the table's position."""
    tables: Any = sections.get(name, [])
    if not isinstance(tables, list):
        problems.append(f"{src}: {name} must be an array of tables ([[{name}]])")
        return []
    out: list[T] = []
    for i, table in enumerate(tables):
        where = f"{src}: [[{name}]] #{i + 1}"
        missing = [k for k in required if k not in table]
        if missing:
            problems.append(f"{where} missing required key(s): {', '.join(missing)}")
            continue
        values = _build_section(cls, table, where, problems)
        if all(k in values for k in required):
            out.append(cls(**values))
    return out


def find_config_path(explicit: str | Path | None) -> Path | None:
    """The file to load: the one given, else ./relay.toml, else /etc/relay/relay.toml."""
    if explicit is not None:
        return Path(explicit)
    for candidate in DEFAULT_CONFIG_PATHS:
        if candidate.is_file():
            return candidate
    return None


def load_config(path: str | Path | None, environ: Mapping[str, str] | None = None,
                credentials_dir: str | Path | None = None) -> Config:
    """Load file, then RELAY_* overrides, then credentials; raise ConfigError listing all."""
    environ = dict(os.environ if environ is None else environ)
    if credentials_dir is None:
        credentials_dir = environ.get("CREDENTIALS_DIRECTORY")
    problems: list[str] = []
    src = str(path) if path is not None else "(defaults)"
    doc = _read_toml(Path(path), problems) if path is not None else {}
    sections = _flatten_sections(doc, src, problems)
    env = _env_overrides(environ, problems)

    kwargs: dict[str, Any] = {}
    for name, (attr, cls) in SECTIONS.items():
        table = sections.get(name, {})
        if not isinstance(table, dict):
            problems.append(f"{src}: [{name}] must be a table")
            table = {}
        values = _build_section(cls, table, f"{src}: [{name}]", problems)
        types_ = _field_types(cls)
        for key, (raw, var) in env.get(name, {}).items():
            if key not in types_:
                problems.append(f"env {var}: [{name}] unknown key {key!r}"
                                f"{_suggest(key, list(types_))}")
                continue
            try:
                values[key] = _coerce(raw, types_[key], from_env=True)
            except ValueError as exc:
                problems.append(f"env {var}: [{name}] {key}: {exc}")
        kwargs[attr] = cls(**values)

    ent_table = sections.get("entitlements", {})
    entitlements: dict[str, tuple[str, ...]] = {}
    if not isinstance(ent_table, dict):
        problems.append(f"{src}: [entitlements] must be a table of product id = [keys]")
    else:
        for product, keys in ent_table.items():
            if (not isinstance(keys, list) or not keys
                    or not all(isinstance(k, str) and k for k in keys)):
                problems.append(f"{src}: [entitlements] {product!r} must be a non-empty list "
                                "of entitlement keys")
                continue
            entitlements[product] = tuple(keys)

    downstream = _array_of_tables(sections, "downstream", DownstreamConfig, ("name", "url"),
                                  src, problems)
    products = _array_of_tables(sections, "products", ProductConfig, ("id", "type"), src,
                                problems)

    creds_problems: list[str] = []
    credentials = load_credentials([d.name for d in downstream], credentials_dir, environ,
                                   creds_problems)
    problems.extend(creds_problems)
    if credentials.database_url is not None:  # file, then environment, then credentials
        kwargs["store"] = dataclasses.replace(kwargs["store"],
                                              url=credentials.database_url.reveal())
    cfg = Config(**kwargs, entitlements=types.MappingProxyType(entitlements),
                 downstream=tuple(downstream), products=tuple(products),
                 credentials=credentials, source=src)
    problems.extend(_validate(cfg, src))
    if problems:
        raise ConfigError(problems)
    return cfg


def redacted(cfg: Config) -> dict[str, Any]:
    """The effective configuration as plain data, credentials reduced to set/missing and
    every URL redacted (`redact_url`)."""
    def shown(section: Any) -> dict[str, Any]:
        return {k: redact_url(v) if isinstance(v, str) and "://" in v else v
                for k, v in dataclasses.asdict(section).items()}

    out: dict[str, Any] = {}
    for name, (attr, _cls) in SECTIONS.items():
        out[name] = shown(getattr(cfg, attr))
    out["entitlements"] = {k: list(v) for k, v in cfg.entitlements.items()}
    out["downstream"] = [shown(d) for d in cfg.downstream]
    out["products"] = [dataclasses.asdict(p) for p in cfg.products]
    c = cfg.credentials

    def state(v: object) -> str:
        if isinstance(v, tuple):
            return f"set ({len(v)} value{'s' if len(v) != 1 else ''})" if v else "missing"
        return "set" if v is not None else "missing"

    out["credentials"] = {
        "attesto-api-key": state(c.attesto_api_key),
        "attesto-webhook-secret": state(c.attesto_webhook_secrets),
        "api-keys": ", ".join(n for n, _ in c.api_keys) if c.api_keys else "missing",
        "admin-token": state(c.admin_token),
        "jwt-key": state(c.jwt_key),
        "metrics-token": state(c.metrics_token),
        "database-url": state(c.database_url),
        **{f"downstream-{n}-secret": state(v) for n, v in c.downstream_secrets.items()},
    }
    return out
