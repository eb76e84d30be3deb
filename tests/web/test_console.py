"""The admin console over HTTP (no browser): sign-in, sessions, CSRF, headers, escaping,
what each page shows, and the actions. tests/test_console_browser.py drives Chromium."""

from __future__ import annotations

import dataclasses
import html
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from relay.config import ConfigError, DownstreamConfig, Secret, load_config
from relay.core.domain import State
from relay.outbox.receiver import DownstreamReceiver
from relay.store.models import ConsoleSession, Delivery
from relay.web.appkeys import OUTBOX_KEY, RUNTIME_KEY, STORE_KEY
from relay.web.console.plumbing import CSP
from tests.conftest import ADMIN_TOKEN, Clock, RelayFactory, make_config
from tests.support.console import BASE, form, shown_as_text, sign_in, signed_in, text_of, verified
from tests.support.outbox import App, deliveries, emit, now_clock, outbox_of
from tests.support.webhooks import PATH

PASSWORD = "correct horse battery staple"


@pytest.fixture
def clock() -> Clock:
    return now_clock()


def config(tmp_path: Path, url: str = "http://127.0.0.1:9/hook", **sections: Any) -> Any:
    cfg = make_config(tmp_path, downstream=(DownstreamConfig(name="billing", url=url),),
                      **sections)
    creds = dataclasses.replace(cfg.credentials, console_password=Secret(PASSWORD))
    return dataclasses.replace(cfg, credentials=creds)


async def start(relay_factory: RelayFactory, tmp_path: Path, url: str = "http://127.0.0.1:9/hook",
                **sections: Any) -> App:
    return await relay_factory(config(tmp_path, url, **sections), use_clock=True)


# ---- switched on and off -------------------------------------------------------------


async def test_console_is_off_without_the_admin_token(relay_factory: RelayFactory,
                                                      tmp_path: Path) -> None:
    cfg = config(tmp_path)
    cfg = dataclasses.replace(cfg, credentials=dataclasses.replace(cfg.credentials,
                                                                   admin_token=None))
    client = await relay_factory(cfg)
    for method, path in [("GET", f"{BASE}/"), ("GET", f"{BASE}/signin"),
                         ("POST", f"{BASE}/signin")]:
        resp = await client.request(method, path, data={"secret": PASSWORD},
                                    allow_redirects=False)
        assert resp.status == 503
        assert "admin-token" in await resp.text()
        assert "relay_console" not in resp.headers.get("Set-Cookie", "")


async def test_console_can_be_switched_off_and_moved(relay_factory: RelayFactory,
                                                     tmp_path: Path) -> None:
    off = await relay_factory(config(tmp_path, console={"enabled": False}))
    assert (await off.get(f"{BASE}/signin")).status == 404
    moved = await relay_factory(config(tmp_path / "b", console={"path": "/ops/relay"}))
    assert (await moved.get(f"{BASE}/signin")).status == 404
    resp = await moved.get("/ops/relay/signin")
    assert resp.status == 200
    assert 'action="/ops/relay/signin"' in await resp.text()
    resp = await moved.get("/ops/relay", allow_redirects=False)
    assert (resp.status, resp.headers["Location"]) == (308, "/ops/relay/")


@pytest.mark.parametrize("path", ["/v1/admin", "/metrics", "/healthz/x", "console", "/c/",
                                  "/a/../b", "/v1/webhooks"])
def test_console_path_must_be_a_free_absolute_path(path: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, environ={"RELAY_CONSOLE__PATH": path})
    assert "[console] path" in str(err.value)


def test_console_password_must_be_long_enough() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, environ={"RELAY_CREDENTIAL_CONSOLE_PASSWORD": "short"})
    assert "console-password" in str(err.value)
    cfg = load_config(None, environ={"RELAY_CREDENTIAL_CONSOLE_PASSWORD": PASSWORD})
    assert cfg.credentials.console_password == Secret(PASSWORD)


# ---- sign-in, sessions ---------------------------------------------------------------


