"""The console's purchase page and user lookup with issue 18's answers: the purchase's
history (paged by the route's cursor), its transactions, and explain for its user; a
user's purchases and explain; each input's exact body. Everything escaped, and signed-in
browsers only."""

from __future__ import annotations

import dataclasses
import html
import re
from pathlib import Path
from urllib.parse import urlencode

import pytest

from relay.config import DownstreamConfig
from relay.core.domain import InputNote, Snapshot, State, TxnFact
from relay.store import pipeline
from relay.store.models import InputLog
from relay.web.appkeys import RUNTIME_KEY, STORE_KEY
from relay.web.console.plumbing import PAGE_SIZE
from relay.web.console.queries import TRANSACTIONS_SHOWN
from tests.conftest import Clock, RelayFactory, make_config
from tests.support.console import BASE, shown_as_text, signed_in, text_of, verified
from tests.support.outbox import App, emit, now_clock

HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>'
DAY_MS = 86_400_000


@pytest.fixture
def clock() -> Clock:
    return now_clock()


async def start(relay_factory: RelayFactory, tmp_path: Path) -> App:
    cfg = make_config(tmp_path, downstream=(DownstreamConfig(name="billing",
                                                             url="http://127.0.0.1:9/h"),))
    cfg = dataclasses.replace(cfg, entitlements={"premium.monthly": ("premium",)})
    return await relay_factory(cfg, use_clock=True)


async def inputs(client: App, key: str, n: int, *, user_id: str = "u1",
                 note: InputNote | None = None) -> None:
    """`n` verifies of one Apple purchase, each naming a new transaction (a ledger row)."""
    runtime, store = client.app[RUNTIME_KEY], client.app[STORE_KEY]
    now = runtime.now_ms()
    snaps = [Snapshot(
        platform="apple", subject_key=key, source="verify", observed_ms=now + i,
        received_ms=now + i, kind="subscription", product_id="premium.monthly",
        state=State.ACTIVE, expires_ms=now + (30 + i) * DAY_MS, environment="production",
        user_id=user_id, event_type="subscription.renewed" if i else "subscription.purchased",
        note=note, transactions=(TxnFact(f"{key}-t{i}", "premium.monthly", now + i,
                                         now + (30 + i) * DAY_MS, 9_990_000, "USD",
                                         observed_ms=now + i),))
        for i in range(n)]
    await store.write(lambda: [pipeline.apply(s, runtime.rules, now) for s in snaps])


def purchase_url(key: str, **extra: int) -> str:
    return f"{BASE}/purchase?{urlencode({'platform': 'apple', 'key': key, **extra})}"


def section_html(page: str, name: str) -> str:
    found = re.search(rf'<section id="{name}">(.*?)</section>', page, re.S)
    assert found, f"no section {name}"
    return found.group(1)


def section(page: str, name: str) -> str:
    """The visible text of one section of the page."""
    return html.unescape(text_of(section_html(page, name)))


def input_ids(page: str) -> list[int]:
    """The inputs the history section links to, in order."""
    return [int(n) for n in re.findall(r'purchase/input\?[^"]*id=(\d+)"',
                                       section_html(page, "history"))]


async def test_purchase_page_shows_history_transactions_and_explain(
        relay_factory: RelayFactory, tmp_path: Path) -> None:
    client = await start(relay_factory, tmp_path)
    await inputs(client, "2000000111", 2)
    await emit(client, "2000000111")  # a webhook: DID_RENEW, through the transition table
    await signed_in(client)
    page = await (await client.get(purchase_url("2000000111"))).text()
    history = section(page, "history")
    assert "verify" in history and "subscription.purchased" in history
    assert "new → active" in history and "active → active" in history
    assert "the store's answer" in history
    assert "webhook" in history and "transition table; state unchanged" in history
    assert "Next inputs" not in history and "From the first input" not in history
    txns = section(page, "transactions")
    assert "2000000111-t0" in txns and "2000000111-t1" in txns and "9.99 USD" in txns
    explain = section(page, "explain")
    assert "granted" in explain and "not granted" not in explain
    assert "u1 has premium: apple purchase 2000000111 (premium.monthly) is active" in explain


