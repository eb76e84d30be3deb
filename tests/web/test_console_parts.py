"""The console's pure parts: SVG plots, the refused-webhook sampler, secrets and CSRF."""

from __future__ import annotations

import dataclasses
import xml.etree.ElementTree as ET

import pytest

from relay.config import Secret, load_config
from relay.web.console import plots, security
from relay.web.console.sampler import CounterSampler

SVG = "{http://www.w3.org/2000/svg}"
T0 = 1_800_000_000_000 // 3_600_000 * 3_600_000  # an hour start


def bars(svg: str) -> list[ET.Element]:
    return list(ET.fromstring(svg).iter(f"{SVG}rect"))


def test_one_bar_per_minute_with_data_stacked_and_scaled() -> None:
    ok = {T0: 4, T0 + 60_000: 1}
    bad = {T0: 1, T0 + 120 * 60_000: 5}  # outside the 60 minutes drawn: left out
    svg = plots.bar_chart("t", [plots.Series("ok", "ok", ok), plots.Series("bad", "bad", bad)],
                          T0, 60)
    rects = bars(svg)
    assert [r.get("class") for r in rects] == ["ok", "bad", "ok"]
    heights = [float(r.get("height", 0)) for r in rects]
    # The scale tops at 5 (4 + 1 stacked): the first bar fills the plot, the third is 1/5.
    plot_h = plots.HEIGHT - plots.TOP - plots.BOTTOM
    assert sum(heights[:2]) == pytest.approx(plot_h)
    assert heights[2] == pytest.approx(plot_h / 5)
    titles = [t.text for t in ET.fromstring(svg).iter(f"{SVG}title")]
    assert titles[1:] == [f"{plots._hhmm(T0)} UTC: 4 ok, 1 bad",
                          f"{plots._hhmm(T0 + 60_000)} UTC: 1 ok, 0 bad"]


def test_long_spans_are_drawn_with_fewer_wider_bars() -> None:
    values = {T0 + i * 60_000: 1 for i in range(48 * 60)}
    svg = plots.bar_chart("48 h", [plots.Series("n", "ok", values)], T0, 48 * 60)
    rects = bars(svg)
    assert len(rects) == plots.MAX_BARS  # 8 minutes per bar
    assert "per 8 minutes" in svg
    titles = [t.text for t in ET.fromstring(svg).iter(f"{SVG}title")]
    assert titles[1].endswith(": 8 n")


def test_labels_in_a_plot_are_escaped() -> None:
    svg = plots.bar_chart('<script>"x"</script>', [plots.Series("<b>", "ok", {T0: 1})], T0, 1)
    assert "<script>" not in svg and "<b>" not in svg
    ET.fromstring(svg)  # still well-formed


def test_sampler_counts_per_minute_and_since_a_time() -> None:
    s = CounterSampler()
    assert s.since("rejected", {"rejected": 9}, T0) == (0, None)
    s.sample(T0 + 5_000, {"rejected": 10})
    s.sample(T0 + 30_000, {"rejected": 99})  # same minute: the first sample stays
    s.sample(T0 + 60_000, {"rejected": 13})
    s.sample(T0 + 120_000, {"rejected": 13, "failed": 1})
    now = {"rejected": 20, "failed": 1}
    assert s.per_minute("rejected", now, T0 + 150_000) == {T0: 3, T0 + 120_000: 7}
    assert s.since("rejected", now, T0 + 60_000) == (7, T0 + 60_000)
    # Asked from before counting began: counted since the first sample, and said so.
    assert s.since("rejected", now, T0 - 3_600_000) == (10, T0 + 5_000)


def test_sampler_keeps_a_bounded_ring() -> None:
    s = CounterSampler(keep_minutes=3)
    for i in range(10):
        s.sample(T0 + i * 60_000, {"rejected": i})
    assert s.since_ms == T0 + 6 * 60_000


def test_either_credential_signs_in_and_nothing_else_does() -> None:
    cfg = load_config(None, environ={})
    creds = dataclasses.replace(cfg.credentials, admin_token=Secret("admin-token-value"),
                                console_password=Secret("a long console password"))
    cfg = dataclasses.replace(cfg, credentials=creds)
    assert security.matching_credential(cfg, "admin-token-value") == "admin-token"
    assert security.matching_credential(cfg, "a long console password") == "console-password"
    for wrong in ("", "admin-token-valu", "admin-token-value ", "\udcff"):
        assert security.matching_credential(cfg, wrong) is None
    token = security.new_token()
    keys = security.session_keys(cfg, token)
    assert len(set(keys)) == 2 and token not in "".join(keys)


def test_csrf_token_belongs_to_its_session() -> None:
    a, b = security.new_token(), security.new_token()
    assert security.csrf_ok(a, security.csrf_token(a))
    assert not security.csrf_ok(a, security.csrf_token(b))
    assert not security.csrf_ok(a, "")


@pytest.mark.parametrize(("peer", "headers", "expected"), [
    ("127.0.0.1", {}, "loopback"),  # an SSH tunnel, a local browser
    ("::1", {}, "loopback"),
    ("127.0.0.1", {"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.5"}, "https"),
    ("127.0.0.1", {"Forwarded": "for=203.0.113.5;proto=https"}, "https"),
    ("127.0.0.1", {"X-Forwarded-For": "203.0.113.5"}, "insecure"),  # a plain-HTTP proxy
    ("203.0.113.5", {}, "insecure"),
    ("203.0.113.5", {"X-Forwarded-Proto": "https"}, "insecure"),  # not from a local proxy
])
def test_how_the_browser_reached_relay(peer: str, headers: dict[str, str],
                                       expected: str) -> None:
    from unittest import mock

    from aiohttp.test_utils import make_mocked_request

    from relay.web.console.plumbing import _client, _transport

    transport = mock.Mock()
    transport.get_extra_info.side_effect = lambda name, default=None: (
        (peer, 40000) if name == "peername" else default)
    request = make_mocked_request("POST", "/console/signin", headers=headers,
                                  transport=transport)
    assert _transport(request) == expected
    forwarded = headers.get("X-Forwarded-For")
    assert _client(request) == (forwarded if forwarded and peer == "127.0.0.1" else peer)
