"""Helpers for verify tests: a Verifier on a real store and the loopback fake Attesto,
and webhook-side snapshots built by hand the way the webhook receiver builds them."""

from __future__ import annotations

import dataclasses
import time
import types
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import jwt

from relay.attesto.client import AttestoClient
from relay.config import Config, ProductConfig
from relay.core.domain import PurchaseView, Snapshot, State
from relay.runtime import Runtime
from relay.store import lookups
from relay.store.database import Store
from relay.store.models import Event
from relay.verify.verifier import Verifier
from tests.conftest import JWT_SECRET, Clock, make_config

ENTITLEMENTS = types.MappingProxyType({
    "premium.monthly": ("premium",), "premium": ("premium",),
    "premium:yearly": ("premium", "yearly_badge"), "coins_100": ("coins",),
    "lifetime": ("lifetime",)})
PRODUCTS = (ProductConfig("premium.monthly", "subscription", "monthly"),
            ProductConfig("premium", "subscription", "monthly"),
            ProductConfig("coins_100", "consumable"))
UUID_A = "11111111-2222-4333-8444-555555555555"
DAY_MS = 86_400_000


def verify_config(tmp_path: Path, attesto_url: str, **sections: Any) -> Config:
    sections = {"entitlements": ENTITLEMENTS, "products": PRODUCTS, **sections}
    return make_config(tmp_path, attesto_url=attesto_url, **sections)


@asynccontextmanager
async def open_verifier(config: Config, clock: Clock) -> AsyncIterator[Verifier]:
    store = Store(config.store)
    await store.open()
    try:
        async with aiohttp.ClientSession() as session:
            attesto = AttestoClient(session, config.attesto, config.credentials.attesto_api_key)
            yield Verifier(Runtime(config, clock), store, attesto)
    finally:
        await store.close()


def with_policy(verifier: Verifier, owner_conflict: str) -> None:
    cfg = verifier.runtime.config
    verifier.runtime.replace(dataclasses.replace(
        cfg, purchases=dataclasses.replace(cfg.purchases, owner_conflict=owner_conflict)))


async def row(verifier: Verifier, platform: str, key: str) -> PurchaseView | None:
    return await verifier.store.read(lambda: lookups.purchase_view(platform, key))


async def event_types(verifier: Verifier, key: str) -> list[str]:
    def q() -> list[str]:
        return [e.type for e in Event.select().where(Event.subject_key == key)
                .order_by(Event.cursor)]
    return await verifier.store.read(q)


def complete(view: PurchaseView | None) -> dict[str, Any]:
    """The fields both orders must agree on (not times or sequence numbers)."""
    assert view is not None
    return {k: getattr(view, k) for k in (
        "kind", "user_id", "app_user_id", "product_id", "base_plan_id", "state", "environment",
        "expires_ms", "auto_renew", "latest_ref", "package_name")}


def apple_webhook_snapshot(key: str, txn_id: str, product: str, expires_ms: int,
                           signed_ms: int, now_ms: int, *, event: str = "subscription.purchased",
                           state: State = State.ACTIVE, auto_renew: bool = True,
                           app_user_id: str | None = UUID_A) -> Snapshot:
    """What an Apple webhook says: the decoded transaction, renewal info, signedDate."""
    return Snapshot(platform="apple", subject_key=key, source="webhook", observed_ms=signed_ms,
                    received_ms=now_ms, kind="subscription", product_id=product, state=state,
                    expires_ms=expires_ms, environment="sandbox", auto_renew=auto_renew,
                    app_user_id=app_user_id, latest_ref=txn_id, event_type=event,
                    attesto_event_id=f"evt_{key}_{event}")


def google_webhook_snapshot(root: str, token: str, product: str, event_ms: int, now_ms: int,
                            app_user_id: str | None = UUID_A) -> Snapshot:
    """A Google RTDN: no expiry, no environment; the receiver asks for a re-poll."""
    return Snapshot(platform="google", subject_key=root, source="webhook", observed_ms=event_ms,
                    received_ms=now_ms, kind="subscription", product_id=product,
                    state=State.ACTIVE, app_user_id=app_user_id, latest_ref=token,
                    event_type="subscription.purchased", event_reason="initial",
                    attesto_event_id=f"evt_{root}", poll_now=True)


def user_token(sub: str = "user-1", **claims: Any) -> str:
    return jwt.encode({"sub": sub, "exp": int(time.time()) + 300, **claims}, JWT_SECRET,
                      algorithm="HS256")
