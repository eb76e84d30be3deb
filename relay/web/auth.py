"""Who is calling: service API keys (/v1), the admin token (/v1/admin, /metrics), the
metrics token (/metrics only), end-user JWTs.

Failures are a bare 401 `unauthorized` that says nothing about why; a missing
credential answers 503 `not_configured` (fail closed).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from dataclasses import dataclass
from typing import Any

import jwt
from aiohttp import web

from relay.config import Config, Secret
from relay.core.errors import NotConfiguredError, UnauthorizedError

log = logging.getLogger("relay.auth")

_HMAC_ALGS = frozenset({"HS256", "HS384", "HS512"})


def bearer_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def check_service_key(config: Config, request: web.Request) -> str:
    """Return the name of the service key used; 401 unless it matches a configured hash."""
    keys = config.credentials.api_keys
    if not keys:
        raise UnauthorizedError("a service API key is required (none is configured)")
    token = bearer_token(request)
    if token is None:
        raise UnauthorizedError("missing or malformed Authorization header")
    digest = hashlib.sha256(token.encode("utf-8")).hexdigest().encode()
    matched = None
    for name, expected in keys:  # compare against every key: constant time per key
        if hmac.compare_digest(digest, expected.encode()):
            matched = name
    if matched is None:
        raise UnauthorizedError("invalid API key")
    return matched


def _matches(token: str | None, *expected: Secret | None) -> bool:
    """Whether `token` is one of `expected`, compared in constant time against each."""
    given = (token or "").encode()
    matched = False
    for secret in expected:
        if secret is not None and hmac.compare_digest(given, secret.reveal().encode()):
            matched = True
    return token is not None and matched


def check_admin_token(config: Config, request: web.Request) -> None:
    expected = config.credentials.admin_token
    if expected is None:
        raise NotConfiguredError("the admin API is disabled: credential 'admin-token' is missing")
    if not _matches(bearer_token(request), expected):
        raise UnauthorizedError("invalid admin token")


def check_metrics_token(config: Config, request: web.Request) -> None:
    """`/metrics`: the read-only `metrics-token`, or the admin token."""
    creds = config.credentials
    if creds.admin_token is None and creds.metrics_token is None:
        raise NotConfiguredError("/metrics is disabled: credentials 'metrics-token' and "
                                 "'admin-token' are missing")
    if not _matches(bearer_token(request), creds.metrics_token, creds.admin_token):
        raise UnauthorizedError("invalid metrics token")


@dataclass(frozen=True, slots=True)
class EndUser:
    user_id: str
    claims: dict[str, Any]


def check_user_jwt(config: Config, request: web.Request, now_s: float | None = None) -> EndUser:
    """Verify an end-user JWT (alg allow-list, exp, iss/aud when configured); user id = `sub`."""
    key = config.credentials.jwt_key
    if key is None:
        raise NotConfiguredError("end-user JWTs are disabled: credential 'jwt-key' is missing")
    token = bearer_token(request)
    if token is None:
        raise UnauthorizedError("missing or malformed Authorization header")
    cfg = config.jwt
    algorithms = list(cfg.algorithms)
    material: Any = key.reveal()
    if not set(algorithms) <= _HMAC_ALGS:
        material = material.encode()
    options: dict[str, Any] = {"require": ["exp", "sub"]}
    kwargs: dict[str, Any] = {}
    if cfg.issuer:
        kwargs["issuer"] = cfg.issuer
        options["require"].append("iss")
    if cfg.audience:
        kwargs["audience"] = cfg.audience
        options["require"].append("aud")
    else:
        options["verify_aud"] = False
    try:
        header = jwt.get_unverified_header(token)
        if header.get("alg") not in algorithms:
            raise jwt.InvalidAlgorithmError("algorithm not allowed")
        if header["alg"] not in _HMAC_ALGS and isinstance(material, bytes):
            material = jwt.api_jws.get_algorithm_by_name(header["alg"]).prepare_key(material)
        claims: dict[str, Any] = jwt.decode(
            token, material, algorithms=algorithms, options=options,  # type: ignore[arg-type]
            leeway=cfg.leeway_s, **kwargs)
    except (jwt.PyJWTError, ValueError, TypeError, RecursionError) as exc:  # deep JSON
        log.info("end-user JWT refused: %s", type(exc).__name__)
        raise UnauthorizedError("invalid token") from None
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub:
        raise UnauthorizedError("invalid token")
    return EndUser(sub, claims)
