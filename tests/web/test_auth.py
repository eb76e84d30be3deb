"""Authentication: service keys by hash, admin token, end-user JWTs (HS256 and ES256)."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

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


def test_alg_none_and_unlisted_algorithms_are_refused(config: Config) -> None:
    unsigned = jwt.encode({"sub": "u", "exp": int(time.time()) + 60}, None, algorithm="none")
    with pytest.raises(UnauthorizedError):
        check_user_jwt(config, req(unsigned))
    hs512 = token({}, key=JWT_SECRET * 2, alg="HS512")
    with pytest.raises(UnauthorizedError):
        check_user_jwt(config, req(hs512))


def test_es256_public_key(config: Config) -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    pem = private.public_key().public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
    cfg = dataclasses.replace(
        config, jwt=dataclasses.replace(config.jwt, algorithms=("ES256",)),
        credentials=dataclasses.replace(config.credentials, jwt_key=Secret(pem.decode())))
    assert check_user_jwt(cfg, req(token({}, key=private, alg="ES256"))).user_id == "user-1"
    # An HS256 token must not pass when only ES256 is allowed (no alg confusion).
    with pytest.raises(UnauthorizedError):
        check_user_jwt(cfg, req(token({}, key="x" * 40, alg="HS256")))
