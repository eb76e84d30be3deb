"""Liveness and readiness: `/healthz` (the loop answers) and `/readyz` (the store answers)."""

from __future__ import annotations

from aiohttp import web

from relay import __version__
from relay.web.appkeys import STORE_KEY


async def handle_healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "version": __version__})


async def handle_readyz(request: web.Request) -> web.Response:
    ok = await request.app[STORE_KEY].ping()
    body = {"status": "ok" if ok else "degraded", "checks": {"store": "ok" if ok else "down"}}
    return web.json_response(body, status=200 if ok else 503)


def routes() -> list[web.RouteDef]:
    return [web.get("/healthz", handle_healthz), web.get("/readyz", handle_readyz)]
