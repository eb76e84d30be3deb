"""Hostile peers and callers against a real `relay serve` process (issue 16).

Each test starts the daemon as a subprocess on 127.0.0.1 (tests/crash_support.py), talks
to it over real sockets and reads its real log on stderr.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest

from relay.attesto.signature import sign_attesto
from relay.attesto.simulator import AttestoSimulator
from relay.outbox.receiver import DownstreamReceiver
from tests.conftest import ADMIN_TOKEN, API_KEY, JWT_SECRET, auth
from tests.support.crash import (
    ROOT,
    WEBHOOK_PATH,
    WEBHOOK_SECRET,
    RelayProcess,
    free_port,
    write_config,
)
from tests.support.store import ON_POSTGRES, POSTGRES_URL, create_database

pytestmark = pytest.mark.slow

# Every credential but the webhook and downstream secrets (RelayProcess sets those).
SERVICE_CREDENTIALS = {
    "RELAY_CREDENTIAL_ATTESTO_API_KEY": AttestoSimulator.api_key,
    "RELAY_CREDENTIAL_API_KEYS": "backend:" + hashlib.sha256(API_KEY.encode()).hexdigest(),
    "RELAY_CREDENTIAL_ADMIN_TOKEN": ADMIN_TOKEN,
    "RELAY_CREDENTIAL_JWT_KEY": JWT_SECRET,
}


@pytest.fixture
async def processes() -> AsyncIterator[list[RelayProcess]]:
    """Every daemon a test starts is stopped after it, whatever happened."""
    started: list[RelayProcess] = []
    yield started
    for relay in started:
        if relay.proc is not None:
            await relay.kill()


async def serve(processes: list[RelayProcess], relay: RelayProcess) -> RelayProcess:
    processes.append(relay)
    await relay.start()
    return relay


def first_purchase(sim: AttestoSimulator, n: int) -> bytes:
    """A signed-ready SUBSCRIBED delivery for a new Apple subscription `n`."""
    now_ms = int(time.time() * 1000)
    txn = sim.add_apple(transaction_id=f"t{n}", original_transaction_id=f"o{n}",
                        product_id="com.example.premium", expires_ms=now_ms + 86_400_000,
                        purchase_ms=now_ms - 60_000)
    return sim.apple_webhook("SUBSCRIBED", txn, subtype="INITIAL_BUY", auto_renew=True)


async def webhook(session: aiohttp.ClientSession, sim: AttestoSimulator, relay: RelayProcess,
                  body: bytes) -> None:
    status, text = await sim.deliver(session, relay.base + WEBHOOK_PATH, body,
                                     secret=WEBHOOK_SECRET)
    assert status == 200, text


async def admin_get(session: aiohttp.ClientSession, relay: RelayProcess,
                    path: str) -> Any:
    async with session.get(relay.base + path, headers=auth(ADMIN_TOKEN)) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


def when(iso_time: str) -> float:
    return dt.datetime.fromisoformat(iso_time.replace("Z", "+00:00")).timestamp()


# ---- 1, 2: delivery survives any downstream answer --------------------------------------


async def test_retry_after_zero_does_not_spend_the_retry_schedule(
        tmp_path: Path, sim: AttestoSimulator, receiver: DownstreamReceiver,
        receiver_url: str, processes: list[RelayProcess]) -> None:
    """1. downstream answers 503 with `Retry-After: 0`  2. relay waits the scheduled hour
    (RFC 9110 §10.2.3: Retry-After says how long the client *ought* to wait, a minimum), not
    zero seconds; the row stays pending with its retries intact."""
    receiver.reply_next(503, times=5, headers={"Retry-After": "0"})
    relay = await serve(processes, RelayProcess(
        tmp_path, receiver_url, retry_schedule="[3600, 3600, 3600]",
        env={"RELAY_CREDENTIAL_ADMIN_TOKEN": ADMIN_TOKEN}))
    async with aiohttp.ClientSession() as session:
        await webhook(session, sim, relay, first_purchase(sim, 1))
        await receiver.wait_for(1)
        async with asyncio.timeout(10):
            while not (rows := (await admin_get(session, relay, "/v1/admin/deliveries"))[
                    "deliveries"]) or rows[0]["attempts"] < 1:
                await asyncio.sleep(0.05)
        row = await admin_get(session, relay, f"/v1/admin/deliveries/{rows[0]['id']}")
    assert (row["status"], row["attempts"], row["last_status"]) == ("pending", 1, 503)
    waited = when(row["next_attempt_at"]) - when(row["history"][0]["started_at"])
    assert waited >= 3600 * 0.8  # the first step of the schedule, less its jitter
    assert len(receiver.received) == 1


@pytest.mark.parametrize("retry_after", ["\u00b2", "9" * 5000])
async def test_a_retry_after_int_cannot_read_does_not_stop_delivery(
        tmp_path: Path, sim: AttestoSimulator, receiver: DownstreamReceiver,
        receiver_url: str, processes: list[RelayProcess], retry_after: str) -> None:
    """1. the endpoint's only lane gets a 503 whose Retry-After passes str.isdigit() but not
    int()  2. it is a failed attempt like another (`²` is no delay-seconds: the schedule
    applies; 5,000 digits are a delay longer than any cap: a day)  3. the lane lives on:
    a second event is delivered."""
    receiver.reply_next(503, headers={"Retry-After": retry_after})
    relay = await serve(processes, RelayProcess(
        tmp_path, receiver_url, env={"RELAY_OUTBOX__PER_ENDPOINT_CONCURRENCY": "1"}))
    async with aiohttp.ClientSession() as session:
        await webhook(session, sim, relay, first_purchase(sim, 1))
        [refused] = await receiver.wait_for(1)
        await webhook(session, sim, relay, first_purchase(sim, 2))
        while not [r for r in receiver.received
                   if r.headers["webhook-id"] != refused.headers["webhook-id"]]:
            await receiver.wait_for(len(receiver.received) + 1, timeout_s=15)
    assert all(r.signature_ok for r in receiver.received)
    assert not [line for line in relay.log_lines if "Traceback" in line]


# ---- 4: log injection ----------------------------------------------------------------


async def raw_request(port: int, request: bytes) -> bytes:
    """Send `request` as it is on a fresh connection; return everything answered."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        async with asyncio.timeout(10):
            return await reader.read()
    finally:
        writer.close()