async def test_pages_need_a_session_and_sign_in_returns_to_them(
        relay_factory: RelayFactory, tmp_path: Path) -> None:
    client = await start(relay_factory, tmp_path)
    resp = await client.get(f"{BASE}/endpoints/billing", allow_redirects=False)
    assert resp.status == 303
    assert resp.headers["Location"] == f"{BASE}/signin?next=%2Fconsole%2Fendpoints%2Fbilling"
    resp = await client.post(f"{BASE}/signin", allow_redirects=False, data={
        "secret": ADMIN_TOKEN, "next": f"{BASE}/endpoints/billing"})
    assert (resp.status, resp.headers["Location"]) == (303, f"{BASE}/endpoints/billing")
    assert (await client.get(f"{BASE}/endpoints/billing")).status == 200


@pytest.mark.parametrize("secret", [ADMIN_TOKEN, PASSWORD])
async def test_sign_in_sets_a_strict_http_only_session_cookie(
        relay_factory: RelayFactory, tmp_path: Path, secret: str) -> None:
    client = await start(relay_factory, tmp_path)
    resp = await sign_in(client, secret)
    assert resp.status == 303
    cookie = resp.cookies["relay_console"]
    assert cookie["httponly"] and cookie["samesite"] == "Strict"
    assert cookie["path"] == f"{BASE}/"
    assert not cookie["secure"]  # plain HTTP straight from loopback (an SSH tunnel)
    assert int(cookie["max-age"]) == 28_800
    # The store keeps the HMAC of the token under the credential, never the token.
    rows = await client.app[STORE_KEY].read(lambda: list(ConsoleSession.select().dicts()))
    assert len(rows) == 1 and cookie.value not in str(rows)


async def test_cookie_is_secure_behind_an_https_proxy_and_plain_http_over_a_network_is_refused(
        relay_factory: RelayFactory, tmp_path: Path) -> None:
    client = await start(relay_factory, tmp_path)
    resp = await sign_in(client, headers={"X-Forwarded-Proto": "https",
                                          "X-Forwarded-For": "203.0.113.9"})
    assert resp.status == 303
    assert resp.cookies["relay_console"]["secure"]
    # A proxy that forwards plain HTTP: the cookie would cross the network in clear.
    resp = await sign_in(client, headers={"X-Forwarded-For": "203.0.113.9"})
    assert resp.status == 403
    assert "relay_console" not in resp.cookies
    assert "SSH tunnel" in await resp.text()


async def test_wrong_secret_is_refused_and_failed_sign_ins_are_rate_limited(
        relay_factory: RelayFactory, tmp_path: Path, clock: Clock) -> None:
    client = await start(relay_factory, tmp_path,
                         console={"max_failed_signins": 3, "failed_signin_window_s": 600})
    for _ in range(3):
        resp = await sign_in(client, "not-the-token")
        assert resp.status == 401
        assert "relay_console" not in resp.cookies
    # The limit holds even for the right secret: a guesser learns nothing more.
    resp = await sign_in(client)
    assert resp.status == 429
    assert 0 < int(resp.headers["Retry-After"]) <= 600
    assert "relay_console" not in resp.cookies
    # Another client address (behind a local proxy) has its own count.
    other = {"X-Forwarded-For": "198.51.100.7", "X-Forwarded-Proto": "https"}
    assert (await sign_in(client, headers=other)).status == 303
    clock.advance(601)
    assert (await sign_in(client)).status == 303


async def test_all_clients_together_are_limited_too(relay_factory: RelayFactory,
                                                    tmp_path: Path) -> None:
    client = await start(relay_factory, tmp_path, console={"max_failed_signins": 1})
    for i in range(10):  # 10 addresses, one failure each: the global budget (10 x 1)
        headers = {"X-Forwarded-For": f"198.51.100.{i}", "X-Forwarded-Proto": "https"}
        assert (await sign_in(client, "wrong", headers=headers)).status == 401
    headers = {"X-Forwarded-For": "198.51.100.99", "X-Forwarded-Proto": "https"}
    assert (await sign_in(client, headers=headers)).status == 429