async def test_history_is_paged_with_the_routes_cursor(relay_factory: RelayFactory,
                                                       tmp_path: Path) -> None:
    client = await start(relay_factory, tmp_path)
    await inputs(client, "2000000222", PAGE_SIZE + 3)
    await signed_in(client)
    ids = sorted(r.id for r in await client.app[STORE_KEY].read(lambda: list(InputLog.select(
        InputLog.id).where(InputLog.subject_key == "2000000222"))))
    first = await (await client.get(purchase_url("2000000222"))).text()
    assert input_ids(first) == ids[:PAGE_SIZE]
    nxt = re.search(r'href="([^"]*after=(\d+))#history">Next inputs', first)
    assert nxt and int(nxt.group(2)) == ids[PAGE_SIZE - 1]
    second = await (await client.get(html.unescape(nxt.group(1)))).text()
    assert input_ids(second) == ids[PAGE_SIZE:]
    assert "Next inputs" not in second and "From the first input" in second
    past = await (await client.get(purchase_url("2000000222", after=ids[-1]))).text()
    assert f"No input after #{ids[-1]}" in section(past, "history")


async def test_transactions_are_the_newest_ones(relay_factory: RelayFactory,
                                                tmp_path: Path) -> None:
    client = await start(relay_factory, tmp_path)
    await inputs(client, "2000000999", TRANSACTIONS_SHOWN + 2)
    await signed_in(client)
    txns = section(await (await client.get(purchase_url("2000000999"))).text(),
                   "transactions")
    shown = [int(n) for n in re.findall(r"2000000999-t(\d+)", txns)]
    assert shown == list(range(2, TRANSACTIONS_SHOWN + 2))  # oldest first, the newest 100
    assert f"The newest {TRANSACTIONS_SHOWN}" in txns


async def test_empty_history_and_no_transactions(relay_factory: RelayFactory,
                                                 tmp_path: Path) -> None:
    client = await start(relay_factory, tmp_path)
    await verified(client, "apple", "2000000333", user_id="u3")  # names no transaction
    await client.app[STORE_KEY].write(lambda: InputLog.delete().execute())  # pruned
    await signed_in(client)
    resp = await client.get(purchase_url("2000000333"))
    assert resp.status == 200
    page = await resp.text()
    assert "No input is on record" in section(page, "history")
    assert "No transaction is on record" in section(page, "transactions")
    assert "u3 has premium" in section(page, "explain")  # its state set by no logged input
    assert "no logged input" in section(page, "explain")


async def test_explain_without_a_user_or_a_key(relay_factory: RelayFactory,
                                               tmp_path: Path) -> None:
    client = await start(relay_factory, tmp_path)
    await verified(client, "apple", "2000000444", user_id="u4", product_id="other")
    await signed_in(client)
    page = await (await client.get(purchase_url("2000000444"))).text()
    assert "grants no entitlement key" in section(page, "explain")


@pytest.mark.parametrize("path", [
    purchase_url("nope"),
    f"{BASE}/purchase?platform=amazon&key=x",
    f"{BASE}/purchase/input?platform=apple&key=nope&id=1",
])
async def test_unknown_purchase_or_input_is_404(relay_factory: RelayFactory, tmp_path: Path,
                                                path: str) -> None:
    client = await start(relay_factory, tmp_path)
    await signed_in(client)
    resp = await client.get(path)
    assert resp.status == 404