async def test_caller_supplied_values_cannot_forge_journal_lines(
        tmp_path: Path, sim: AttestoSimulator, attesto_url: str, receiver_url: str,
        processes: list[RelayProcess]) -> None:
    """Under systemd (JOURNAL_STREAM set) each stderr line is one journal entry, and a line
    that starts with `<N>` gets priority N (sd-daemon(3): "<0>" is SD_EMERG; journald's
    stream protocol, systemd.exec(5) SyslogLevelPrefix=, on by default).

    1. a path with `%0A<0>` and an escape sequence  2. a verify whose user_id carries one
    3. every such value is written escaped inside its own line: no line starts with `<`."""
    relay = await serve(processes, RelayProcess(
        tmp_path, receiver_url, extra_config=f'[attesto]\nbase_url = "{attesto_url}"\n',
        env={"JOURNAL_STREAM": "8:12345", **SERVICE_CREDENTIALS}))
    answer = await raw_request(relay.port, b"GET /x%0A%3C0%3Eforged%0D%1B%5B31m HTTP/1.1\r\n"
                                           b"Host: relay\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 404")
    async with aiohttp.ClientSession() as session:
        async with session.post(relay.base + "/v1/verify/apple", headers=auth(), json={
                "user_id": "victim\n<0>user\u2028forged", "transaction_id": "1"}) as resp:
            assert resp.status == 200 and (await resp.json())["valid"] is False
    path_line = await relay.logged("GET /x")
    user_line = await relay.logged("user=victim")
    assert "/x\\n<0>forged\\r\\x1b[31m 404" in path_line
    assert "user=victim\\n<0>user\\u2028forged " in user_line
    assert [line for line in relay.log_lines if line.startswith("<")] == []
    assert not [line for line in relay.log_lines if "forged" in line
                and line not in (path_line, user_line)]


# ---- 6: deeply nested JSON -------------------------------------------------------------

DEEP = b"[" * 100_000 + b"]" * 100_000  # 200 kB: under max_body_bytes, too deep for json


def jwt_for(sub: str, header: bytes | None = None) -> str:
    import base64

    import jwt

    token = jwt.encode({"sub": sub, "exp": int(time.time()) + 300}, JWT_SECRET,
                       algorithm="HS256")
    if header is None:
        return token
    _, payload, signature = token.split(".")
    return ".".join((base64.urlsafe_b64encode(header).decode().rstrip("="), payload,
                     signature))


