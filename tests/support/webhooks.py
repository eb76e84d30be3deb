"""Helpers for the webhook receiver tests: signed posts and reading what was stored."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient

from relay.attesto.simulator import AttestoSimulator
from relay.config import DownstreamConfig
from relay.core.domain import PurchaseView
from relay.store.models import Delivery, Event, Inbox, Purchase
from relay.store.pipeline import view_of
from relay.web.appkeys import METRICS_KEY, STORE_KEY

Client = TestClient[web.Request, web.Application]
PATH = "/v1/webhooks/attesto"
ENTITLEMENTS = {"com.example.premium": ("premium",), "premium_monthly": ("premium",),
                "lifetime": ("lifetime",)}
# A configured endpoint, so every event also writes its outbox row (no worker on this
# branch sends it; the URL is never called).
BILLING = DownstreamConfig(name="billing", url="http://127.0.0.1:9/hook")


async def post(client: Client, sim: AttestoSimulator, body: bytes, *, t: int,
               secret: str | None = None, headers: dict[str, str] | None = None,
               drop: tuple[str, ...] = ()) -> tuple[int, dict[str, Any]]:
    """Deliver `body` as Attesto would (signed at `t`); return (status, JSON answer)."""
    h = sim.headers_for(body, t=t, secret=secret)
    h.update(headers or {})
    for name in drop:
        h.pop(name, None)
    resp = await client.post(PATH, data=body, headers=h)
    answer: dict[str, Any] = await resp.json()
    return resp.status, answer


async def counts(client: Client) -> dict[str, int]:
    def run() -> dict[str, int]:
        return {"inbox": Inbox.select().count(), "event": Event.select().count(),
                "delivery": Delivery.select().count(), "purchase": Purchase.select().count()}
    return await client.app[STORE_KEY].read(run)


async def purchase(client: Client, platform: str, key: str) -> PurchaseView | None:
    def run() -> PurchaseView | None:
        row = Purchase.get_or_none((Purchase.platform == platform)
                                   & (Purchase.subject_key == key))
        return view_of(row) if row is not None else None
    return await client.app[STORE_KEY].read(run)


async def events(client: Client) -> list[dict[str, Any]]:
    """Every stored event body, in commit order."""
    def run() -> list[dict[str, Any]]:
        return [json.loads(e.body) for e in Event.select().order_by(Event.cursor)]
    return await client.app[STORE_KEY].read(run)


async def inbox_rows(client: Client) -> list[dict[str, Any]]:
    def run() -> list[dict[str, Any]]:
        return [{"event_id": r.event_id, "event_type": r.event_type, "t": r.signature_t,
                 "received_ms": r.received_ms, "headers": json.loads(r.headers),
                 "body": bytes(r.body)} for r in Inbox.select()]
    return await client.app[STORE_KEY].read(run)


def counted(client: Client) -> dict[tuple[str, str], float]:
    """relay_webhooks_total by (outcome, reason), the non-zero ones."""
    out: dict[tuple[str, str], float] = {}
    for family in client.app[METRICS_KEY].registry.collect():
        for sample in family.samples:
            if sample.name == "relay_webhooks_total" and sample.value:
                out[(sample.labels["outcome"], sample.labels["reason"])] = sample.value
    return out
