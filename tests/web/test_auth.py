"""Authentication: service keys by hash, admin token, end-user JWTs (HS256 and ES256)."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from relay.config import Config, Secret
from relay.core.errors import NotConfiguredError, UnauthorizedError
from relay.web.auth import check_admin_token, check_service_key, check_user_jwt
from tests.conftest import ADMIN_TOKEN, API_KEY, JWT_SECRET, make_config


def req(token: str | None) -> web.Request:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return make_mocked_request("GET", "/", headers=headers)


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return make_config(tmp_path)


def test_service_key(config: Config) -> None:
    assert check_service_key(config, req(API_KEY)) == "backend"
    for bad in (None, "wrong", API_KEY + "x", ""):
        with pytest.raises(UnauthorizedError):
            check_service_key(config, req(bad))
    no_keys = dataclasses.replace(config, credentials=dataclasses.replace(
        config.credentials, api_keys=()))
    with pytest.raises(UnauthorizedError):
        check_service_key(no_keys, req(API_KEY))


def test_admin_token(config: Config) -> None:
    check_admin_token(config, req(ADMIN_TOKEN))
    with pytest.raises(UnauthorizedError):
        check_admin_token(config, req(API_KEY))
    none = dataclasses.replace(config, credentials=dataclasses.replace(
        config.credentials, admin_token=None))
    with pytest.raises(NotConfiguredError):
        check_admin_token(none, req(ADMIN_TOKEN))


def token(claims: dict[str, Any], key: Any = JWT_SECRET, alg: str = "HS256") -> str:
    return jwt.encode({"sub": "user-1", "exp": int(time.time()) + 60, **claims}, key,
                      algorithm=alg)


def test_hs256_jwt_with_issuer_and_audience(config: Config) -> None:
    cfg = dataclasses.replace(config, jwt=dataclasses.replace(config.jwt, issuer="iss-1",
                                                              audience="aud-1"))
    ok = token({"iss": "iss-1", "aud": "aud-1"})
    assert check_user_jwt(cfg, req(ok)).user_id == "user-1"
    for bad in (token({"iss": "iss-1", "aud": "other"}), token({"iss": "x", "aud": "aud-1"}),
                token({"iss": "iss-1", "aud": "aud-1", "exp": int(time.time()) - 600}),
                token({"iss": "iss-1", "aud": "aud-1"}, key="another-secret-0123456789abcdef-long"),
                token({"iss": "iss-1"}), "not.a.jwt", None):
        with pytest.raises(UnauthorizedError):
            check_user_jwt(cfg, req(bad))


def with_algorithms(config: Config, *algorithms: str, key: str | None = None) -> Config:
    creds = config.credentials
    return dataclasses.replace(
        config, jwt=dataclasses.replace(config.jwt, algorithms=algorithms),
        credentials=creds if key is None else dataclasses.replace(creds, jwt_key=Secret(key)))


def test_alg_none_is_refused(config: Config) -> None:
    unsigned = jwt.encode({"sub": "u", "exp": int(time.time()) + 60}, None, algorithm="none")
    with pytest.raises(UnauthorizedError):
        check_user_jwt(config, req(unsigned))


@pytest.mark.parametrize("alg", ["HS384", "HS512"])
def test_an_unlisted_hmac_algorithm_is_refused_even_with_the_right_secret(
        config: Config, alg: str) -> None:
    """Signed with the configured secret itself: only the allow-list (HS256) refuses it,
    as the control shows (listed, the same token passes)."""
    secret = JWT_SECRET * 2  # 76 bytes: long enough for HS512 (RFC 7518 §3.2)
    signed = token({}, key=secret, alg=alg)
    with pytest.raises(UnauthorizedError):
        check_user_jwt(with_algorithms(config, "HS256", key=secret), req(signed))
    listed = with_algorithms(config, "HS256", alg, key=secret)
    assert check_user_jwt(listed, req(signed)).user_id == "user-1"


@pytest.mark.parametrize("alg", ["RS512", "PS256"])
def test_an_unlisted_rsa_algorithm_is_refused_even_with_the_right_key(config: Config,
                                                                      alg: str) -> None:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.public_key().public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
    only_rs256 = with_algorithms(config, "RS256", key=pem.decode())
    assert check_user_jwt(only_rs256, req(token({}, key=private, alg="RS256")))
    signed = token({}, key=private, alg=alg)
    with pytest.raises(UnauthorizedError):
        check_user_jwt(only_rs256, req(signed))
    listed = with_algorithms(config, "RS256", alg, key=pem.decode())
    assert check_user_jwt(listed, req(signed)).user_id == "user-1"


def hmac_token(key: bytes) -> str:
    """An HS256 JWT whose HMAC key is `key` (PyJWT refuses to sign with a PEM key)."""
    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps({"sub": "user-1", "exp": int(time.time()) + 60}).encode())
    mac = hmac.new(key, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(mac)}"


def test_es256_public_key_and_no_algorithm_confusion(config: Config) -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    pem = private.public_key().public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
    cfg = with_algorithms(config, "ES256", key=pem.decode())
    assert check_user_jwt(cfg, req(token({}, key=private, alg="ES256"))).user_id == "user-1"
    # The classic confusion: HS256 "signed" with the public key everyone may know.
    with pytest.raises(UnauthorizedError):
        check_user_jwt(cfg, req(hmac_token(pem)))
