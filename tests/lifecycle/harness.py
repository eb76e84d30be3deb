"""Relay under test for the lifecycle corpus: a real app on a real store (SQLite, or
PostgreSQL with RELAY_TEST_POSTGRES_URL), the scripted Attesto on loopback, a fake clock.

Inputs go in as the outside world sends them (signed webhooks over HTTP, verify calls on
the service API, re-polls through relay's poller against the scripted Attesto); what comes
out is read where an app backend and a downstream service see it: the stored purchase row,
`GET /v1/users/{id}/entitlements`, and the relayed events (the events table and the
outbox rows written for them).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient

from relay.config import Credentials, DownstreamConfig, Secret, load_config
from relay.store.models import Delivery, Event, Purchase
from relay.web.app import create_app
from relay.web.appkeys import SCHEDULER_KEY, STORE_KEY
from tests.conftest import Clock
from tests.lifecycle.attesto import (
    API_KEY,
    SECRET,
    ScriptedAttesto,
    apple_envelope,
    google_envelope,
    signed_headers,
)
from tests.support.store import store_config

SERVICE_KEY = "lifecycle-service-key"
ENTITLEMENTS = {"com.example.premium": ("premium",), "com.example.pro": ("premium", "pro"),
                "premium_monthly": ("premium",), "pro_monthly": ("premium", "pro")}
_event_ids = itertools.count(1)


def event_id() -> str:
    n = next(_event_ids)
    return f"evt_01LIFECYCLE{n:014d}"


@dataclass
class Relay:
    """One relay instance and its peers; every method is one input or one observation."""

    client: TestClient[web.Request, web.Application]
    attesto: ScriptedAttesto
    clock: Clock
    seen: list[str] = field(default_factory=list)  # ids of events already returned

    @property
    def now_ms(self) -> int:
        return int(self.clock.now * 1000)

    # ---- inputs -----------------------------------------------------------------------

    async def post(self, body: bytes) -> dict[str, Any]:
        t = int(self.clock.now)
        resp = await self.client.post("/v1/webhooks/attesto", data=body,
                                      headers=signed_headers(body, t))
        answer: dict[str, Any] = await resp.json()
        assert resp.status == 200, answer
        return answer

    async def apple_webhook(self, notification: dict[str, Any],
                            eid: str | None = None) -> dict[str, Any]:
        return await self.post(apple_envelope(notification, event_id=eid or event_id(),
                                              received_ms=self.now_ms))

    async def google_webhook(self, notification: dict[str, Any], root: str | None,
                             app_user_id: str | None = None,
                             eid: str | None = None) -> dict[str, Any]:
        return await self.post(google_envelope(notification, event_id=eid or event_id(),
                                               received_ms=self.now_ms, root_token=root,
                                               app_user_id=app_user_id))

    async def verify_apple(self, user: str, tid: str) -> dict[str, Any]:
        resp = await self.client.post("/v1/verify/apple", json={
            "user_id": user, "transaction_id": tid}, headers=self._auth())
        body: dict[str, Any] = await resp.json()
        assert resp.status == 200, body
        return body

    async def verify_google(self, user: str, token: str, product: str) -> dict[str, Any]:
        resp = await self.client.post("/v1/verify/google", json={
            "user_id": user, "package_name": "com.example.app", "product_id": product,
            "purchase_token": token, "type": "subscription"}, headers=self._auth())
        body: dict[str, Any] = await resp.json()
        assert resp.status == 200, body
        return body

    async def repoll(self) -> list[str]:
        """Run every re-poll due now (relay's poller, against the scripted Attesto)."""
        poller = self.client.app[SCHEDULER_KEY].poller
        assert poller is not None
        outcomes = await poller.run_due(1000)
        return [str(o) for o in outcomes]

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    # ---- observations -----------------------------------------------------------------

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {SERVICE_KEY}"}

    async def row(self, platform: str, key: str) -> dict[str, Any] | None:
        def run() -> dict[str, Any] | None:
            r = Purchase.get_or_none((Purchase.platform == platform)
                                     & (Purchase.subject_key == key))
            return None if r is None else dict(r.__data__)
        return await self.client.app[STORE_KEY].read(run)

    async def entitlements(self, user: str) -> list[str]:
        resp = await self.client.get(f"/v1/users/{user}/entitlements", headers=self._auth())
        body = await resp.json()
        assert resp.status == 200, body
        return sorted({e["key"] for e in body["entitlements"]})

    async def new_events(self) -> list[dict[str, Any]]:
        """Events stored since the last call (commit order), each with its outbox rows."""
        def run() -> list[dict[str, Any]]:
            out = []
            for e in Event.select().order_by(Event.cursor):
                if e.id in self.seen:
                    continue
                body = json.loads(e.body)
                body["_endpoints"] = sorted(d.endpoint for d in Delivery.select().where(
                    Delivery.event == e.cursor))
                body["_statuses"] = sorted(d.status for d in Delivery.select().where(
                    Delivery.event == e.cursor))
                out.append(body)
            return out
        found = await self.client.app[STORE_KEY].read(run)
        self.seen.extend(e["id"] for e in found)
        return found


async def start_relay(aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path,
                      clock: Clock, *, downstream: tuple[DownstreamConfig, ...] = (),
                      name: str = "relay", **sections: dict[str, Any]) -> Relay:
    attesto = ScriptedAttesto()
    server = await aiohttp_server(attesto.app(), host="127.0.0.1")
    base = load_config(None, environ={})
    cfg = dataclasses.replace(
        base, store=store_config(tmp_path, name),
        attesto=dataclasses.replace(base.attesto, base_url=str(server.make_url("")).rstrip("/"),
                                    timeout_s=5.0, connect_timeout_s=1.0, max_attempts=1),
        scheduler=dataclasses.replace(base.scheduler, enabled=False),
        outbox=dataclasses.replace(base.outbox, allow_networks=("127.0.0.0/8",)),
        entitlements=types.MappingProxyType(ENTITLEMENTS), downstream=downstream,
        credentials=Credentials(
            attesto_api_key=Secret(API_KEY), attesto_webhook_secrets=(Secret(SECRET),),
            api_keys=(("backend", hashlib.sha256(SERVICE_KEY.encode()).hexdigest()),),
            admin_token=Secret("lifecycle-admin"), jwt_key=Secret("x" * 32),
            downstream_secrets=types.MappingProxyType(
                {d.name: (Secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),)
                 for d in downstream})))
    for section, values in sections.items():
        cfg = dataclasses.replace(cfg, **{section: dataclasses.replace(
            getattr(cfg, section), **values)})
    app = create_app(cfg, clock=clock)
    client = await aiohttp_client(app)
    return Relay(client, attesto, clock)
