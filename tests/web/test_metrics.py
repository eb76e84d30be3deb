"""`GET /metrics`: admin token, Prometheus text, and every family moves with real traffic."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from relay.attesto.simulator import AttestoSimulator
from relay.config import DownstreamConfig
from relay.metrics import Metrics, exposition
from relay.outbox.receiver import DownstreamReceiver
from relay.store.models import Purchase
from relay.web.appkeys import OUTBOX_KEY, STORE_KEY
from tests.conftest import ADMIN_TOKEN, Clock, RelayFactory, auth
from tests.support.scheduler import due_now
from tests.support.verify import DAY_MS, verify_config
from tests.support.webhooks import post

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(client: Any) -> Samples:
    resp = await client.get("/metrics", headers=auth(ADMIN_TOKEN))
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain")
    out: Samples = {}
    for family in text_string_to_metric_families(await resp.text()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum over every label set that includes `labels`."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


async def test_metrics_needs_the_admin_token(relay_factory: RelayFactory) -> None:
    client = await relay_factory()
    for headers in ({}, auth()):  # none, and a service key
        resp = await client.get("/metrics", headers=headers)
        assert resp.status == 401
        assert (await resp.json())["error"]["code"] == "unauthorized"


async def test_families_move_with_traffic(
        relay_factory: RelayFactory, tmp_path: Path, sim: AttestoSimulator, attesto_url: str,
        receiver: DownstreamReceiver, receiver_url: str, clock: Clock) -> None:
    now = int(clock() * 1000)
    cfg = verify_config(tmp_path, attesto_url,
                        downstream=(DownstreamConfig(name="app", url=receiver_url),
                                    DownstreamConfig(name="held", url=receiver_url,
                                                     enabled=False)))
    client = await relay_factory(cfg, use_clock=True)
    before = await scrape(client)
    assert value(before, "relay_build_info", version=__import__("relay").__version__) == 1
    assert value(before, "relay_outbox_depth", endpoint="app", status="pending") == 0
    assert value(before, "relay_due_queue_size") == 0

    # verify: one valid, one valid:false, one Attesto failure
    sim.add_apple(transaction_id="t1", original_transaction_id="o1",
                  product_id="premium.monthly", expires_ms=now + DAY_MS, purchase_ms=now - 1000)
    ok = await client.post("/v1/verify/apple", headers=auth(),
                           json={"user_id": "u1", "transaction_id": "t1"})
    assert ok.status == 200
    missing = await client.post("/v1/verify/apple", headers=auth(),
                                json={"user_id": "u1", "transaction_id": "nope"})
    assert (await missing.json())["valid"] is False
    sim.fail_next(401, error="UNAUTHENTICATED", message="bad key")
    failed = await client.post("/v1/verify/apple", headers=auth(),
                               json={"user_id": "u1", "transaction_id": "t1"})
    assert failed.status == 502
    await receiver.wait_for(1)
    await client.app[OUTBOX_KEY].settle()

    # webhooks: one accepted, one duplicate, one with a bad signature
    body = sim.apple_webhook("TEST", None)
    t = int(clock())
    assert (await post(client, sim, body, t=t))[0] == 200
    assert (await post(client, sim, body, t=t))[1] == {"status": "duplicate"}
    assert (await post(client, sim, body, t=t, secret="wrong-secret-0123456789"))[0] == 401

    # a re-poll comes due and runs
    await client.app[STORE_KEY].write(lambda: Purchase.update(next_poll_ms=now - 5000).execute())
    mid = await scrape(client)
    assert value(mid, "relay_due_queue_size") == 1
    assert value(mid, "relay_due_queue_overdue_seconds") >= 5
    assert await due_now(client) == 1
    after = await scrape(client)

    assert value(after, "relay_verify_total", platform="apple", outcome="valid") == 1
    assert value(after, "relay_verify_total", platform="apple", outcome="invalid") == 1
    assert value(after, "relay_verify_total", platform="apple",
                 outcome="attesto_unauthenticated") == 1
    assert value(after, "relay_attesto_errors_total", code="attesto_unauthenticated") == 1
    # three verify calls and one re-poll, each one Attesto round trip
    assert value(after, "relay_attesto_request_seconds_count", endpoint="apple") == 4
    assert value(after, "relay_webhooks_total", outcome="accepted", reason="") == 1
    assert value(after, "relay_webhooks_total", outcome="duplicate", reason="") == 1
    assert total(after, "relay_webhooks_total", outcome="rejected") == 1
    delivered = value(after, "relay_delivery_attempts_total", endpoint="app",
                      outcome="delivered")
    assert delivered >= 1 and delivered == len(receiver.received)  # (signed at the test clock)
    assert value(after, "relay_delivery_latency_seconds_count", endpoint="app") == delivered
    assert total(after, "relay_repoll_total") == 1
    assert value(after, "relay_due_queue_size") == 0
    # the disabled endpoint keeps its rows held: depth and age are visible per endpoint
    assert value(after, "relay_outbox_depth", endpoint="held", status="held") >= 1
    clock.advance(60)
    later = await scrape(client)
    assert value(later, "relay_outbox_oldest_pending_age_seconds", endpoint="held") >= 60
    assert value(later, "relay_outbox_oldest_pending_age_seconds", endpoint="app") == 0


METRICS_TOKEN = "relay-test-metrics-token"


async def test_the_metrics_token_reads_metrics_and_nothing_else(relay_factory: RelayFactory,
                                                                tmp_path: Path) -> None:
    """A Prometheus scraper holds `metrics-token`: /metrics only, never pause/replay/resync."""
    import dataclasses

    from relay.config import Secret
    from tests.conftest import make_config

    base = make_config(tmp_path)
    config = dataclasses.replace(base, credentials=dataclasses.replace(
        base.credentials, metrics_token=Secret(METRICS_TOKEN)))
    client = await relay_factory(config)
    for token in (METRICS_TOKEN, ADMIN_TOKEN):  # the admin token keeps working there
        assert (await client.get("/metrics", headers=auth(token))).status == 200
    for method, path in (("GET", "/v1/admin/endpoints"), ("GET", "/v1/admin/deliveries"),
                         ("POST", "/v1/admin/endpoints/billing/pause"),
                         ("POST", "/v1/admin/replay"), ("POST", "/v1/admin/resync"),
                         ("GET", "/v1/admin/due")):
        resp = await client.request(method, path, headers=auth(METRICS_TOKEN))
        assert resp.status == 401, (method, path)


async def test_metrics_token_alone_serves_metrics(relay_factory: RelayFactory,
                                                  tmp_path: Path) -> None:
    import dataclasses

    from relay.config import Secret
    from tests.conftest import make_config

    base = make_config(tmp_path)
    config = dataclasses.replace(base, credentials=dataclasses.replace(
        base.credentials, admin_token=None, metrics_token=Secret(METRICS_TOKEN)))
    client = await relay_factory(config)
    assert (await client.get("/metrics", headers=auth(METRICS_TOKEN))).status == 200
    assert (await client.get("/metrics", headers=auth(ADMIN_TOKEN))).status == 401
    resp = await client.get("/v1/admin/endpoints", headers=auth(METRICS_TOKEN))
    assert resp.status == 503 and (await resp.json())["error"]["code"] == "not_configured"


def test_webhook_child_is_labels_child_and_appears_only_once_counted() -> None:
    m = Metrics()
    assert b'outcome="accepted"' not in exposition(m)
    child = m.webhook("accepted", "")
    assert child is m.webhooks.labels("accepted", "") is m.webhook("accepted", "")
    child.inc()
    m.webhook("rejected", "signature_expired").inc(2)
    text = exposition(m).decode()
    assert 'relay_webhooks_total{outcome="accepted",reason=""} 1.0' in text
    assert 'relay_webhooks_total{outcome="rejected",reason="signature_expired"} 2.0' in text
