"""Bad input over real HTTP: any signed JSON, broken envelopes, bad bytes, slow clients.

One relay runs on 127.0.0.1 in a background thread for the module; hypothesis drives it
with a blocking client, so each example is a real request. The verdict is always the
same: a clear 4xx JSON error, or a 200 that kept its promise (the delivery is in the
inbox byte for byte; the appUserId is stored), never a 5xx, never a crash.
"""

from __future__ import annotations

import json
import socket
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.attesto.signature import sign_attesto
from relay.attesto.simulator import AttestoSimulator
from relay.core.errors import BadRequestError
from relay.core.normalizer import normalize
from relay.store.models import Inbox
from tests.conftest import API_KEY
from tests.support.live import LiveRelay
from tests.support.webhooks import PATH

SECRET = "whsec-example-0123456789abcdefghijklmnopqrstuv"
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                max_size=4),
    max_leaves=20)
FIELDS = ("event", "reason", "platformEvent", "eventId", "externalId", "timestamp",
          "tenantId", "source", "subject", "appUserId", "data", "raw")


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveRelay]:
    with LiveRelay(tmp_path_factory.mktemp("fuzz")) as relay:
        yield relay


@pytest.fixture(scope="module")
def http(live: LiveRelay) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live.url, timeout=10) as client:
        yield client


def _signed(body: bytes, event_id: Any = "evt_x") -> dict[str, str]:
    """Attesto's headers for any bytes (the simulator's helper needs a JSON object)."""
    t = int(time.time())
    h = {"Content-Type": "application/json", "X-Attesto-Timestamp": str(t),
         "X-Attesto-Signature": sign_attesto(SECRET, t, body)}
    if isinstance(event_id, str) and event_id.isascii() and event_id.isprintable():
        h["X-Attesto-Event-Id"] = event_id
    return h


def _is_clear_4xx(resp: httpx.Response) -> bool:
    if not 400 <= resp.status_code < 500:
        return False
    error = resp.json()["error"]
    return isinstance(error["code"], str) and isinstance(error["message"], str)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=json_values)
def test_any_signed_json_is_a_clear_4xx(http: httpx.Client, value: Any) -> None:
    body = json.dumps(value).encode()
    resp = http.post(PATH, content=body, headers=_signed(body))
    assert _is_clear_4xx(resp), (resp.status_code, resp.text)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(field=st.sampled_from(FIELDS), value=json_values, seed=st.integers(0, 10**9))
def test_any_broken_envelope_is_stored_or_a_clear_4xx(live: LiveRelay, http: httpx.Client,
                                                      field: str, value: Any,
                                                      seed: int) -> None:
    sim = AttestoSimulator()
    txn = sim.add_apple(transaction_id=f"1{seed}", original_transaction_id=f"2{seed}",
                        product_id="com.example.premium",
                        expires_ms=int(time.time() * 1000) + 86_400_000,
                        purchase_ms=int(time.time() * 1000) - 60_000)
    doc = json.loads(sim.apple_webhook("DID_RENEW", txn, auto_renew=True))
    doc[field] = value
    body = json.dumps(doc).encode()
    resp = http.post(PATH, content=body,
                     headers=_signed(body, doc["eventId"]))
    if resp.status_code != 200:
        assert _is_clear_4xx(resp), (resp.status_code, resp.text)
        return
    # A 200 is a promise: the delivery is in the inbox, byte for byte, under its eventId.
    status = resp.json()["status"]
    stored = live.read(lambda: Inbox.get_or_none(Inbox.event_id == doc["eventId"]))
    assert stored is not None, (status, doc["eventId"])
    if status == "accepted":
        assert bytes(stored.body) == body
    else:
        assert status == "duplicate"


@settings(max_examples=300, deadline=None)
@given(doc=st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=12))
def test_normalizer_reads_or_refuses_any_document(doc: dict[str, Any]) -> None:
    try:
        normalize(doc, 1_800_000_000_000)
    except BadRequestError as exc:
        assert exc.status == 400 and exc.code


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=st.binary(max_size=300), path=st.sampled_from(
    [PATH, "/v1/verify/apple", "/v1/verify/google", "/v1/restore",
     "/v1/users/u1/app-user-id"]))
def test_arbitrary_bytes_never_5xx(http: httpx.Client, raw: bytes, path: str) -> None:
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    if path == PATH:
        headers = _signed(raw)
    resp = http.post(path, content=raw, headers=headers)
    if not path.endswith("app-user-id"):  # everything else must be refused clearly
        assert _is_clear_4xx(resp), (path, resp.status_code, resp.text)
        return
    # /app-user-id ignores the body: its 200 is the user's one stored UUID v4, every time.
    assert resp.status_code == 200, (resp.status_code, resp.text)
    minted = uuid.UUID(resp.json()["uuid"])
    assert minted.version == 4
    assert http.post(path, content=b"", headers=headers).json()["uuid"] == str(minted)


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", ""])
def test_wrong_content_type_is_4xx(http: httpx.Client, content_type: str) -> None:
    body = json.dumps({"user_id": "u1", "transaction_id": "1"}).encode()
    resp = http.post("/v1/verify/apple", content=body,
                     headers={"Authorization": f"Bearer {API_KEY}",
                              "Content-Type": content_type})
    assert resp.status_code in (400, 415) and _is_clear_4xx(resp), resp.text


@pytest.mark.parametrize("path", [PATH, "/v1/verify/apple", "/v1/restore"])
def test_invalid_utf8_and_oversized_bodies_are_4xx(http: httpx.Client, path: str) -> None:
    auth = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    bad = b'{"user_id": "\xff\xfe", "transaction_id": "1"}'
    resp = http.post(path, content=bad, headers=_signed(bad)
                     if path == PATH else auth)
    assert resp.status_code == 400 and _is_clear_4xx(resp), resp.text
    big = b'{"user_id": "' + b"a" * 70_000 + b'"}'
    resp = http.post(path, content=big, headers=_signed(big)
                     if path == PATH else auth)
    assert resp.status_code == 413 and resp.json()["error"]["code"] == "payload_too_large"


def test_a_slow_client_blocks_nobody_and_leaves_nothing(live: LiveRelay,
                                                        http: httpx.Client) -> None:
    body = b'{"event":"test","eventId":"evt_slow"}'
    with socket.create_connection(("127.0.0.1", live.port)) as slow:
        head = (f"POST {PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        slow.sendall(head + body[:10])  # ... and then nothing more for now
        for _ in range(5):  # meanwhile, everyone else is served
            assert http.get("/healthz").status_code == 200
        slow.sendall(body[10:])  # the rest arrives late, unsigned: refused, not stored
        slow.settimeout(10)
        answer = slow.recv(65_536)
    assert answer.startswith(b"HTTP/1.1 401")
