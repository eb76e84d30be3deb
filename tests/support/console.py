"""Helpers for the console tests: sign in over HTTP, read forms and CSRF tokens from pages."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from typing import Any

from aiohttp import ClientResponse

from relay.core.domain import Snapshot, State
from relay.store import pipeline
from relay.web.appkeys import RUNTIME_KEY, STORE_KEY
from tests.conftest import ADMIN_TOKEN
from tests.support.outbox import App

BASE = "/console"


class _Forms(HTMLParser):
    """Collects every form's action and its inputs' values, and counts script elements."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[dict[str, Any]] = []
        self.scripts = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "form":
            self.forms.append({"action": a.get("action"), "method": a.get("method"),
                               "inputs": {}})
        elif tag == "input" and self.forms and a.get("name"):
            self.forms[-1]["inputs"][a["name"]] = a.get("value")
        elif tag == "script":
            self.scripts += 1


def parse(html: str) -> _Forms:
    parser = _Forms()
    parser.feed(html)
    return parser


def form(html: str, action: str) -> dict[str, Any]:
    found = [f for f in parse(html).forms if f["action"] == action]
    assert found, f"no form posting to {action}"
    return dict(found[0]["inputs"])


async def sign_in(client: App, secret: str = ADMIN_TOKEN,
                  headers: dict[str, str] | None = None) -> ClientResponse:
    return await client.post(f"{BASE}/signin", data={"secret": secret, "next": f"{BASE}/"},
                             headers=headers or {}, allow_redirects=False)


async def signed_in(client: App, secret: str = ADMIN_TOKEN) -> str:
    """Sign in (the client keeps the cookie); return the session's CSRF token."""
    resp = await sign_in(client, secret)
    assert resp.status == 303, await resp.text()
    page = await client.get(f"{BASE}/")
    assert page.status == 200
    return str(form(await page.text(), f"{BASE}/signout")["csrf"])


async def shown_as_text(resp: ClientResponse) -> str:
    """The page's HTML after checking that a planted `<script>`/`<img>` reached it as text:
    a 200, no script element, no img tag, the escaped `&lt;script&gt;` present."""
    assert resp.status == 200
    text = await resp.text()
    assert parse(text).scripts == 0
    assert "<img" not in text
    assert "&lt;script&gt;" in text
    return text


def text_of(html: str) -> str:
    """The page's visible text, roughly (tags dropped, entities kept as written)."""
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


async def verified(client: App, platform: str, key: str, *, user_id: str,
                   product_id: str = "premium.monthly", state: State = State.ACTIVE,
                   expires_in_s: int = 86_400, **fields: Any) -> None:
    """Store a purchase as a client verify would (through the pipeline: row + events)."""
    runtime, store = client.app[RUNTIME_KEY], client.app[STORE_KEY]
    now = runtime.now_ms()
    snap = Snapshot(platform=platform, subject_key=key, source="verify", observed_ms=now,
                    received_ms=now, kind="subscription", product_id=product_id, state=state,
                    expires_ms=now + expires_in_s * 1000, environment="production",
                    user_id=user_id, event_type="subscription.purchased", **fields)
    await store.write(lambda: pipeline.apply(snap, runtime.rules, now))
