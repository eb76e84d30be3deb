"""relay.core.json_codec: orjson's results, and the standard library's where orjson refuses."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.core import json_codec
from relay.core.errors import BadRequestError
from relay.core.json_object import parse_json_object


@pytest.mark.parametrize("text", [
    '{"a": 1, "b": [true, null, "é"], "c": {"d": -0.5}}',
    '"\\u2028 \\n \\u0001"',
    '{"a": NaN}',  # orjson refuses it; json takes it
    '{"a": "\\udc80"}',  # a lone surrogate escape: the same
    '\ufeff{}',  # json.loads takes a BOM before bytes (not before text)
])
def test_loads_gives_what_json_gives(text: str) -> None:
    got, want = json_codec.loads(text.encode()), json.loads(text.encode())
    assert repr(got) == repr(want)


@pytest.mark.parametrize("text", ["{", "[1,]", "[" * 5000 + "]" * 5000])
def test_loads_raises_what_json_raises(text: str) -> None:
    with pytest.raises((ValueError, RecursionError)):
        json_codec.loads(text.encode())


@pytest.mark.parametrize("value", [
    {"a": 1, "b": [True, None, "é\u2028"], "c": {"d": 1.5e16}},
    {"big": 2**70},  # orjson refuses ints above 64 bits
    {1: "non-str key"},  # and keys that are not strings
    {"s": "\udc80"},  # and lone surrogates
])
def test_dumps_is_compact_json(value: Any) -> None:
    assert json_codec.dumps(value) == json.dumps(value, separators=(",", ":"),
                                                 ensure_ascii=False)


def test_dumps_can_escape_what_orjson_refuses() -> None:
    value = {"User-Agent": "bad \udc80 byte"}
    text = json_codec.dumps(value, ascii_fallback=True)
    assert text.isascii() and json.loads(text) == value
    assert json_codec.dumps({"a": "é"}, ascii_fallback=True) == '{"a":"é"}'


def test_nan_is_read_as_before() -> None:
    assert math.isnan(parse_json_object(b'{"a": NaN}')["a"])


@pytest.mark.parametrize(("raw", "message"), [
    (b"\xff{}", "body is not valid UTF-8"),
    (b'{"a": }', "body is not valid JSON: Expecting value at position 6"),
    (b"[" * 5000 + b"]" * 5000, "body is not valid JSON: nested too deeply or a number too long"),
    (b"[1]", "body must be a JSON object"),
])
def test_parse_json_object_keeps_its_messages(raw: bytes, message: str) -> None:
    with pytest.raises(BadRequestError) as err:
        parse_json_object(raw)
    assert err.value.message == message


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20)


@given(_JSON)
def test_dumps_standard_is_json_dumps(value: Any) -> None:
    assert json_codec.dumps_standard(value) == json.dumps(value)


def test_dumps_standard_refuses_what_json_dumps_refuses() -> None:
    with pytest.raises(TypeError, match="Object of type object is not JSON serializable"):
        json_codec.dumps_standard({"x": object()})
