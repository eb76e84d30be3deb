"""The Attesto webhook receiver over HTTP: signatures, exactly-once, failures, status codes.

Every delivery is built and signed byte-exact by the fake Attesto (relay.attesto.simulator); relay
runs as the real app on a real SQLite file, its clock injected.
"""

from __future__ import annotations

import asyncio
import logging
import types
from collections.abc import Callable
from typing import Any

import pytest

from relay.attesto.signature import sign_attesto
from relay.attesto.simulator import AttestoSimulator
from relay.store.models import database
from relay.web.appkeys import STORE_KEY
from tests.conftest import Clock, RelayFactory
from tests.support.store import ON_POSTGRES
from tests.support.webhooks import (
    BILLING,
    ENTITLEMENTS,
    PATH,
    Client,
    counted,
    counts,
    events,
    inbox_rows,
    post,
)

NOW_S = 1_800_000_000
SECRET = "whsec-example-0123456789abcdefghijklmnopqrstuv"
OLD_SECRET = "old-secret-0123456789abcdefghijklmnopqrstuvwxyz"
EMPTY = {"inbox": 0, "event": 0, "delivery": 0, "purchase": 0}


async def start(relay_factory: RelayFactory, **kw: Any) -> Client:
    kw.setdefault("downstream", (BILLING,))
    kw.setdefault("entitlements", types.MappingProxyType(ENTITLEMENTS))
    client: Client = await relay_factory(use_clock=True, **kw)
    return client


def renewal(sim: AttestoSimulator) -> bytes:
    txn = sim.add_apple(transaction_id="t2", original_transaction_id="o1",
                        product_id="com.example.premium", expires_ms=(NOW_S + 86_400) * 1000,
                        purchase_ms=NOW_S * 1000 - 5000)
    return sim.apple_webhook("DID_RENEW", txn, signed_ms=NOW_S * 1000 - 1000, auto_renew=True)


def _tamper(body: bytes) -> bytes:
    return body.replace(b'"DID_RENEW"', b'"EXPIRED"')


def _sig(body: bytes, t: int, secret: str = SECRET) -> str:
    return sign_attesto(secret, t, body)


# name -> (make headers {signature} from (body, now), body transform, status, reason)
SIGNATURE_CASES: dict[str, tuple[Callable[[bytes, int], str | None],
                                 Callable[[bytes], bytes], int, str | None]] = {
    "fresh": (lambda b, n: _sig(b, n), lambda b: b, 200, None),
    "t = now-300 passes": (lambda b, n: _sig(b, n - 300), lambda b: b, 200, None),
    "t = now-301": (lambda b, n: _sig(b, n - 301), lambda b: b, 401, "stale"),
    "t = now+301": (lambda b, n: _sig(b, n + 301), lambda b: b, 401, "stale"),
    "tampered body": (lambda b, n: _sig(b, n), _tamper, 401, "mismatch"),
    "wrong secret": (lambda b, n: _sig(b, n, "another-secret-0123456789abcdefghijkl"),
                     lambda b: b, 401, "mismatch"),
    "missing header": (lambda b, n: None, lambda b: b, 401, "missing"),
    "two v1=": (lambda b, n: _sig(b, n) + ",v1=" + "0" * 64, lambda b: b, 401, "malformed"),
    "upper-case hex": (lambda b, n: f"t={n},v1=" + _sig(b, n).split("v1=")[1].upper(),
                       lambda b: b, 200, None),
    "non-integer t": (lambda b, n: _sig(b, n).replace(f"t={n}", f"t={n}.5"), lambda b: b,
                      401, "malformed"),
    "t not a number": (lambda b, n: "t=soon,v1=" + "a" * 64, lambda b: b, 401, "malformed"),
}


@pytest.mark.parametrize("case", list(SIGNATURE_CASES))
async def test_signature_cases(relay_factory: RelayFactory, sim: AttestoSimulator,
                               caplog: pytest.LogCaptureFixture, case: str) -> None:
    make_sig, transform, status, reason = SIGNATURE_CASES[case]
    client = await start(relay_factory)
    body = renewal(sim)
    headers = sim.headers_for(body, t=NOW_S)
    signature = make_sig(body, NOW_S)
    if signature is None:
        del headers["X-Attesto-Signature"]
    else:
        headers["X-Attesto-Signature"] = signature
    with caplog.at_level(logging.INFO, logger="relay"):
        resp = await client.post(PATH, data=transform(body), headers=headers)
    answer = await resp.json()
    assert resp.status == status
    if status == 200:
        assert answer == {"status": "accepted"}
        assert (await counts(client))["inbox"] == 1
        assert counted(client) == {("accepted", ""): 1}
    else:
        assert answer["error"]["code"] == "invalid_signature"
        assert answer["error"]["details"] == {"reason": reason}
        assert await counts(client) == EMPTY
        assert counted(client) == {("rejected", f"signature_{reason}"): 1}
        assert f"signature {reason}" in caplog.text
    assert signature is None or signature.split("v1=")[-1].lower() not in caplog.text.lower()


