"""The console's purchase lookup: by platform and subject key (the purchase page: its row,
entitlements, history, transactions, explain, relayed events and deliveries), by user id
(the user's purchases and explain), and one input's exact body. Each page is one
`store.read` through `queries`, which asks the functions the history routes and
`relay explain` use.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlencode

from aiohttp import web

from relay.core.domain import PLATFORMS, entitlement_keys, is_entitled
from relay.core.history import InputView
from relay.verify.requests import USER_ID_MAX
from relay.web.appkeys import RUNTIME_KEY, STORE_KEY
from relay.web.console import queries
from relay.web.console.plumbing import (
    PAGE_SIZE,
    Signed,
    console_state,
    flash_message,
    int_param,
    page,
    redirect,
    render_page,
)

CURSOR_MAX = 2**62
_RULES = {"verify": "the store's answer", "restore": "the store's answer",
          "poll": "the store's answer", "reprojection": "relay reproject",
          "admin": "an admin action", "baseline": "the row before the log began"}


def rule_of(i: InputView) -> str:
    """What decided the state an input left, in words: the transition table for a
    webhook's event (`core.transitions`), the store's own answer for a verify, restore or
    re-poll, relay itself for the rest."""
    if i.source == "webhook":
        said = "transition table" if i.event_type else "no lifecycle news"
    else:
        said = _RULES.get(i.source, i.source)
    return said if i.state_before != i.state_after else f"{said}; state unchanged"


def _lookup_form(request: web.Request, signed: Signed, status: int, error: str,
                 platform: str = "", key: str = "", user: str = "") -> web.Response:
    return render_page(request, "purchases.html", status=status, signed=signed, message=None,
                       error=error, platform=platform, key=key, user=user, user_page=None,
                       purchases=[])


@page
async def handle_purchases(request: web.Request, signed: Signed) -> web.StreamResponse:
    """The lookup form; by user id, the user's purchases and explain for the user."""
    app = request.config_dict
    runtime, store = app[RUNTIME_KEY], app[STORE_KEY]
    q = request.query
    platform, key, user = q.get("platform", ""), q.get("key", "").strip(), q.get("user", "")
    if key:
        if platform not in PLATFORMS:
            return _lookup_form(request, signed, 400, "Choose apple or google.", platform,
                                key)
        base = console_state(request).base
        return redirect(f"{base}/purchase?{urlencode({'platform': platform, 'key': key})}")
    user = user.strip()
    if len(user) > USER_ID_MAX:
        return _lookup_form(request, signed, 400,
                            f"A user id has at most {USER_ID_MAX} characters.")
    data = None
    rows = []
    if user:
        now_ms, rules = runtime.now_ms(), runtime.rules
        data = await store.read(lambda: queries.user_page(user, rules, now_ms))
        for v in data.purchases:  # as GET /v1/users/{id}/purchases reports each
            keys = entitlement_keys(rules.entitlements, v.product_id, v.base_plan_id)
            rows.append((v, keys, v.user_id == user and is_entitled(
                v, now_ms, rules.entitlement_policy)))
    return render_page(request, "purchases.html", signed=signed, message=None, error=None,
                       platform=platform, key=key, user=user, user_page=data, purchases=rows)


@dataclass(frozen=True, slots=True)
class PurchaseSection:
    """One section of the purchase page: its title and template (its data is a field of
    `queries.PurchasePage`, read by `queries.purchase_page`)."""

    id: str
    title: str
    template: str


PURCHASE_SECTIONS: tuple[PurchaseSection, ...] = (
    PurchaseSection("purchase", "Stored row", "purchase_row.html"),
    PurchaseSection("entitlements", "Entitlements", "purchase_entitlements.html"),
    PurchaseSection("explain", "Explain", "purchase_explain.html"),
    PurchaseSection("history", "History", "purchase_history.html"),
    PurchaseSection("transactions", "Transactions", "purchase_transactions.html"),
    PurchaseSection("events", "Relayed events", "purchase_events.html"),
    PurchaseSection("deliveries", "Deliveries", "purchase_deliveries.html"),
)


def _purchase_of(request: web.Request) -> tuple[str, str]:
    platform, key = request.query.get("platform", ""), request.query.get("key", "")
    if platform not in PLATFORMS or not key:
        raise web.HTTPNotFound(reason="Give a platform (apple or google) and a subject key.")
    return platform, key


@page
async def handle_purchase(request: web.Request, signed: Signed) -> web.StreamResponse:
    app = request.config_dict
    runtime, store = app[RUNTIME_KEY], app[STORE_KEY]
    platform, key = _purchase_of(request)
    after = int_param(request, "after", 0, 0, CURSOR_MAX)  # the history's cursor
    now_ms, rules = runtime.now_ms(), runtime.rules
    data = await store.read(
        lambda: queries.purchase_page(platform, key, now_ms, rules, after, PAGE_SIZE))
    if data is None:
        return _lookup_form(request, signed, 404,
                            "No purchase with that platform and subject key.", platform, key)
    view = data.purchase
    return render_page(request, "purchase.html", signed=signed, message=flash_message(request),
                       p=view, data=data, sections=PURCHASE_SECTIONS, after=after,
                       page_size=PAGE_SIZE, rule_of=rule_of,
                       keys=entitlement_keys(rules.entitlements, view.product_id,
                                             view.base_plan_id),
                       entitled=is_entitled(view, now_ms, rules.entitlement_policy))


@page
async def handle_input(request: web.Request, signed: Signed) -> web.StreamResponse:
    """One input of a purchase's history, with the exact body relay received."""
    platform, key = _purchase_of(request)
    input_id = int_param(request, "id", 0, 0, CURSOR_MAX)
    found = await request.config_dict[STORE_KEY].read(
        lambda: queries.purchase_input(platform, key, input_id))
    if found is None:
        raise web.HTTPNotFound(reason=f"This purchase has no input {input_id}.")
    return render_page(request, "purchase_input.html", signed=signed, message=None,
                       i=found, platform=platform, key=key)