async def test_deeply_nested_json_is_a_400_everywhere(
        tmp_path: Path, sim: AttestoSimulator, attesto_url: str, receiver_url: str,
        processes: list[RelayProcess]) -> None:
    """json.loads raises RecursionError (not a ValueError) past ~1,000 levels: every place
    that parses JSON from outside answers a clear 4xx, and nothing logs a traceback."""
    relay = await serve(processes, RelayProcess(
        tmp_path, receiver_url, extra_config=f'[attesto]\nbase_url = "{attesto_url}"\n',
        env=SERVICE_CREDENTIALS))
    user = {"Authorization": f"Bearer {jwt_for('u1')}"}
    async with aiohttp.ClientSession() as session:
        t = int(time.time())
        async with session.post(relay.base + WEBHOOK_PATH, data=DEEP, headers={
                "Content-Type": "application/json", "X-Attesto-Event-Id": "evt_deep",
                "X-Attesto-Timestamp": str(t),
                "X-Attesto-Signature": sign_attesto(WEBHOOK_SECRET, t, DEEP)}) as resp:
            body = await resp.json()
            assert (resp.status, body["error"]["code"]) == (400, "invalid_json"), body
        for path, headers in (("/v1/verify/apple", auth()), ("/v1/restore", auth()),
                              ("/api/iap/verify/apple", user), ("/api/iap/restore", user),
                              ("/v1/admin/replay", auth(ADMIN_TOKEN))):
            async with session.post(relay.base + path, data=DEEP, headers={
                    **headers, "Content-Type": "application/json"}) as resp:
                body = await resp.json()
                assert (resp.status, body["error"]["code"]) == (400, "invalid_json"), path
        long_number = b'{"user_id": ' + b"1" * 5000 + b"}"  # int() refuses > 4,300 digits
        async with session.post(relay.base + "/v1/verify/apple", data=long_number, headers={
                **auth(), "Content-Type": "application/json"}) as resp:
            assert resp.status == 400, await resp.text()
        # a JWT whose header is nested too deep: a bare 401, like any bad token
        deep_header = {"Authorization": f"Bearer {jwt_for('u1', b'[' * 5000 + b']' * 5000)}"}
        async with session.get(relay.base + "/api/iap/entitlements",
                               headers=deep_header) as resp:
            assert resp.status == 401, await resp.text()
    async with asyncio.timeout(5):
        while not any("/api/iap/entitlements 401" in line for line in relay.log_lines):
            await asyncio.sleep(0.05)
    assert not [line for line in relay.log_lines if "Traceback" in line or " 500 " in line]


# ---- 5: ownership ----------------------------------------------------------------------


async def verify_as(session: aiohttp.ClientSession, relay: RelayProcess, user: str,
                    transaction_id: str) -> tuple[int, Any]:
    async with session.post(relay.base + "/v1/verify/apple", headers=auth(),
                            json={"user_id": user, "transaction_id": transaction_id}) as resp:
        return resp.status, await resp.json()


async def test_a_store_binding_to_another_user_is_proof_of_ownership(
        tmp_path: Path, sim: AttestoSimulator, attesto_url: str, receiver: DownstreamReceiver,
        receiver_url: str, processes: list[RelayProcess]) -> None:
    """Under the default owner_conflict = "transfer": StoreKit's appAccountToken (Apple
    "appAccountToken", a UUID the app sets at purchase; Attesto: `appUserId`) names the
    buyer. Knowing a transaction id is not enough to move a purchase bound to another
    user: 409, the purchase, its entitlements and the events stay as they were. A purchase
    with no binding still transfers (the documented policy)."""
    relay = await serve(processes, RelayProcess(
        tmp_path, receiver_url, extra_config=f'[attesto]\nbase_url = "{attesto_url}"\n',
        env=SERVICE_CREDENTIALS))
    now_ms = int(time.time() * 1000)
    async with aiohttp.ClientSession() as session:
        async with session.post(relay.base + "/v1/users/victim/app-user-id",
                                headers=auth()) as resp:
            victim_uuid = (await resp.json())["uuid"]
        for n, token in ((1, victim_uuid), (2, victim_uuid), (3, None)):
            sim.add_apple(transaction_id=f"t{n}", original_transaction_id=f"o{n}",
                          product_id="com.example.premium", expires_ms=now_ms + 86_400_000,
                          purchase_ms=now_ms - 60_000, app_account_token=token)
        assert (await verify_as(session, relay, "victim", "t1"))[0] == 200
        assert (await verify_as(session, relay, "victim", "t3"))[0] == 200
        await receiver.wait_for(2)

        # the bound purchase the victim verified, and one nobody verified yet
        for transaction_id in ("t1", "t2"):
            status, body = await verify_as(session, relay, "mallory", transaction_id)
            assert (status, body["error"]["code"]) == (409, "purchase_owned_by_other_user")
        user_jwt = {"Authorization": f"Bearer {jwt_for('mallory')}"}
        async with session.post(relay.base + "/api/iap/verify/apple", headers=user_jwt, json={
                "productId": "com.example.premium", "transactionId": "t1",
                "type": "subscription"}) as resp:
            assert (await resp.json())["error"] == "PURCHASE_OWNED_BY_OTHER_USER"
        async with session.get(relay.base + "/v1/purchases/apple/o1", headers=auth()) as resp:
            assert (await resp.json())["user_id"] == "victim"
        async with session.get(relay.base + "/v1/purchases/apple/o2", headers=auth()) as resp:
            assert resp.status == 404
        async with session.get(relay.base + "/v1/users/mallory/entitlements",
                               headers=auth()) as resp:
            assert (await resp.json())["entitlements"] == []

        # no binding: the policy applies, the purchase moves with an event naming both
        status, body = await verify_as(session, relay, "mallory", "t3")
        assert (status, body["purchase"]["user_id"]) == (200, "mallory")
        [transferred] = [r.json for r in await receiver.wait_for(3)
                         if r.json["type"] == "subscription.transferred"]
        assert (transferred["subject_key"], transferred["previous_user_id"]) == ("o3", "victim")