async def test_an_input_shows_only_under_its_own_purchase(relay_factory: RelayFactory,
                                                          tmp_path: Path) -> None:
    client = await start(relay_factory, tmp_path)
    await inputs(client, "2000000555", 1, note=InputNote(raw='{"signedPayload": "abc"}'))
    await inputs(client, "2000000666", 1)
    await signed_in(client)
    [i] = await client.app[STORE_KEY].read(lambda: list(InputLog.select(InputLog.id).where(
        InputLog.subject_key == "2000000555")))
    own = await client.get(f"{BASE}/purchase/input?platform=apple&key=2000000555&id={i.id}")
    assert own.status == 200
    assert '{"signedPayload": "abc"}' in html.unescape(await own.text())
    other = await client.get(f"{BASE}/purchase/input?platform=apple&key=2000000666&id={i.id}")
    assert other.status == 404


async def test_user_lookup_shows_purchases_and_explain(relay_factory: RelayFactory,
                                                       tmp_path: Path) -> None:
    client = await start(relay_factory, tmp_path)
    await inputs(client, "2000000777", 1, user_id="u7")
    await verified(client, "google", "tok-7", user_id="u7", state=State.EXPIRED,
                   expires_in_s=-86_400)
    await signed_in(client)
    page = await (await client.get(f"{BASE}/purchases", params={"user": "u7"})).text()
    listed = section(page, "user-purchases")
    assert "apple:2000000777" in listed and "google:tok-7" in listed
    assert "entitled now" in listed and "not entitled now" in listed
    explain = section(page, "explain")
    assert "u7 has premium: apple purchase 2000000777" in explain
    assert "google purchase tok-7 (premium.monthly) expired at" in explain


async def test_user_with_no_purchases(relay_factory: RelayFactory, tmp_path: Path) -> None:
    client = await start(relay_factory, tmp_path)
    await signed_in(client)
    resp = await client.get(f"{BASE}/purchases", params={"user": "nobody"})
    assert resp.status == 200
    page = await resp.text()
    assert "No purchase is bound to this user" in section(page, "user-purchases")
    assert ("nobody does not have premium: relay knows no purchase of this user"
            in section(page, "explain"))
    long = await client.get(f"{BASE}/purchases", params={"user": "u" * 257})
    assert long.status == 400


async def test_history_and_explain_are_escaped(relay_factory: RelayFactory,
                                               tmp_path: Path) -> None:
    client = await start(relay_factory, tmp_path)
    note = InputNote(store_type=HOSTILE, store_subtype=HOSTILE, ref=HOSTILE,
                     raw='{"payload": "' + HOSTILE.replace('"', '\\"') + '"}')
    await inputs(client, "2000000888", 1, user_id="u" + HOSTILE, note=note)
    await signed_in(client)
    [i] = await client.app[STORE_KEY].read(lambda: list(InputLog.select(InputLog.id).where(
        InputLog.subject_key == "2000000888")))
    pages = [await client.get(purchase_url("2000000888")),
             await client.get(f"{BASE}/purchases", params={"user": "u" + HOSTILE}),
             await client.get(f"{BASE}/purchase/input?platform=apple&key=2000000888"
                              f"&id={i.id}")]
    for resp in pages:
        await shown_as_text(resp)
    page = await pages[0].text()
    assert HOSTILE in section(page, "history")  # the store's word, as the text it is
    assert "u" + HOSTILE + " has premium" in section(page, "explain")
    assert '"payload": "<script>alert(\\"x\\")' in html.unescape(await pages[2].text())


@pytest.mark.parametrize("path", [purchase_url("2000000111"), purchase_url("2000000111",
                                                                          after=5),
                                  f"{BASE}/purchases?user=u1",
                                  f"{BASE}/purchase/input?platform=apple&key=x&id=1"])
async def test_signed_out_goes_to_sign_in(relay_factory: RelayFactory, tmp_path: Path,
                                          path: str) -> None:
    client = await start(relay_factory, tmp_path)
    await inputs(client, "2000000111", 1)
    resp = await client.get(path, allow_redirects=False)
    assert resp.status == 303
    assert resp.headers["Location"] == f"{BASE}/signin?{urlencode({'next': path})}"
    assert "2000000111-t0" not in await resp.text()