async def test_rotation_accepts_old_and_new_secrets(relay_factory: RelayFactory,
                                                    sim: AttestoSimulator) -> None:
    client = await start(relay_factory, webhook_secrets=(SECRET, OLD_SECRET))
    for secret in (OLD_SECRET, SECRET):
        body = renewal(sim)
        status, answer = await post(client, sim, body, t=NOW_S, secret=secret)
        assert (status, answer) == (200, {"status": "accepted"})
    status, _ = await post(client, sim, renewal(sim), t=NOW_S,
                           secret="retired-secret-0123456789abcdefghijklmn")
    assert status == 401
    assert (await counts(client))["inbox"] == 2


async def test_the_contract_vector_verifies(relay_factory: RelayFactory, clock: Clock) -> None:
    """The §4.2 vector passes the signature check; its toy body then fails the envelope."""
    clock.now = 1776513600
    client = await start(relay_factory)
    body = b'{"event":"test","eventId":"evt_01JR8Q3Z5K7M9N2P4R6T8V0W1X"}'
    v1 = "792907f1ff5cac546b3c70f706081a495809d6225d159b10592d672eb399d726"
    headers = {"Content-Type": "application/json",
               "X-Attesto-Event-Id": "evt_01JR8Q3Z5K7M9N2P4R6T8V0W1X"}
    resp = await client.post(PATH, data=body, headers={
        **headers, "X-Attesto-Signature": f"t=1776513600,v1={v1}"})
    answer = await resp.json()
    assert resp.status == 400 and answer["error"]["code"] == "invalid_envelope"
    assert answer["error"]["details"] == {"field": "source"}
    resp = await client.post(PATH, data=body, headers={
        **headers, "X-Attesto-Signature": f"t=1776513600,v1={v1[:-1]}7"})
    assert resp.status == 401
    assert await counts(client) == EMPTY


async def test_a_retry_with_a_new_t_is_a_duplicate(relay_factory: RelayFactory,
                                                   sim: AttestoSimulator,
                                                   clock: Clock) -> None:
    client = await start(relay_factory)
    body = renewal(sim)
    assert await post(client, sim, body, t=NOW_S) == (200, {"status": "accepted"})
    clock.advance(3600)  # Attesto's retries come minutes to hours later, re-signed
    assert await post(client, sim, body, t=NOW_S + 3600) == (200, {"status": "duplicate"})
    assert await counts(client) == {"inbox": 1, "event": 1, "delivery": 1, "purchase": 1}
    [row] = await inbox_rows(client)
    assert row["body"] == body and row["t"] == NOW_S
    assert row["received_ms"] == NOW_S * 1000 and row["event_type"] == "subscription.renewed"
    assert row["headers"]["X-Attesto-Event-Id"] == row["event_id"]
    assert "X-Attesto-Signature" not in row["headers"]
    assert counted(client) == {("accepted", ""): 1, ("duplicate", ""): 1}


async def test_body_over_the_cap_is_413(relay_factory: RelayFactory,
                                        sim: AttestoSimulator) -> None:
    client = await start(relay_factory, server={"max_body_bytes": 1024})
    body = renewal(sim)
    assert len(body) > 1024
    status, answer = await post(client, sim, body, t=NOW_S)
    assert status == 413 and answer["error"]["code"] == "payload_too_large"
    assert await counts(client) == EMPTY
    assert counted(client) == {("rejected", "payload_too_large"): 1}


@pytest.mark.parametrize(("body", "headers", "drop", "code"), [
    (b"{not json", {"X-Attesto-Event-Id": "evt_1"}, (), "invalid_json"),
    (b"[1, 2]", {"X-Attesto-Event-Id": "evt_1"}, (), "invalid_json"),
    (b"\xff\xfe", {"X-Attesto-Event-Id": "evt_1"}, (), "invalid_json"),
    (None, {"X-Attesto-Event-Id": "evt_01JR8Q40AB3CD4EF5GH6JK7MN8"}, (), "event_id_mismatch"),
    (None, {}, ("X-Attesto-Event-Id",), "event_id_mismatch"),
])
async def test_malformed_signed_bodies_are_400(relay_factory: RelayFactory,
                                               sim: AttestoSimulator, body: bytes | None,
                                               headers: dict[str, str], drop: tuple[str, ...],
                                               code: str) -> None:
    client = await start(relay_factory)
    raw = body if body is not None else renewal(sim)
    h = {"Content-Type": "application/json", "X-Attesto-Signature": _sig(raw, NOW_S),
         "X-Attesto-Event-Id": "evt_x", **headers}
    for name in drop:
        del h[name]
    resp = await client.post(PATH, data=raw, headers=h)
    assert resp.status == 400
    assert (await resp.json())["error"]["code"] == code
    assert await counts(client) == EMPTY
    assert counted(client) == {("rejected", code): 1}


