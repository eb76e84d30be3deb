"""The app: health, readiness, request ids, the error envelope, the body cap."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from relay.web.appkeys import STORE_KEY
from relay.web.bodies import read_json_object
from tests.conftest import RelayFactory, make_config


async def test_healthz_readyz_and_request_id(relay_factory: RelayFactory) -> None:
    client = await relay_factory()
    resp = await client.get("/healthz", headers={"X-Request-Id": "abc_123"})
    assert resp.status == 200
    assert resp.headers["X-Request-Id"] == "abc_123"
    assert (await resp.json())["status"] == "ok"
    resp = await client.get("/readyz", headers={"X-Request-Id": "bad id!"})
    assert resp.status == 200
    assert resp.headers["X-Request-Id"].startswith("req_")
    assert await resp.json() == {"status": "ok", "checks": {"store": "ok"}}


async def test_readyz_reports_a_closed_store(relay_factory: RelayFactory) -> None:
    client = await relay_factory()
    await client.app[STORE_KEY].close()
    resp = await client.get("/readyz")
    assert resp.status == 503
    assert (await resp.json())["checks"]["store"] == "down"


async def test_unknown_route_and_method_get_the_envelope(relay_factory: RelayFactory) -> None:
    client = await relay_factory()
    resp = await client.get("/nope")
    assert resp.status == 404
    body = await resp.json()
    assert body["error"]["code"] == "not_found"
    assert resp.headers["X-Request-Id"]
    resp = await client.post("/healthz")
    assert resp.status == 405
    assert (await resp.json())["error"]["code"] == "method_not_allowed"


async def test_body_cap_and_bad_json_are_clear_4xx(aiohttp_client, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from relay.web.app import create_app

    cfg = make_config(tmp_path, server={"max_body_bytes": 64})
    app = create_app(cfg)

    async def echo(request: web.Request) -> web.Response:
        return web.json_response(await read_json_object(request, cfg.server))

    app.router.add_post("/echo", echo)
    client = await aiohttp_client(app)
    resp = await client.post("/echo", data=b"{" + b" " * 100 + b"}",
                             headers={"Content-Type": "application/json"})
    assert resp.status == 413
    assert (await resp.json())["error"]["code"] == "payload_too_large"
    for data, ctype, code in [(b"{nope", "application/json", "invalid_json"),
                              (b"\xff\xfe", "application/json", "invalid_json"),
                              (b"[1]", "application/json", "invalid_json"),
                              (b"{}", "text/plain", "unsupported_media_type")]:
        resp = await client.post("/echo", data=data, headers={"Content-Type": ctype})
        assert resp.status in (400, 415)
        assert (await resp.json())["error"]["code"] == code
    resp = await client.post("/echo", data=b'{"a":1}', headers={"Content-Type":
                                                                 "application/json"})
    assert await resp.json() == {"a": 1}
