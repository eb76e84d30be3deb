"""Credentials: secrets read from `$CREDENTIALS_DIRECTORY/<name>` (systemd's
LoadCredential=) or `RELAY_CREDENTIAL_<NAME>`, kept in `Secret`s that never show
themselves. Pure: stdlib only.
"""

from __future__ import annotations

import re
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

CREDENTIAL_ENV_PREFIX = "RELAY_CREDENTIAL_"
_CREDENTIAL_NAME = re.compile(r"^[\w.-]+$")
MIN_PASSWORD_CHARS = 12  # console-password: sign-ins are rate-limited, guesses still count


class Secret:
    """A credential value that never shows itself in a repr, a log line or a dump."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True, slots=True)
class Credentials:
    """Secrets read from `$CREDENTIALS_DIRECTORY` or `RELAY_CREDENTIAL_*`."""

    attesto_api_key: Secret | None = None
    attesto_webhook_secrets: tuple[Secret, ...] = ()
    api_keys: tuple[tuple[str, str], ...] = ()  # (name, sha256 hex of the key)
    admin_token: Secret | None = None
    console_password: Secret | None = None  # a second way to sign in to the console
    jwt_key: Secret | None = None
    downstream_secrets: Mapping[str, tuple[Secret, ...]] = field(
        default_factory=lambda: types.MappingProxyType({})
    )
    database_url: Secret | None = None  # wins over [store] url: the password stays out
    metrics_token: Secret | None = None  # reads /metrics only (a Prometheus scraper)


def read_credential(name: str, credentials_dir: str | Path | None,
                    environ: Mapping[str, str]) -> str | None:
    """Read one credential: `$CREDENTIALS_DIRECTORY/<name>`, else `RELAY_CREDENTIAL_<NAME>`."""
    if not _CREDENTIAL_NAME.match(name):
        raise ValueError(f"invalid credential name {name!r}")
    if credentials_dir:
        path = Path(credentials_dir) / name
        if path.is_file():
            return path.read_text(encoding="utf-8")
    return environ.get(CREDENTIAL_ENV_PREFIX + name.upper().replace("-", "_").replace(".", "_"))


def _lines(text: str | None) -> list[str]:
    if text is None:
        return []
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]


def load_credentials(downstream_names: Sequence[str], credentials_dir: str | Path | None,
                     environ: Mapping[str, str], problems: list[str]) -> Credentials:
    def one(name: str) -> Secret | None:
        lines = _lines(read_credential(name, credentials_dir, environ))
        return Secret(lines[0]) if lines else None

    api_keys: list[tuple[str, str]] = []
    for ln in _lines(read_credential("api-keys", credentials_dir, environ)):
        key_name, sep, digest = ln.partition(":")
        digest = digest.strip().lower()
        if not sep or not re.fullmatch(r"[0-9a-f]{64}", digest) or not key_name.strip():
            problems.append("credential api-keys: each line must be name:<sha256 hex> "
                            "(the hash of the key, never the key)")
            continue
        api_keys.append((key_name.strip(), digest))
    downstream: dict[str, tuple[Secret, ...]] = {}
    for ds in downstream_names:
        if not _CREDENTIAL_NAME.match(f"downstream-{ds}-secret"):
            continue  # not a valid endpoint name: reported with the [[downstream]] checks
        secrets = tuple(Secret(s) for s in
                        _lines(read_credential(f"downstream-{ds}-secret", credentials_dir,
                                               environ)))
        for s in secrets:
            if not s.reveal().startswith(("whsec_", "whsk_")):
                problems.append(f"credential downstream-{ds}-secret: each line must be a "
                                "whsec_… (HMAC) or whsk_… (Ed25519) key")
        downstream[ds] = secrets
    console_password = one("console-password")
    if console_password is not None and len(console_password.reveal()) < MIN_PASSWORD_CHARS:
        problems.append(f"credential console-password: must be at least {MIN_PASSWORD_CHARS} "
                        "characters (use `relay gen-secret` or a passphrase)")
        console_password = None
    webhook_secrets = tuple(
        Secret(s) for s in _lines(read_credential("attesto-webhook-secret", credentials_dir,
                                                  environ)))
    return Credentials(
        attesto_api_key=one("attesto-api-key"),
        attesto_webhook_secrets=webhook_secrets,
        api_keys=tuple(api_keys),
        admin_token=one("admin-token"),
        console_password=console_password,
        jwt_key=Secret(raw.strip()) if (raw := read_credential("jwt-key", credentials_dir,
                                                               environ)) else None,
        downstream_secrets=types.MappingProxyType(downstream),
        database_url=one("database-url"),
        metrics_token=one("metrics-token"),
    )
