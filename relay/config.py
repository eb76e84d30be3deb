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
from urllib.parse import urlsplit

# Credentials and Secret are re-exported: callers know them as part of the Config.
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
    workers: int = 1  # processes serving the port (relay/workers.py); 1: no supervisor
    ingest_writer: bool = False  # webhook writes in a process of their own (ingest_writer.py)

    @property
    def supervised(self) -> bool:
        """`relay serve` runs a supervisor and child processes sharing the store."""
        return self.workers > 1 or self.ingest_writer


@dataclass(frozen=True, slots=True)
class StoreConfig:
    path: str = "relay.sqlite3"
    url: str = ""
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
    """The admin console (relay/console/): served only while credential admin-token is set."""

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
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    outbox: OutboxConfig = field(default_factory=OutboxConfig)
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
        if creds.admin_token is None:
            out.append("admin API, /metrics and the console: credential 'admin-token' is "
                       "missing")
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
    "scheduler": ("scheduler", SchedulerConfig),
    "outbox": ("outbox", OutboxConfig),
    "log": ("log", LogConfig),
    "console": ("console", ConsoleConfig),
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
        problems.append(f"{where} {name} must be an http(s) URL (got {url!r})")


def _validate(cfg: Config, src: str) -> list[str]:
    p: list[str] = []
    s = cfg.server
    if not 0 <= s.port <= 65535:
        p.append(f"{src}: [server] port must be 0-65535 (got {s.port})")
    _positive(p, f"{src}: [server]", "max_body_bytes", s.max_body_bytes)
    _positive(p, f"{src}: [server]", "shutdown_timeout_s", s.shutdown_timeout_s)
    if not 1 <= s.workers <= MAX_WORKERS:
        p.append(f"{src}: [server] workers must be 1-{MAX_WORKERS} (got {s.workers})")
    if s.ingest_writer and cfg.store.url:
        p.append(f"{src}: [server] ingest_writer works with SQLite only; on PostgreSQL run "
                 "more instances")
    if cfg.store.url and not cfg.store.url.startswith(("postgresql://", "postgres://")):
        p.append(f"{src}: [store] url must start with postgresql:// (got {cfg.store.url!r})")
    if not cfg.store.url and not cfg.store.path:
        p.append(f"{src}: [store] path must not be empty when url is not set")
    _check_url(p, f"{src}: [attesto]", "base_url", cfg.attesto.base_url)
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
    for name in ("tick_s", "poll_after_expiry_s", "apple_renewal_grace_s", "sweep_interval_s",
                 "billing_retry_poll_s", "max_polls_per_s", "max_concurrent_polls",
                 "batch_size", "retention_s"):
        _positive(p, f"{src}: [scheduler]", name, getattr(cfg.scheduler, name))
    o = cfg.outbox
    for name in ("concurrency", "per_endpoint_concurrency", "claim_timeout_s", "sweep_s",
                 "delivered_retention_s"):
        _positive(p, f"{src}: [outbox]", name, getattr(o, name))
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
    _check_console(p, src, cfg)
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
        from relay.endpoints import downstream_problems

        p.extend(downstream_problems(cfg))
    return p


# Paths the console must not shadow (its own routes live under its path).
_RESERVED_PATHS = ("/v1", "/api", "/metrics", "/healthz", "/readyz")


def _check_console(p: list[str], src: str, cfg: Config) -> None:
    c, where = cfg.console, f"{src}: [console]"
    path = c.path
    if (not re.fullmatch(r"(/[A-Za-z0-9._~-]+)+", path)
            or any(seg in (".", "..") for seg in path.split("/"))):
        p.append(f"{where} path must be an absolute path like '/console' with no trailing "
                 f"'/' (got {path!r})")
    elif any(path == r or path.startswith(r + "/") for r in _RESERVED_PATHS) or (
            cfg.webhooks.path == path or cfg.webhooks.path.startswith(path + "/")):
        p.append(f"{where} path {path!r} overlaps a route relay serves (choose e.g. "
                 "'/console')")
    for name in ("session_ttl_s", "max_failed_signins", "failed_signin_window_s"):
        _positive(p, where, name, getattr(c, name))


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
    cfg = Config(**kwargs, entitlements=types.MappingProxyType(entitlements),
                 downstream=tuple(downstream), products=tuple(products),
                 credentials=credentials, source=src)
    problems.extend(_validate(cfg, src))
    if problems:
        raise ConfigError(problems)
    return cfg


def redacted(cfg: Config) -> dict[str, Any]:
    """The effective configuration as plain data, credentials reduced to set/missing."""
    out: dict[str, Any] = {}
    for name, (attr, _cls) in SECTIONS.items():
        out[name] = dataclasses.asdict(getattr(cfg, attr))
    out["entitlements"] = {k: list(v) for k, v in cfg.entitlements.items()}
    out["downstream"] = [dataclasses.asdict(d) for d in cfg.downstream]
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
        "console-password": state(c.console_password),
        "jwt-key": state(c.jwt_key),
        **{f"downstream-{n}-secret": state(v) for n, v in c.downstream_secrets.items()},
    }
    return out
