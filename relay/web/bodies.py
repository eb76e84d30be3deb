"""Reading request bodies: size cap, time bound, content type, UTF-8 and JSON, each with a
clear 4xx."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from relay.config import ServerConfig
from relay.core.errors import PayloadTooLargeError, RequestTimeoutError, UnsupportedMediaTypeError
from relay.core.json_object import parse_json_object

JSON_TYPES = ("application/json", "")


async def read_capped(request: web.Request, server: ServerConfig) -> bytes:
    """The raw body, refusing more than `max_body_bytes` before reading it when possible,
    and a body that takes longer than `header_timeout_s` to arrive (408: a slow client
    must not hold a handler, a socket and a half-read buffer for as long as it likes)."""
    max_bytes = server.max_body_bytes
    if request.content_length is not None and request.content_length > max_bytes:
        raise PayloadTooLargeError(f"body is larger than {max_bytes} bytes",
                                   details={"max_bytes": max_bytes})
    try:
        if request.content.is_eof():  # all of it has arrived: reading it cannot wait
            return await request.read()
        async with asyncio.timeout(server.header_timeout_s):
            return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise PayloadTooLargeError(f"body is larger than {max_bytes} bytes",
                                   details={"max_bytes": max_bytes}) from None
    except TimeoutError:
        raise RequestTimeoutError(f"the body did not arrive within "
                                  f"{server.header_timeout_s:g} s") from None


async def read_json_object(request: web.Request, server: ServerConfig) -> dict[str, Any]:
    """A JSON object body; 415 for another content type, 400 for bad JSON, 413 if too big,
    408 if too slow."""
    if request.content_type not in JSON_TYPES and not request.content_type.endswith("+json"):
        raise UnsupportedMediaTypeError(
            f"send Content-Type: application/json (got {request.content_type!r})")
    return parse_json_object(await read_capped(request, server))
