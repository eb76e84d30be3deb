"""A downstream receiver that records and checks what relay sends (tests, `relay demo`).

It verifies each request's Standard Webhooks signature with relay's own verifier and
can be scripted to answer with given statuses, delays or redirects.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from relay.core.signing import WebhookSignatureError, parse_secret, verify_headers


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    at: float
    signature_ok: bool

    @property
    def json(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.body)
        return value


@dataclass
class Reply:
    status: int = 200
    delay_s: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b'{"ok":true}'


@dataclass
class DownstreamReceiver:
    """Records every POST; `replies` (FIFO) overrides the default 200 for the next ones."""

    secrets: list[str] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)
    replies: deque[Reply] = field(default_factory=deque)
    path: str = "/hook"
    clock: Callable[[], float] = time.time  # signatures are checked against this time

    def __post_init__(self) -> None:
        self._arrived = asyncio.Event()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post(self.path, self._handle)
        app.router.add_post("/elsewhere", self._handle)
        return app

    def reply_next(self, status: int, times: int = 1, **kw: Any) -> None:
        for _ in range(times):
            self.replies.append(Reply(status, **kw))

    def _verify(self, headers: dict[str, str], body: bytes) -> bool:
        if not self.secrets:
            return False
        try:
            verify_headers(headers, body, [parse_secret(s) for s in self.secrets],
                           now_s=int(self.clock()))
        except WebhookSignatureError:
            return False
        return True

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {k.lower(): v for k, v in request.headers.items()}
        reply = self.replies.popleft() if self.replies else Reply()
        if reply.delay_s:
            await asyncio.sleep(reply.delay_s)
        self.received.append(Received(headers, body, time.time(), self._verify(headers, body)))
        self._arrived.set()
        return web.Response(status=reply.status, body=reply.body, headers=reply.headers)

    def successful(self) -> list[Received]:
        return [r for r in self.received if r.signature_ok]

    async def wait_for(self, count: int, timeout_s: float = 5.0) -> list[Received]:
        """Wait until at least `count` requests arrived (no sleeping in tests)."""
        async with asyncio.timeout(timeout_s):
            while len(self.received) < count:
                self._arrived.clear()
                await self._arrived.wait()
        return self.received