async def test_sign_out_ends_the_session_on_the_server(relay_factory: RelayFactory,
                                                       tmp_path: Path) -> None:
    client = await start(relay_factory, tmp_path)
    resp = await sign_in(client)
    token = resp.cookies["relay_console"].value
    page = await client.get(f"{BASE}/")
    csrf = form(await page.text(), f"{BASE}/signout")["csrf"]
    resp = await client.post(f"{BASE}/signout", data={"csrf": csrf}, allow_redirects=False)
    assert (resp.status, resp.headers["Location"]) == (303, f"{BASE}/signin?msg=signed_out")
    assert resp.cookies["relay_console"].value == ""
    # A copy of the old cookie no longer works: the session is gone from the store.
    client.session.cookie_jar.clear()
    resp = await client.get(f"{BASE}/", cookies={"relay_console": token},
                            allow_redirects=False)
    assert resp.status == 303 and "/signin" in resp.headers["Location"]
    assert await client.app[STORE_KEY].read(lambda: ConsoleSession.select().count()) == 0


async def test_session_expires(relay_factory: RelayFactory, tmp_path: Path,
                               clock: Clock) -> None:
    client = await start(relay_factory, tmp_path, console={"session_ttl_s": 60})
    await signed_in(client)
    clock.advance(59)
    assert (await client.get(f"{BASE}/", allow_redirects=False)).status == 200
    clock.advance(2)
    resp = await client.get(f"{BASE}/", allow_redirects=False)
    assert resp.status == 303 and "/signin" in resp.headers["Location"]


async def test_rotating_the_admin_token_ends_its_sessions(relay_factory: RelayFactory,
                                                          tmp_path: Path) -> None:
    client = await start(relay_factory, tmp_path)
    await signed_in(client)
    runtime = client.app[RUNTIME_KEY]
    cfg = runtime.config
    runtime.replace(dataclasses.replace(cfg, credentials=dataclasses.replace(
        cfg.credentials, admin_token=Secret("a-brand-new-admin-token"))))
    resp = await client.get(f"{BASE}/", allow_redirects=False)
    assert resp.status == 303 and "/signin" in resp.headers["Location"]


async def test_after_sign_in_only_console_paths_are_followed(relay_factory: RelayFactory,
                                                             tmp_path: Path) -> None:
    client = await start(relay_factory, tmp_path)
    for target in ["https://evil.example/", "//evil.example/console/", f"{BASE}//evil",
                   "/v1/admin/endpoints", f"{BASE}/signin", f"{BASE}/\r\nX-Evil: 1"]:
        resp = await client.post(f"{BASE}/signin", allow_redirects=False,
                                 data={"secret": ADMIN_TOKEN, "next": target})
        assert resp.headers["Location"] == f"{BASE}/", target


# ---- headers, CSRF, escaping ---------------------------------------------------------


async def test_every_answer_carries_the_security_headers(relay_factory: RelayFactory,
                                                         tmp_path: Path) -> None:
    client = await start(relay_factory, tmp_path)
    answers = [await client.get(f"{BASE}/signin"), await sign_in(client, "wrong")]
    await signed_in(client)
    answers += [await client.get(f"{BASE}/"), await client.get(f"{BASE}/deliveries/999"),
                await client.get(f"{BASE}/static/console.css")]
    for resp in answers:
        h = resp.headers
        assert h["Content-Security-Policy"] == CSP
        assert "script-src" not in CSP and "default-src 'none'" in CSP  # no script at all
        assert h["X-Content-Type-Options"] == "nosniff"
        assert h["X-Frame-Options"] == "DENY"
        assert h["Referrer-Policy"] == "no-referrer"
    assert answers[-2].status == 404
    assert answers[2].headers["Cache-Control"] == "no-store"