async def test_no_secret_configured_refuses_every_delivery(relay_factory: RelayFactory,
                                                           sim: AttestoSimulator) -> None:
    client = await start(relay_factory, webhook_secrets=())
    status, answer = await post(client, sim, renewal(sim), t=NOW_S)
    assert status == 503 and answer["error"]["code"] == "not_configured"
    resp = await client.post(PATH, data=b"{}")
    assert resp.status == 503
    assert await counts(client) == EMPTY


async def test_a_store_error_mid_transaction_leaves_nothing(relay_factory: RelayFactory,
                                                            sim: AttestoSimulator) -> None:
    """Inbox, event and outbox rows are written, then the purchase insert fails: all undone."""
    client = await start(relay_factory)
    store = client.app[STORE_KEY]
    if ON_POSTGRES:  # SQLSTATE 53100 is disk_full: an OperationalError, as on a full disk
        await store.write(lambda: database.execute_sql(
            "CREATE FUNCTION fail_purchase() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "RAISE EXCEPTION 'simulated failure' USING ERRCODE = '53100'; END $$; "
            'CREATE TRIGGER fail_purchase BEFORE INSERT ON "purchase" '
            "FOR EACH ROW EXECUTE FUNCTION fail_purchase()"))
    else:
        await store.write(lambda: database.execute_sql(
            'CREATE TRIGGER fail_purchase BEFORE INSERT ON "purchase" '
            "BEGIN SELECT RAISE(ABORT, 'simulated failure'); END"))
    body = renewal(sim)
    status, answer = await post(client, sim, body, t=NOW_S)
    assert status == 503 and answer["error"]["code"] == "store_unavailable"
    assert await counts(client) == EMPTY
    assert counted(client) == {("failed", "store_unavailable"): 1}
    drop = "DROP TRIGGER fail_purchase" + (' ON "purchase"' if ON_POSTGRES else "")
    await store.write(lambda: database.execute_sql(drop))
    # Attesto retries the same event: it is processed once, in full.
    assert await post(client, sim, body, t=NOW_S + 30) == (200, {"status": "accepted"})
    assert await counts(client) == {"inbox": 1, "event": 1, "delivery": 1, "purchase": 1}


async def test_an_unwritable_store_answers_503(relay_factory: RelayFactory,
                                               sim: AttestoSimulator) -> None:
    client = await start(relay_factory)
    store = client.app[STORE_KEY]
    # PostgreSQL: the session turns read-only, as on a standby after a failover.
    ro, rw = (("SET default_transaction_read_only = on", "SET default_transaction_read_only = off")
              if ON_POSTGRES else ("PRAGMA query_only = 1", "PRAGMA query_only = 0"))
    await store.read(lambda: database.execute_sql(ro))
    status, answer = await post(client, sim, renewal(sim), t=NOW_S)
    assert status == 503 and answer["error"]["code"] == "store_unavailable"
    await store.read(lambda: database.execute_sql(rw))
    assert await counts(client) == EMPTY


async def test_accepted_event_is_relayed_with_its_attesto_id(relay_factory: RelayFactory,
                                                             sim: AttestoSimulator) -> None:
    client = await start(relay_factory)
    body = renewal(sim)
    await post(client, sim, body, t=NOW_S)
    [event] = await events(client)
    assert event["type"] == "subscription.renewed" and event["source"] == "webhook"
    assert event["attesto_event_id"] == sim.headers_for(body)["X-Attesto-Event-Id"]
    assert event["platform"] == "apple" and event["subject_key"] == "o1"
    assert event["state"] == "active" and event["previous_state"] is None
    assert event["entitlements"] == ["premium"] and event["stale"] is False
    assert event["occurred_at"] == "2027-01-15T07:59:59.000Z"
    assert event["received_at"] == "2027-01-15T08:00:00.000Z"


async def test_concurrent_deliveries_and_copies_apply_once_each(
        relay_factory: RelayFactory, sim: AttestoSimulator) -> None:
    """Deliveries arriving together share commits; copies of one eventId apply once."""
    client = await start(relay_factory)
    bodies = []
    for i in range(20):
        txn = sim.add_apple(transaction_id=f"t{i}", original_transaction_id=f"o{i % 5}",
                            product_id="com.example.premium",
                            expires_ms=(NOW_S + 86_400) * 1000 + i, purchase_ms=NOW_S * 1000)
        bodies.append(sim.apple_webhook("DID_RENEW", txn, signed_ms=NOW_S * 1000 - 100 + i))
    # Every delivery three times at once, as several Attesto instances may send it.
    answers = await asyncio.gather(*(post(client, sim, b, t=NOW_S) for b in bodies * 3))
    assert all(status == 200 for status, _ in answers)
    statuses = [a["status"] for _, a in answers]
    assert statuses.count("accepted") == 20 and statuses.count("duplicate") == 40
    assert await counts(client) == {"inbox": 20, "event": 20, "delivery": 20, "purchase": 5}
    per_subject: dict[str, list[int]] = {}
    for e in await events(client):
        per_subject.setdefault(e["subject_key"], []).append(e["sequence"])
    assert all(sorted(s) == [1, 2, 3, 4] for s in per_subject.values())
