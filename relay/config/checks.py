"""Checks of a loaded configuration: ranges, URLs (plain HTTP off loopback, credentials
in them redacted), `[[downstream]]` names, keys and literal addresses. Every problem is
one line naming its source, section and key. Pure."""

from __future__ import annotations

import difflib
import ipaddress
import re
from collections.abc import Sequence
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from relay.config.sections import MAX_WORKERS, PRODUCT_TYPES, Config, DownstreamConfig
from relay.core.addresses import Network, Resolve, SsrfError, check_url, parse_allow_networks
from relay.core.signing import SECRET_PREFIX, SIGNING_KEY_PREFIX, parse_secret, parse_signing_key
from relay.credentials import Secret


def _suggest(name: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


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