async def test_actions_without_the_right_csrf_token_are_refused(
        relay_factory: RelayFactory, tmp_path: Path) -> None:
    client = await start(relay_factory, tmp_path)
    csrf = await signed_in(client)
    path = f"{BASE}/endpoints/billing/pause"
    for data, headers in [({}, {}), ({"csrf": "forged"}, {}), ({"csrf": csrf[:-1] + "x"}, {}),
                          ({"csrf": csrf}, {"Sec-Fetch-Site": "cross-site"})]:
        resp = await client.post(path, data=data, headers=headers, allow_redirects=False)
        assert resp.status == 403
        assert "CSRF" in await resp.text()
    assert "billing" not in client.app[RUNTIME_KEY].paused
    resp = await client.post(path, data={"csrf": csrf}, allow_redirects=False)
    assert resp.status == 303
    assert "billing" in client.app[RUNTIME_KEY].paused


async def test_an_action_without_a_session_is_refused(relay_factory: RelayFactory,
                                                      tmp_path: Path) -> None:
    client = await start(relay_factory, tmp_path)
    csrf = await signed_in(client)
    client.session.cookie_jar.clear()
    resp = await client.post(f"{BASE}/endpoints/billing/pause", data={"csrf": csrf},
                             allow_redirects=False)
    assert resp.status == 403
    assert "billing" not in client.app[RUNTIME_KEY].paused


HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>'


async def _hostile_purchase(client: App) -> None:
    await verified(client, "apple", "2000000" + HOSTILE, user_id="user" + HOSTILE,
                   product_id="premium" + HOSTILE, latest_ref=HOSTILE)


async def test_purchase_data_and_event_bodies_are_escaped(relay_factory: RelayFactory,
                                                          tmp_path: Path) -> None:
    client = await start(relay_factory, tmp_path)
    await _hostile_purchase(client)
    await signed_in(client)
    pages = [await client.get(f"{BASE}/purchase", params={
        "platform": "apple", "key": "2000000" + HOSTILE}),
        await client.get(f"{BASE}/purchases", params={"user": "user" + HOSTILE}),
        await client.get(f"{BASE}/endpoints/billing")]
    rows = await deliveries(client)
    pages.append(await client.get(f"{BASE}/deliveries/{rows[0]['id']}"))
    for resp in pages:
        await shown_as_text(resp)
    assert html.unescape(text_of(await pages[0].text())).count("user" + HOSTILE) >= 1


# ---- what the pages show -------------------------------------------------------------


async def test_overview_shows_health_webhooks_queues_and_endpoint_health(
        relay_factory: RelayFactory, tmp_path: Path, receiver: DownstreamReceiver,
        receiver_url: str) -> None:
    client = await start(relay_factory, tmp_path, url=receiver_url)
    receiver.reply_next(503)
    await emit(client, "1000001")
    await outbox_of(client).settle()  # attempt 1: 503, retried later
    rows = await deliveries(client)
    await client.app[STORE_KEY].write(lambda: Delivery.update(next_attempt_ms=0).execute())
    await outbox_of(client).settle()  # attempt 2: 200
    assert (await deliveries(client))[0]["status"] == "delivered"
    await emit(client, "1000002")  # pending: the endpoint is paused below, so it stays
    await outbox_of(client).pause("billing")
    # Two refused webhooks (bad signature) and none accepted.
    for _ in range(2):
        await client.post(PATH, data=b"{}", headers={"X-Attesto-Signature": "t=1,v1=00"})
    csrf = await signed_in(client)
    assert csrf
    page = await client.get(f"{BASE}/")
    text = text_of(await page.text())
    assert "Store ok" in text
    assert "breaker closed" in text
    assert "0 accepted · 2 refused" in text
    assert "billing" in text and "paused" in text
    assert "HTTP 503" in text  # the last error
    assert f"delivery {rows[0]['id']}" not in text
    svgs = [ET.fromstring(s) for s in _svgs(await page.text())]
    assert len(svgs) == 2
    ns = "{http://www.w3.org/2000/svg}"
    ok = [r for r in svgs[1].iter(f"{ns}rect") if r.get("class") == "ok"]
    bad = [r for r in svgs[1].iter(f"{ns}rect") if r.get("class") == "bad"]
    assert len(ok) == 1 and len(bad) == 1  # one delivered, one failed attempt this minute
    refused = [r for r in svgs[0].iter(f"{ns}rect") if r.get("class") == "bad"]
    assert len(refused) == 1