# ---- 9: database credentials -------------------------------------------------------------

DB_PASSWORD = "s3cret@pw:1"  # percent-encoded in the URL: s3cret%40pw%3A1


def check_config(config: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items()
            if not k.startswith("RELAY_") and k != "CREDENTIALS_DIRECTORY"}
    return subprocess.run([sys.executable, "-m", "relay", "check-config", "--config",
                           str(config)], capture_output=True, text=True, timeout=60,
                          env={**base, "PYTHONPATH": str(ROOT), **env})


def database_url(port: int = 1, name: str = "relay") -> str:
    host = "127.0.0.1"
    if ON_POSTGRES:
        u = urlsplit(POSTGRES_URL)
        host, port = u.hostname or host, u.port or 5432
    return f"postgresql://postgres:s3cret%40pw%3A1@{host}:{port}/{name}?sslmode=disable"


async def test_check_config_prints_no_database_password(tmp_path: Path,
                                                        receiver_url: str) -> None:
    config = write_config(tmp_path, free_port(), receiver_url)
    in_file = check_config(config, {"RELAY_STORE__URL": database_url()})
    creds = tmp_path / "credentials"
    creds.mkdir()
    (creds / "database-url").write_text(database_url() + "\n")
    from_credential = check_config(config, {"CREDENTIALS_DIRECTORY": str(creds)})
    for result in (in_file, from_credential):
        assert result.returncode == 0, result.stderr
        assert "s3cret" not in result.stdout + result.stderr
        assert 'url = "postgresql://postgres:***@127.0.0.1:' in result.stdout
    assert '"database-url" = "set"' in from_credential.stdout


@pytest.mark.skipif(ON_POSTGRES, reason="the PostgreSQL variant below runs instead")
async def test_serve_uses_the_database_url_credential(tmp_path: Path, receiver_url: str,
                                                      processes: list[RelayProcess]) -> None:
    """Without a PostgreSQL to reach: serve must try the credential's database (nothing
    listens on port 1), say why it cannot start, exit 1, and never log the password."""
    creds = tmp_path / "credentials"
    creds.mkdir()
    (creds / "database-url").write_text(database_url())
    relay = RelayProcess(tmp_path, receiver_url, env={"CREDENTIALS_DIRECTORY": str(creds)})
    processes.append(relay)
    with pytest.raises(RuntimeError, match="exited before listening"):
        await relay.start()
    assert relay.proc is not None and await relay.proc.wait() == 1
    line = await relay.logged("cannot start")
    assert "127.0.0.1" in line and "port 1" in line
    assert not [entry for entry in relay.log_lines if "s3cret" in entry or "Traceback" in entry]
    assert not (tmp_path / "relay.sqlite3").exists()


@pytest.mark.skipif(not ON_POSTGRES, reason="needs RELAY_TEST_POSTGRES_URL")
async def test_serve_runs_on_the_database_url_credential(tmp_path: Path, receiver_url: str,
                                                         processes: list[RelayProcess]) -> None:
    name = f"relay_t_cred_{os.getpid()}"
    create_database(name)
    creds = tmp_path / "credentials"
    creds.mkdir()
    (creds / "database-url").write_text(database_url(name=name))
    relay = await serve(processes, RelayProcess(
        tmp_path, receiver_url, env={"CREDENTIALS_DIRECTORY": str(creds)}))
    async with aiohttp.ClientSession() as session:
        async with session.get(relay.base + "/readyz") as resp:
            assert resp.status == 200
    assert f"/{name}" in await relay.logged("store open: ")
    assert not [line for line in relay.log_lines if "s3cret" in line]
    assert not (tmp_path / "relay.sqlite3").exists()


