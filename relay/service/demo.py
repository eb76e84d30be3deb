"""`relay demo`: relay on a throw-away SQLite file between the Attesto simulator and a local
receiver, walking one Apple and one Google subscription through their life; prints a timeline.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import secrets
import tempfile
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from relay.attesto.simulator import AttestoSimulator
from relay.config import Config, Credentials, DownstreamConfig, Secret, load_config
from relay.core.signing import generate_secret
from relay.outbox.receiver import DownstreamReceiver
from relay.store.models import Purchase
from relay.web.app import create_app
from relay.web.appkeys import OUTBOX_KEY, SCHEDULER_KEY, STORE_KEY

DAY_MS = 86_400_000
Out = Callable[[str], None]


class Clock:
    """Wall time that the demo can move forward (the missed expiry happens a month later)."""

    def __init__(self) -> None:
        self.now = float(int(time.time()))

    def __call__(self) -> float:
        return self.now

    def ms(self) -> int:
        return int(self.now * 1000)


def demo_config(db: Path, attesto_url: str, receiver_url: str, api_key: str,
                downstream_secret: str, webhook_secret: str) -> Config:
    base = load_config(None, environ={})
    return dataclasses.replace(
        base,
        store=dataclasses.replace(base.store, path=str(db)),
        attesto=dataclasses.replace(base.attesto, base_url=attesto_url),
        outbox=dataclasses.replace(base.outbox, allow_networks=("127.0.0.0/8",)),
        scheduler=dataclasses.replace(base.scheduler, enabled=False),  # the demo drives polls
        entitlements=types.MappingProxyType({"premium.monthly": ("premium",),
                                             "premium": ("premium",)}),
        downstream=(DownstreamConfig(name="your-app", url=receiver_url),),
        credentials=Credentials(
            attesto_api_key=Secret(AttestoSimulator.api_key),
            attesto_webhook_secrets=(Secret(webhook_secret),),
            api_keys=(("demo", hashlib.sha256(api_key.encode()).hexdigest()),),
            admin_token=Secret(secrets.token_urlsafe(24)),
            jwt_key=Secret(secrets.token_urlsafe(32)),
            downstream_secrets=types.MappingProxyType({"your-app": (Secret(downstream_secret),)}),
        ))


async def _serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    return runner, f"http://{host}:{port}"


class Demo:
    """The three loopback peers and the steps; `step()` prints one block of the timeline."""

    def __init__(self, out: Out) -> None:
        self.out = out
        self.clock = Clock()
        self.sim = AttestoSimulator(webhook_secret=generate_secret())
        self.downstream_secret = generate_secret()
        self.receiver = DownstreamReceiver(secrets=[self.downstream_secret], clock=self.clock)
        self.api_key = secrets.token_urlsafe(24)
        self.runners: list[web.AppRunner] = []
        self.seen = 0
        self.steps = 0

    async def start(self, db: Path) -> None:
        sim_runner, attesto_url = await _serve(self.sim.app())
        recv_runner, recv_base = await _serve(self.receiver.app())
        self.runners += [sim_runner, recv_runner]
        config = demo_config(db, attesto_url, recv_base + self.receiver.path, self.api_key,
                             self.downstream_secret, self.sim.webhook_secret)
        self.app = create_app(config, clock=self.clock)
        relay_runner, self.url = await _serve(self.app)
        self.runners.append(relay_runner)
        self.session = aiohttp.ClientSession()
        self.out(f"relay {self.url} | Attesto simulator {attesto_url} | "
                 f"your app {recv_base + self.receiver.path} | store {db}\n")

    async def stop(self) -> None:
        await self.session.close()
        for runner in reversed(self.runners):
            await runner.cleanup()

    # ---- inputs -----------------------------------------------------------------------

    async def verify(self, platform: str, body: dict[str, Any]) -> None:
        async with self.session.post(f"{self.url}/v1/verify/{platform}", json=body,
                                     headers={"Authorization": f"Bearer {self.api_key}"}) as r:
            answer = await r.json()
            if r.status != 200 or not answer.get("valid"):
                raise RuntimeError(f"verify {platform} failed: {r.status} {answer}")

    async def webhook(self, body: bytes) -> None:
        status, answer = await self.sim.deliver(self.session, f"{self.url}/v1/webhooks/attesto",
                                                body, t=int(self.clock()))
        if status != 200:
            raise RuntimeError(f"webhook refused: {status} {answer!r}")

    async def poll_due(self) -> int:
        """What the scheduler's tick does: claim the purchases due now and re-poll them."""
        poller = self.app[SCHEDULER_KEY].poller
        assert poller is not None
        now = self.clock.ms()
        views = await poller.claim(now, 100)
        for view in views:
            await poller.poll_one(view)
        return len(views)

    async def until_expired(self, platform: str, key: str, expires_ms: int) -> int:
        """Let time pass beyond the expiry, running each re-poll when it comes due."""
        self.clock.now = max(self.clock.now, expires_ms / 1000 + 60)
        polls = 0
        for _ in range(10):
            row = await self.app[STORE_KEY].read(
                lambda: Purchase.get((Purchase.platform == platform)
                                     & (Purchase.subject_key == key)))
            if row.state == "expired" or row.next_poll_ms is None:
                break
            self.clock.now = max(self.clock.now, row.next_poll_ms / 1000 + 1)
            polls += await self.poll_due()
        return polls

    # ---- the timeline -----------------------------------------------------------------

    async def get(self, path: str) -> Any:
        async with self.session.get(f"{self.url}{path}",
                                    headers={"Authorization": f"Bearer {self.api_key}"}) as r:
            return await r.json()

    async def step(self, title: str, arrived: str, platform: str, key: str,
                   explain: str | None = None) -> None:
        """One block of the timeline; `explain`: a user whose `premium` it explains."""
        self.steps += 1
        await self.app[OUTBOX_KEY].settle()
        view = await self.get(f"/v1/purchases/{platform}/{key}")
        day = time.strftime("%Y-%m-%d", time.gmtime(self.clock()))
        self.out(f"{self.steps}. {title}  [{day}]")
        self.out(f"   arrived : {arrived}")
        expires = (view.get("expires_at") or "-")[:10]
        self.out(f"   state   : {view['state']}  (expires {expires}, "
                 f"auto-renew {view.get('auto_renew')})")
        new, self.seen = self.receiver.received[self.seen:], len(self.receiver.received)
        if not new:
            self.out("   relayed : nothing")
        for got in new:
            event = got.json
            check = "signature ok" if got.signature_ok else "SIGNATURE INVALID"
            stale = " (stale)" if event.get("stale") else ""
            self.out(f"   relayed : {event['type']}{stale} (from {event['source']}) -> "
                     f"your-app, {check}")
        if explain is not None:  # GET /v1/users/{id}/entitlements/premium/explain
            why = await self.get(f"/v1/users/{explain}/entitlements/premium/explain")
            self.out(f"   explain : {why['explanation']}")
        self.out("")

    async def apple(self) -> None:
        sim, clock = self.sim, self.clock
        now = clock.ms()
        sim.add_apple(transaction_id="2000000001", original_transaction_id="2000000000",
                      product_id="premium.monthly", expires_ms=now + 30 * DAY_MS,
                      purchase_ms=now, signed_ms=now)
        await self.verify("apple", {"user_id": "alice", "transaction_id": "2000000001"})
        await self.step("Apple purchase", "POST /v1/verify/apple from your backend",
                        "apple", "2000000000")
        clock.now += 30 * 86400 - 60
        renewed = sim.add_apple(transaction_id="2000000002",
                                original_transaction_id="2000000000",
                                product_id="premium.monthly", expires_ms=now + 60 * DAY_MS,
                                purchase_ms=now + 30 * DAY_MS, signed_ms=clock.ms())
        await self.webhook(sim.apple_webhook("DID_RENEW", renewed, signed_ms=clock.ms(),
                                             auto_renew=True))
        await self.step("Apple renewal", "Attesto webhook DID_RENEW", "apple", "2000000000")
        clock.now += 86400
        await self.webhook(sim.apple_webhook("DID_CHANGE_RENEWAL_STATUS", renewed,
                                             subtype="AUTO_RENEW_DISABLED",
                                             signed_ms=clock.ms(), auto_renew=False))
        await self.step("Apple cancellation", "Attesto webhook DID_CHANGE_RENEWAL_STATUS "
                        "(AUTO_RENEW_DISABLED)", "apple", "2000000000")
        polled = await self.until_expired("apple", "2000000000", now + 60 * DAY_MS)
        await self.step("Apple missed expiry", f"no webhook; the scheduler re-polled {polled} "
                        "purchase(s) after the expiry", "apple", "2000000000")
        clock.now += 3600
        renewed.revocation_ms = clock.ms()
        renewed.revocation_reason = 0
        await self.webhook(sim.apple_webhook("REFUND", renewed, signed_ms=clock.ms()))
        await self.step("Apple refund", "Attesto webhook REFUND", "apple", "2000000000",
                        explain="alice")

    async def google(self) -> None:
        sim, clock = self.sim, self.clock
        now = clock.ms()
        sub = sim.add_google(token="gtok-demo-1", product_id="premium",
                             expiry_ms=now + 30 * DAY_MS, start_ms=now)
        await self.verify("google", {"user_id": "bob", "package_name": sim.package_name,
                                     "product_id": "premium", "purchase_token": sub.token,
                                     "type": "subscription"})
        await self.step("Google purchase", "POST /v1/verify/google from your backend",
                        "google", sub.token)
        clock.now += 30 * 86400 - 60
        sub.expiry_ms = now + 60 * DAY_MS
        await self.webhook(sim.google_webhook(2, sub, event_time_ms=clock.ms()))
        polled = await self.poll_due()
        await self.step("Google renewal", f"Attesto webhook SUBSCRIPTION_RENEWED, then "
                        f"{polled} re-verify (Google notifications carry no expiry)",
                        "google", sub.token)
        clock.now += 86400
        sub.auto_renew = False
        await self.webhook(sim.google_webhook(3, sub, event_time_ms=clock.ms()))
        polled = await self.poll_due()
        await self.step("Google cancellation", f"Attesto webhook SUBSCRIPTION_CANCELED, then "
                        f"{polled} re-verify", "google", sub.token)
        sub.state = "SUBSCRIPTION_STATE_EXPIRED"
        polled = await self.until_expired("google", sub.token, now + 60 * DAY_MS)
        await self.step("Google missed expiry", f"no webhook; the scheduler re-polled {polled} "
                        "purchase(s) after the expiry", "google", sub.token)
        clock.now += 3600
        await self.webhook(sim.google_webhook(1, sub, event_time_ms=clock.ms(), kind="voided"))
        polled = await self.poll_due()
        await self.step("Google refund", f"Attesto webhook voidedPurchaseNotification, then "
                        f"{polled} re-verify (Play's answer decides)", "google", sub.token)


async def run(out: Out = print) -> int:
    """Run the whole demo; return the number of steps shown."""
    logging.getLogger("relay").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="relay-demo-") as tmp:
        demo = Demo(out)
        await demo.start(Path(tmp) / "demo.sqlite3")
        try:
            await demo.apple()
            await demo.google()
        finally:
            await demo.stop()
    bad = [r for r in demo.receiver.received if not r.signature_ok]
    out(f"{demo.steps} steps, {len(demo.receiver.received)} events relayed, "
        f"{len(bad)} with a bad signature. The store was a temporary file, now removed.")
    return demo.steps