def _svgs(text: str) -> list[str]:
    out, start = [], 0
    while (i := text.find("<svg", start)) >= 0:
        j = text.index("</svg>", i) + len("</svg>")
        out.append(text[i:j])
        start = j
    return out


async def test_endpoint_page_lists_deliveries_and_acts(relay_factory: RelayFactory,
                                                      tmp_path: Path,
                                                      receiver: DownstreamReceiver,
                                                      receiver_url: str) -> None:
    client = await start(relay_factory, tmp_path, url=receiver_url)
    receiver.reply_next(500, times=20)
    await emit(client, "1000001")
    await outbox_of(client).settle()
    (row,) = await deliveries(client)
    csrf = await signed_in(client)
    page = await client.get(f"{BASE}/endpoints/billing", params={"status": "failed"})
    text = await page.text()
    assert f'href="{BASE}/deliveries/{row["id"]}"' in text
    assert "HTTP 500" in text_of(text)
    # Retry one: the schedule starts over and the receiver now answers 200.
    receiver.replies.clear()
    resp = await client.post(f"{BASE}/deliveries/{row['id']}/retry", data={"csrf": csrf},
                             allow_redirects=False)
    assert resp.headers["Location"] == f"{BASE}/deliveries/{row['id']}?msg=retried"
    await outbox_of(client).settle()
    page = await client.get(f"{BASE}/deliveries/{row['id']}")
    text = text_of(await page.text())
    assert "delivered" in text and "HTTP 500" in text and "HTTP 200" in text
    # Recover since: dry run counts, the real run reopens; dead rows only.
    await client.app[STORE_KEY].write(lambda: Delivery.update(status="dead").execute())
    for dry, msg in [("1", "recover_dry"), ("", "recovered")]:
        resp = await client.post(f"{BASE}/endpoints/billing/recover", allow_redirects=False,
                                 data={"csrf": csrf, "since": "2000-01-01T00:00",
                                       "dry_run": dry})
        assert resp.headers["Location"] == f"{BASE}/endpoints/billing?msg={msg}&n=1"
    await outbox_of(client).settle()
    assert (await deliveries(client))[0]["status"] == "delivered"
    # Pause and resume.
    resp = await client.post(f"{BASE}/endpoints/billing/pause", data={"csrf": csrf},
                             allow_redirects=False)
    assert "msg=paused" in resp.headers["Location"]
    page = text_of(await (await client.get(resp.headers["Location"])).text())
    assert "Paused: 0 deliveries held" in page and "Resume" in page
    await client.post(f"{BASE}/endpoints/billing/resume", data={"csrf": csrf})
    assert "billing" not in client.app[RUNTIME_KEY].paused
    assert (await client.get(f"{BASE}/endpoints/nope")).status == 404


async def test_recover_needs_a_time(relay_factory: RelayFactory, tmp_path: Path) -> None:
    client = await start(relay_factory, tmp_path)
    csrf = await signed_in(client)
    resp = await client.post(f"{BASE}/endpoints/billing/recover",
                             data={"csrf": csrf, "since": "yesterday"})
    assert resp.status == 400


