"""Console sign-in: sessions kept in the store, CSRF tokens, the failed sign-in throttle.

A session is a random token in an HttpOnly cookie. The store keeps only
HMAC-SHA256(credential, token): a leaked table signs nobody in, and rotating the admin
token (or the console password) ends every session it opened. Sessions and failure
counts live in the database, so every worker and instance shares them and a restart
keeps them. The CSRF token of a session is derived from its cookie token (HMAC), so it
needs no storage and no page can guess it. Functions marked "store thread" run inside
`store.read` / `store.write`; the rest are pure.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass

from relay.config import Config
from relay.store.models import ConsoleSession, ConsoleThrottle

COOKIE = "relay_console"
ALL_CLIENTS = "*"  # the throttle row that counts every client's failures
GLOBAL_FACTOR = 10  # all clients together may fail this many times the per-client limit
_CSRF_LABEL = b"relay-console-csrf"


def new_token() -> str:
    """A fresh session token for the cookie (256 random bits)."""
    return secrets.token_urlsafe(32)


def sign_in_secrets(config: Config) -> list[tuple[str, str]]:
    """(credential name, value) of each secret that may sign in, in a fixed order."""
    creds = config.credentials
    out = []
    if creds.admin_token is not None:
        out.append(("admin-token", creds.admin_token.reveal()))
    if creds.console_password is not None:
        out.append(("console-password", creds.console_password.reveal()))
    return out


def matching_credential(config: Config, given: str) -> str | None:
    """Which credential `given` is (constant time, every one compared), or None."""
    found = None
    raw = given.encode("utf-8", "surrogatepass")
    for name, value in sign_in_secrets(config):
        if hmac.compare_digest(raw, value.encode("utf-8")):
            found = name
    return found


def session_key(secret: str, token: str) -> str:
    return hmac.new(secret.encode("utf-8"), token.encode("ascii", "replace"),
                    hashlib.sha256).hexdigest()


def session_keys(config: Config, token: str) -> list[str]:
    """The stored keys this cookie token may have, one per current credential."""
    return [session_key(value, token) for _, value in sign_in_secrets(config)]


def csrf_token(token: str) -> str:
    """The CSRF token of the session whose cookie holds `token`."""
    mac = hmac.new(token.encode("ascii", "replace"), _CSRF_LABEL, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def csrf_ok(token: str, given: str) -> bool:
    return hmac.compare_digest(csrf_token(token).encode(), given.encode("utf-8", "replace"))


@dataclass(frozen=True, slots=True)
class Session:
    key: str
    credential: str
    client: str
    created_ms: int
    expires_ms: int


def find_session(keys: list[str], now_ms: int) -> Session | None:
    """The live session stored under one of `keys` (store thread)."""
    if not keys:
        return None
    row = (ConsoleSession.select()
           .where(ConsoleSession.key.in_(keys) & (ConsoleSession.expires_ms > now_ms))
           .first())
    if row is None:
        return None
    return Session(row.key, row.credential, row.client, row.created_ms, row.expires_ms)


@dataclass(frozen=True, slots=True)
class SignInResult:
    ok: bool
    retry_after_s: int = 0  # > 0: refused by the throttle, whatever the secret was


def sign_in(client: str, credential: str | None, key: str | None, now_ms: int, ttl_s: int,
            max_failures: int, window_s: int) -> SignInResult:
    """Open a session under `key` if the secret matched (`credential`) and the client is not
    throttled; count a failure otherwise. One transaction (store thread)."""
    window_ms = window_s * 1000
    ConsoleSession.delete().where(ConsoleSession.expires_ms <= now_ms).execute()
    ConsoleThrottle.delete().where(
        ConsoleThrottle.window_start_ms <= now_ms - window_ms).execute()
    rows = {r.client: r for r in ConsoleThrottle.select().where(
        ConsoleThrottle.client.in_([client, ALL_CLIENTS]))}
    limits = {client: max_failures, ALL_CLIENTS: max_failures * GLOBAL_FACTOR}
    for name, limit in limits.items():
        row = rows.get(name)
        if row is not None and row.failures >= limit:
            wait_ms = row.window_start_ms + window_ms - now_ms
            return SignInResult(False, max(1, -(-wait_ms // 1000)))
    if credential is None or key is None:
        for name in limits:
            row = rows.get(name)
            if row is None:
                ConsoleThrottle.insert(client=name, window_start_ms=now_ms,
                                       failures=1).execute()
            else:
                ConsoleThrottle.update(failures=ConsoleThrottle.failures + 1).where(
                    ConsoleThrottle.client == name).execute()
        return SignInResult(False)
    ConsoleThrottle.delete().where(ConsoleThrottle.client == client).execute()
    ConsoleSession.insert(key=key, credential=credential, client=client[:128],
                          created_ms=now_ms, expires_ms=now_ms + ttl_s * 1000).execute()
    return SignInResult(True)


def sign_out(keys: list[str]) -> int:
    """End the session stored under one of `keys` (store thread)."""
    if not keys:
        return 0
    ended: int = ConsoleSession.delete().where(ConsoleSession.key.in_(keys)).execute()
    return ended
