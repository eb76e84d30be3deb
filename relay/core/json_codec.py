"""JSON on the hot paths (request bodies, JWS payloads, event bodies, kept headers): orjson,
with the standard library as the fallback for what orjson refuses. Pure.

orjson is 3-10x faster than `json` here; where it refuses an input the standard library
accepts (NaN and Infinity, a lone surrogate escape, an integer above 64 bits when
encoding, a non-string key), the fallback gives the old result, so callers see the same
values and the same errors. Two differences are left: orjson reads an integer above 64
bits as a float (the standard library as an int) and writes NaN and Infinity as null;
Attesto's payloads have neither.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

# One encoder each: json.dumps() with arguments builds a new one per call.
_compact = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_ascii = json.JSONEncoder(separators=(",", ":")).encode


def loads(raw: bytes | str) -> Any:
    """Parse `raw`; raise what `json.loads` raises for what it refuses (ValueError,
    RecursionError)."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json.loads(raw)  # the standard library's value, or its error


def dumps(value: Any, *, ascii_fallback: bool = False) -> str:
    """Compact JSON text, non-ASCII kept as is (`separators=(",", ":")`,
    `ensure_ascii=False`). `ascii_fallback`: where orjson refuses, escape non-ASCII (a
    lone surrogate from a header decoded with surrogateescape must not reach SQLite)."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # orjson.JSONEncodeError: a surrogate, a big int, a non-str key
        return _ascii(value) if ascii_fallback else _compact(value)


def _not_serializable(value: Any) -> Any:
    raise TypeError(f"Object of type {value.__class__.__name__} is not JSON serializable")


# json.dumps() with no arguments builds a C encoder (and its circular-reference markers)
# per call; this one is built once. Same separators, ASCII escaping and float text.
_standard_c = (json.encoder.c_make_encoder(  # type: ignore[attr-defined]
    None, _not_serializable, json.encoder.encode_basestring_ascii, None, ": ", ", ",
    False, False, True) if json.encoder.c_make_encoder is not None  # type: ignore[attr-defined]
    else None)


def dumps_standard(value: Any) -> str:
    """`json.dumps(value)` byte for byte (what aiohttp's `json_response` writes), ~15 %
    cheaper: the encoder is built once and keeps no circular-reference markers (an answer
    is a tree of dicts and lists; a cycle would be a RecursionError, not a ValueError)."""
    if _standard_c is None:
        return json.dumps(value)
    return "".join(_standard_c(value, 0))
