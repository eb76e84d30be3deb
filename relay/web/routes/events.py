"""`GET /v1/events?after=&limit=` (service key): events in commit order, to catch up by pulling.

Each event is the exact JSON body relayed downstream; `next` is the cursor to pass as
`after` next time (unchanged when there is nothing new).
"""

from __future__ import annotations

import json

from aiohttp import web

from relay.core.errors import BadRequestError
from relay.store.models import Event
from relay.web.appkeys import RUNTIME_KEY, STORE_KEY
from relay.web.auth import check_service_key

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000


def _param(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(name, "")
    if raw == "":
        return default
    # ASCII digits, and few enough for int() (it refuses 4,300) and for the store's bigint.
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 19 or not lo <= int(raw) <= hi:
        raise BadRequestError(f"{name} must be an integer from {lo} to {hi} (got {raw!r})",
                              code=f"invalid_{name}")
    return int(raw)


async def handle_events(request: web.Request) -> web.Response:
    check_service_key(request.app[RUNTIME_KEY].config, request)
    after = _param(request, "after", 0, 0, 2**62)
    limit = _param(request, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)

    def read() -> list[tuple[int, str]]:
        return [(e.cursor, e.body) for e in
                Event.select(Event.cursor, Event.body).where(Event.cursor > after)
                .order_by(Event.cursor).limit(limit)]

    rows = await request.app[STORE_KEY].read(read)
    following = rows[-1][0] if rows else after
    # The stored bodies are spliced in as they are: byte-identical to what was relayed.
    text = ('{"events":[' + ",".join(body for _, body in rows) + '],"next":'
            + json.dumps(str(following)) + "}")
    return web.Response(text=text, content_type="application/json")


def routes() -> list[web.RouteDef]:
    return [web.get("/v1/events", handle_events)]