async def test_purchase_lookup_by_key_and_by_user(relay_factory: RelayFactory,
                                                  tmp_path: Path) -> None:
    cfg = config(tmp_path)
    cfg = dataclasses.replace(cfg, entitlements={"premium.monthly": ("premium",)})
    client = await relay_factory(cfg, use_clock=True)
    events = await emit(client, "1000001", count=2)
    await signed_in(client)
    resp = await client.get(f"{BASE}/purchases", allow_redirects=False,
                            params={"platform": "apple", "key": "1000001"})
    assert resp.headers["Location"] == f"{BASE}/purchase?platform=apple&key=1000001"
    page = await client.get(resp.headers["Location"])
    text = text_of(await page.text())
    assert "premium.monthly" in text and "premium" in text and "entitled now" in text
    for e in events:
        assert e.id in text  # each relayed event, from the events table
    assert text.count("subscription.renewed") >= 4  # 2 events + their 2 deliveries
    for section in ("History", "Transactions", "Explain"):  # issue 18's, in the console
        assert f"{section}</h2>" in await page.text()
    missing = await client.get(f"{BASE}/purchase", params={"platform": "apple", "key": "x"})
    assert missing.status == 404
    # By user id: the purchases bound to the user.
    await verified(client, "google", "tok-1", user_id="u-42", state=State.EXPIRED,
                   expires_in_s=-1)
    page = await client.get(f"{BASE}/purchases", params={"user": "u-42"})
    text = await page.text()
    assert f'{BASE}/purchase?platform=google&amp;key=tok-1' in text
    assert "expired" in text_of(text)
    none = await client.get(f"{BASE}/purchases", params={"user": "nobody"})
    assert "No purchase is bound" in await none.text()


async def test_static_assets_are_served_by_relay(relay_factory: RelayFactory,
                                                 tmp_path: Path) -> None:
    client = await start(relay_factory, tmp_path)
    css = await client.get(f"{BASE}/static/console.css")
    assert css.status == 200 and css.content_type == "text/css"
    assert (await client.get(f"{BASE}/static/nope.js")).status == 404
    page = await (await client.get(f"{BASE}/signin")).text()
    for ref in ("href=", "src="):
        for part in page.split(ref)[1:]:
            target = part.split('"')[1]
            assert target.startswith(BASE + "/") and "//" not in target, target


async def test_outbox_keeps_each_endpoints_last_success_and_last_error(
        relay_factory: RelayFactory, tmp_path: Path, receiver: DownstreamReceiver,
        receiver_url: str) -> None:
    client = await start(relay_factory, tmp_path, url=receiver_url)
    outbox = client.app[OUTBOX_KEY]
    from relay.outbox.admin import endpoint_health

    receiver.reply_next(502)
    await emit(client, "1000001")
    await outbox.settle()
    health = await client.app[STORE_KEY].read(endpoint_health)
    assert health["billing"]["last_error_status"] == 502
    assert health["billing"]["last_success_ms"] is None
    await emit(client, "1000002")
    await outbox.settle()
    health = await client.app[STORE_KEY].read(endpoint_health)
    assert health["billing"]["last_success_ms"] is not None  # the error stays beside it
    assert (health["billing"]["last_error"], health["billing"]["last_error_status"]) == (
        "HTTP 502", 502)


async def test_attempts_are_counted_per_minute_as_the_attempts_table_has_them(
        relay_factory: RelayFactory, tmp_path: Path, receiver: DownstreamReceiver,
        receiver_url: str, clock: Clock) -> None:
    client = await start(relay_factory, tmp_path, url=receiver_url)
    outbox, store = outbox_of(client), client.app[STORE_KEY]
    receiver.reply_next(500, times=3)
    for minute in range(3):
        await emit(client, f"100000{minute}", count=2)
        await outbox.settle()
        await store.write(lambda: Delivery.update(next_attempt_ms=0).where(
            Delivery.status == "pending").execute())
        await outbox.settle()
        clock.advance(60)

    def both() -> tuple[dict[Any, Any], dict[Any, Any]]:
        from relay.store.models import Attempt, DeliveryMinute

        counted = {(r.minute_ms, r.endpoint): (r.delivered, r.failed)
                   for r in DeliveryMinute.select()}
        kept: dict[Any, list[int]] = {}
        for a in Attempt.select():
            key = (a.started_ms // 60_000 * 60_000, "billing")
            kept.setdefault(key, [0, 0])[0 if a.status_code == 200 else 1] += 1
        return counted, {k: tuple(v) for k, v in kept.items()}

    counted, kept = await store.read(both)
    assert counted == kept
    assert sum(f for _, f in counted.values()) == 3
    assert sum(d for d, _ in counted.values()) == 6
