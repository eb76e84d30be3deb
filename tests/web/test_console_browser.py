"""The admin console in a real browser: headless Chromium (Debian's) driven by Playwright.

An operator signs in, finds an endpoint's failing delivery, retries it and sees it
delivered, pauses and resumes the endpoint, looks up a purchase (its history and explain)
and a user, and signs out; a `<script>` in a purchase or its history shows as text; an
action without its CSRF token is refused.
The browser runs with JavaScript off (the console serves none), except where a test
needs it on to show that nothing would run. Every page the test saw is written as a PNG
under the test's tmp folder if it fails.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from relay.config import DownstreamConfig
from relay.core.domain import InputNote
from relay.outbox.receiver import DownstreamReceiver
from relay.web.appkeys import RUNTIME_KEY
from tests.conftest import ADMIN_TOKEN, Clock, RelayFactory, make_config
from tests.support.browser import Shots, launch, require_chromium
from tests.support.console import BASE, verified
from tests.support.outbox import App, emit, now_clock, outbox_of

pytestmark = pytest.mark.slow


@pytest.fixture
def clock() -> Clock:
    return now_clock()


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    require_chromium()
    async for b in launch():
        yield b


@pytest.fixture
async def shots(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Shots]:
    taken = Shots(tmp_path / "screenshots")
    yield taken
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        for path in taken.write():
            print(f"screenshot: {path}")


@pytest.fixture
async def page(request: pytest.FixtureRequest, browser: Any,
               shots: Shots) -> AsyncIterator[Any]:
    # JavaScript off unless a test asks for it: the console serves none and must work so.
    context = await browser.new_context(viewport={"width": 1280, "height": 900},
                                        java_script_enabled=getattr(request, "param", False))
    tab = await context.new_page()
    tab.set_default_timeout(10_000)
    dialogs: list[str] = []
    tab.on("dialog", lambda d: dialogs.append(d.message))
    tab.dialogs = dialogs
    try:
        yield tab
    finally:
        try:  # the page as it was when the test ended
            await shots.take(tab, "last")
        finally:
            await context.close()


async def start(relay_factory: RelayFactory, tmp_path: Path, url: str) -> App:
    cfg = make_config(tmp_path, downstream=(DownstreamConfig(name="billing", url=url),))
    cfg = dataclasses.replace(cfg, entitlements={"premium.monthly": ("premium",)})
    return await relay_factory(cfg, use_clock=True)


async def sign_in(page: Any, client: App, shots: Shots, path: str = "/") -> None:
    await page.goto(str(client.make_url(BASE + path)))
    await shots.take(page, "sign-in")
    assert "/signin" in page.url
    await page.fill("#secret", ADMIN_TOKEN)
    await page.click("button:has-text('Sign in')")
    await page.wait_for_url(f"**{BASE}{path}")


async def click(page: Any, shots: Shots, selector: str, name: str) -> None:
    """Click (a link or a form's button) and wait for the page it leads to."""
    await page.click(selector)
    await page.wait_for_load_state()
    await shots.take(page, name)


async def test_operator_signs_in_retries_a_failing_delivery_pauses_looks_up_and_signs_out(
        relay_factory: RelayFactory, tmp_path: Path, receiver: DownstreamReceiver,
        receiver_url: str, page: Any, shots: Shots) -> None:
    from playwright.async_api import expect

    client = await start(relay_factory, tmp_path, receiver_url)
    receiver.reply_next(500, times=100)  # the app is down
    await verified(client, "apple", "2000000111", user_id="user-7")
    await outbox_of(client).settle()

    await sign_in(page, client, shots)
    await shots.take(page, "overview")
    row = page.locator("table.grid tr", has_text="billing")
    await expect(row).to_contain_text("active")
    await expect(row).to_contain_text("HTTP 500")  # the endpoint's last error

    await click(page, shots, "a:text-is('billing')", "endpoint")
    await click(page, shots, "p.filters a:text-is('failed')", "failed deliveries")
    failing = page.locator("table.grid tbody tr")
    await expect(failing).to_have_count(1)
    await expect(failing).to_contain_text("subscription.purchased")
    await expect(failing).to_contain_text("HTTP 500")

    await click(page, shots, "table.grid tbody tr td.num a", "delivery")
    await expect(page.locator("h1")).to_contain_text("pending")
    await expect(page.locator("table.grid")).to_contain_text("HTTP 500")

    receiver.replies.clear()  # the app is back
    await click(page, shots, "button:has-text('Retry now')", "retried")
    await expect(page.locator(".flash")).to_contain_text("sent again now")
    await outbox_of(client).settle()
    await page.reload()
    await shots.take(page, "delivered")
    await expect(page.locator("h1")).to_contain_text("delivered")
    await expect(page.locator("table.grid")).to_contain_text("HTTP 200")
    assert receiver.received[-1].signature_ok

    await click(page, shots, ".crumbs a:text-is('billing')", "endpoint again")
    await click(page, shots, "button:has-text('Pause')", "paused")
    await expect(page.locator(".flash")).to_contain_text("Paused")
    await expect(page.locator("h1 .badge")).to_have_text("paused")
    assert "billing" in client.app[RUNTIME_KEY].paused
    await click(page, shots, "button:has-text('Resume')", "resumed")
    await expect(page.locator(".flash")).to_contain_text("Resumed")
    await expect(page.locator("h1 .badge")).to_have_text("active")
    assert "billing" not in client.app[RUNTIME_KEY].paused

    await click(page, shots, "header nav a:text-is('Purchases')", "lookup")
    await page.select_option("#platform", "apple")
    await page.fill("#key", "2000000111")
    await click(page, shots, "form:has(#key) button", "purchase")
    await expect(page.locator("h1")).to_contain_text("apple purchase")
    await expect(page.locator("#purchase")).to_contain_text("user-7")
    await expect(page.locator("#entitlements")).to_contain_text("entitled now")
    await expect(page.locator("#events")).to_contain_text("subscription.purchased")
    history = page.locator("#history table.grid tbody tr")
    await expect(history).to_have_count(1)  # the verify
    await expect(history).to_contain_text("verify")
    await expect(history).to_contain_text("new → active")
    await expect(page.locator("#explain")).to_contain_text(
        "user-7 has premium: apple purchase 2000000111 (premium.monthly) is active")
    await expect(page.locator("#transactions")).to_contain_text("No transaction")
    await click(page, shots, "#history tbody td.num a", "input")
    await expect(page.locator("h1")).to_contain_text("verify")
    await page.go_back()

    await click(page, shots, "header nav a:text-is('Purchases')", "lookup by user")
    await page.fill("#user", "user-7")
    await click(page, shots, "form:has(#user) button", "user purchases")
    await expect(page.locator("table.grid")).to_contain_text("apple:2000000111")
    await expect(page.locator("#explain .explain")).to_contain_text("granted")
    await expect(page.locator("#explain")).to_contain_text("user-7 has premium")

    await click(page, shots, "button:has-text('Sign out')", "signed out")
    await expect(page.locator(".flash")).to_contain_text("Signed out")
    await page.goto(str(client.make_url(BASE + "/")))
    assert "/signin" in page.url
    assert page.dialogs == []


HOSTILE = '<script>alert("pwned")</script><img src=x onerror="alert(2)">'


@pytest.mark.parametrize("page", [True], indirect=True, ids=["javascript-on"])
async def test_a_script_in_a_purchase_shows_as_text(
        relay_factory: RelayFactory, tmp_path: Path, page: Any, shots: Shots) -> None:
    from playwright.async_api import expect

    client = await start(relay_factory, tmp_path, "http://127.0.0.1:9/hook")
    await verified(client, "google", "tok" + HOSTILE, user_id="u" + HOSTILE,
                   product_id="p" + HOSTILE, package_name=HOSTILE,
                   note=InputNote(store_type=HOSTILE, raw='{"p": "' + HOSTILE + '"}'))
    await sign_in(page, client, shots, "/purchases")
    await page.fill("#user", "u" + HOSTILE)
    await click(page, shots, "form:has(#user) button", "user purchases")
    explain = page.locator("#explain")  # the product maps to no key: explain says so
    await expect(explain).to_contain_text("u" + HOSTILE + " does not have premium")
    await expect(explain).to_contain_text("p" + HOSTILE + " grants []")
    assert await page.evaluate("document.scripts.length") == 0
    await click(page, shots, "table.grid tbody a", "hostile purchase")
    facts = page.locator("#purchase dl")
    await expect(facts).to_contain_text("u" + HOSTILE)  # shown as the text it is
    await expect(facts).to_contain_text("p" + HOSTILE)
    body = page.locator("#events pre").first  # the event body, JSON-encoded
    await expect(body).to_contain_text('"p<script>alert(\\"pwned', use_inner_text=False)
    await expect(page.locator("#history tbody")).to_contain_text(HOSTILE)  # the store's word
    assert await page.evaluate("document.scripts.length") == 0
    await click(page, shots, "#history tbody td.num a", "hostile input")
    await expect(page.locator("pre.json")).to_contain_text('{"p": "' + HOSTILE + '"}')
    assert await page.evaluate("document.scripts.length") == 0
    assert await page.evaluate("document.images.length") == 0
    assert await page.title() != "pwned"
    assert page.dialogs == []


async def test_an_action_without_the_csrf_token_is_refused(
        relay_factory: RelayFactory, tmp_path: Path, page: Any, shots: Shots,
        aiohttp_server: Any) -> None:
    from playwright.async_api import expect

    client = await start(relay_factory, tmp_path, "http://127.0.0.1:9/hook")
    await emit(client, "1000001")
    await sign_in(page, client, shots, "/endpoints/billing")
    # The form as served, with its CSRF field taken out before it is sent.
    await page.evaluate("document.querySelector(\"form[action$='/pause'] input[name=csrf]\")"
                        ".remove()")
    await click(page, shots, "button:has-text('Pause')", "refused")
    await expect(page.locator("h1")).to_have_text("403")
    await expect(page.locator(".error")).to_contain_text("CSRF token")
    assert "billing" not in client.app[RUNTIME_KEY].paused

    # A page on another site that posts the same form, token included: the browser does
    # not send the SameSite=Strict cookie, and relay refuses.
    await page.goto(str(client.make_url(BASE + "/endpoints/billing")))
    csrf = await page.get_attribute("form[action$='/pause'] input[name=csrf]", "value")
    target = str(client.make_url(BASE + "/endpoints/billing/pause"))

    async def attack(request: web.Request) -> web.Response:
        return web.Response(content_type="text/html", text=(
            f'<form method="post" action="{target}"><input type="hidden" name="csrf" '
            f'value="{csrf}"><button>Win a prize</button></form>'))

    evil = web.Application()
    evil.router.add_get("/", attack)
    server = await aiohttp_server(evil, host="127.0.0.2")  # another site than 127.0.0.1
    await page.goto(str(server.make_url("/")))
    await click(page, shots, "button", "cross-site post")
    await expect(page.locator("h1")).to_have_text("403")
    assert "billing" not in client.app[RUNTIME_KEY].paused
