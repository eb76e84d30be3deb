"""Helpers for the console tests: sign in over HTTP, read forms and CSRF tokens from pages."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from typing import Any

from aiohttp import ClientResponse

from tests.conftest import ADMIN_TOKEN
from tests.outbox_support import App

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


def text_of(html: str) -> str:
    """The page's visible text, roughly (tags dropped, entities kept as written)."""
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))
