"""A JSON object from raw request bytes, or the 400 a caller gets for anything else. Pure."""

from __future__ import annotations

import json
from typing import Any

import orjson

from relay.core.errors import BadRequestError


def parse_json_object(raw: bytes) -> dict[str, Any]:
    try:
        value = orjson.loads(raw)  # the fast path; what it refuses gets json's verdict
    except orjson.JSONDecodeError:
        value = _parse_slowly(raw)
    if not isinstance(value, dict):
        raise BadRequestError("body must be a JSON object", code="invalid_json")
    return value


def _parse_slowly(raw: bytes) -> Any:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequestError("body is not valid UTF-8", code="invalid_json") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadRequestError(f"body is not valid JSON: {exc.msg} at position {exc.pos}",
                              code="invalid_json") from None
    except (RecursionError, ValueError):  # nested too deep; an integer of >4,300 digits
        raise BadRequestError("body is not valid JSON: nested too deeply or a number too "
                              "long", code="invalid_json") from None
    return value