# ---- 11: backups are private ---------------------------------------------------------------


def backup(config: Path, target: Path) -> subprocess.CompletedProcess[str]:
    """`relay backup` as root's shell would run it: umask 022 (files 0644 by default)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    return subprocess.run(["sh", "-c", 'umask 022 && exec "$0" -m relay backup --config "$1" "$2"',
                           sys.executable, str(config), str(target)], capture_output=True,
                          text=True, timeout=60, env={**base, "PYTHONPATH": str(ROOT)})


@pytest.mark.skipif(ON_POSTGRES, reason="relay backup copies the SQLite store")
async def test_backup_of_a_running_relay_is_private_and_refuses_planted_files(
        tmp_path: Path, sim: AttestoSimulator, receiver: DownstreamReceiver,
        receiver_url: str, processes: list[RelayProcess]) -> None:
    """1. relay serve stores a purchase  2. `relay backup` under umask 022 writes a copy
    only its owner can read (user ids, purchase tokens, raw webhooks)  3. a file or a
    symlink already at the temporary name (`PATH.partial`) is refused, and the symlink's
    target is left as it was (no write through a link someone planted)."""
    relay = await serve(processes, RelayProcess(tmp_path, receiver_url))
    async with aiohttp.ClientSession() as session:
        await webhook(session, sim, relay, first_purchase(sim, 1))
    config = tmp_path / "relay.toml"
    copy = tmp_path / "backups" / "relay-copy.sqlite3"
    copy.parent.mkdir()
    done = backup(config, copy)
    assert done.returncode == 0, done.stderr
    assert copy.stat().st_mode & 0o777 == 0o600

    victim = tmp_path / "cron.d-victim"  # a link to where a file does not exist yet
    planted = copy.parent / "second.sqlite3.partial"
    planted.symlink_to(victim)
    refused = backup(config, copy.parent / "second.sqlite3")
    assert refused.returncode == 1 and "second.sqlite3.partial" in refused.stderr
    assert not victim.exists() and planted.is_symlink()
    assert not (copy.parent / "second.sqlite3").exists()

    left = copy.parent / "third.sqlite3.partial"  # an empty file someone else made
    left.touch(mode=0o666)
    refused = backup(config, copy.parent / "third.sqlite3")
    assert refused.returncode == 1 and "third.sqlite3.partial" in refused.stderr
    assert left.read_bytes() == b"" and not (copy.parent / "third.sqlite3").exists()
    assert relay.proc is not None and relay.proc.returncode is None  # relay kept running


# ---- 8: slow clients ---------------------------------------------------------------------


async def answered_then_closed(port: int, sent: bytes, timeout_s: float = 15.0) -> bytes:
    """Send `sent` and nothing more; return what relay answers before it closes (b"" when
    it closes without a word). Fails if relay keeps the connection past `timeout_s`."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(sent)
        await writer.drain()
        async with asyncio.timeout(timeout_s):
            return await reader.read()  # until EOF: relay closed its end
    finally:
        writer.close()


async def test_a_client_that_never_finishes_its_request_is_cut_off(
        tmp_path: Path, receiver_url: str, processes: list[RelayProcess]) -> None:
    """[server] header_timeout_s bounds the request line and headers, and then the body:
    a connection that sends nothing, half a head, or half a body is closed (the body
    with a 408), so slow clients cannot hold sockets for aiohttp's hour of keep-alive."""
    relay = await serve(processes, RelayProcess(
        tmp_path, receiver_url,
        env={"RELAY_SERVER__HEADER_TIMEOUT_S": "1", **SERVICE_CREDENTIALS}))
    assert await answered_then_closed(relay.port, b"") == b""
    assert await answered_then_closed(relay.port, b"GET /healthz HTTP/1.1\r\nHost: r\r\n") == b""
    answer = await answered_then_closed(relay.port, (
        f"POST /v1/verify/apple HTTP/1.1\r\nHost: r\r\nAuthorization: Bearer {API_KEY}\r\n"
        "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n").encode()
        + b'{"user_id": ')
    assert answer.startswith(b"HTTP/1.1 408") and b'"request_timeout"' in answer
    # and a client that does finish is served as ever
    async with aiohttp.ClientSession() as session:
        async with session.get(relay.base + "/healthz") as resp:
            assert resp.status == 200
