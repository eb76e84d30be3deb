"""Tests for relay.core.addresses and relay.outbox.ssrf: address rules, URL checks with a
fake resolver, and GuardedResolver.

No network: the only real connections go to a test server on 127.0.0.1.
"""

import socket
from collections.abc import AsyncIterator, Sequence

import aiohttp
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.test_utils import TestServer

from relay.core.addresses import (
    Network,
    SsrfError,
    check_address,
    check_url,
    parse_allow_networks,
)
from relay.outbox.ssrf import GuardedResolver

NONE: tuple[Network, ...] = ()
LOOPBACK = parse_allow_networks(["127.0.0.0/8", "::1"])


@pytest.mark.parametrize(
    ("ip", "rule"),
    [
        ("127.0.0.1", "loopback"),
        ("127.255.0.9", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:10.1.2.3", "private"),
        ("2002:7f00:1::", "loopback"),  # 6to4 wrapping 127.0.0.1
        ("64:ff9b::a00:1", "private"),  # NAT64 wrapping 10.0.0.1
        ("10.0.0.1", "private"),
        ("172.16.5.4", "private"),
        ("192.168.1.1", "private"),
        ("100.64.0.1", "private"),
        ("fd12:3456::1", "private"),
        ("169.254.169.254", "metadata"),
        ("fd00:ec2::254", "metadata"),
        ("100.100.100.200", "metadata"),
        ("::ffff:169.254.169.254", "metadata"),
        ("169.254.1.1", "link_local"),
        ("fe80::1", "link_local"),
        ("fe80::1%eth0", "link_local"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "reserved"),
        ("192.0.2.10", "reserved"),
        ("198.18.0.1", "reserved"),
        ("2001:db8::1", "reserved"),
        ("fec0::1", "reserved"),
    ],
)
def test_refuses(ip: str, rule: str) -> None:
    with pytest.raises(SsrfError) as info:
        check_address(ip, NONE)
    assert info.value.rule == rule
    assert info.value.address == ip
    message = str(info.value)
    assert rule in message and ip in message and "[outbox] allow_networks" in message


@pytest.mark.parametrize(
    "ip", ["93.184.216.34", "8.8.8.8", "2606:2800:220:1:248:1893:25c8:1946", "64:ff9b::808:808"]
)
def test_allows_public(ip: str) -> None:
    check_address(ip, NONE)


@pytest.mark.parametrize(
    ("ip", "allow"),
    [
        ("127.0.0.1", ["127.0.0.0/8"]),
        ("::ffff:127.0.0.1", ["127.0.0.0/8"]),
        ("::1", ["::1/128"]),
        ("10.1.2.3", ["10.0.0.0/8"]),
        ("100.101.102.103", ["100.64.0.0/10"]),
        ("169.254.169.254", ["169.254.169.254/32"]),
    ],
)
def test_allow_networks_exempt(ip: str, allow: list[str]) -> None:
    check_address(ip, parse_allow_networks(allow))


@pytest.mark.parametrize(
    ("ip", "allow"),
    [
        ("169.254.169.254", ["169.254.0.0/16"]),
        ("100.100.100.200", ["100.64.0.0/10"]),
        ("10.0.0.1", ["127.0.0.0/8"]),
    ],
)
def test_broad_allow_does_not_open_metadata_or_other_ranges(ip: str, allow: list[str]) -> None:
    with pytest.raises(SsrfError):
        check_address(ip, parse_allow_networks(allow))


@pytest.mark.parametrize("value", ["10.0.0.1/8", "not-a-net", "300.0.0.0/8", ""])
def test_parse_allow_networks_rejects(value: str) -> None:
    with pytest.raises(ValueError, match="allow_networks") as info:
        parse_allow_networks(["127.0.0.0/8", value])
    assert repr(value) in str(info.value)


class FakeDns:
    """A `resolve(host, port)` stand-in that records its calls."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table
        self.calls: list[tuple[str, int]] = []

    def __call__(self, host: str, port: int) -> Sequence[str]:
        self.calls.append((host, port))
        return self.table[host]


DNS = {
    "public.example": ["93.184.216.34"],
    "loopback.example": ["127.0.0.1"],
    "private.example": ["10.0.0.1"],
    "metadata.example": ["169.254.169.254"],
    "v6loop.example": ["::1"],
    "mixed.example": ["93.184.216.34", "192.168.1.1"],
    "empty.example": [],
}


@pytest.mark.parametrize(
    ("url", "rule"),
    [
        ("http://127.0.0.1/hook", "loopback"),
        ("https://[::1]:8443/hook", "loopback"),
        ("http://[::ffff:127.0.0.1]/", "loopback"),
        ("http://169.254.169.254/latest/meta-data/", "metadata"),
        ("http://loopback.example/hook", "loopback"),
        ("http://private.example/hook", "private"),
        ("http://metadata.example/hook", "metadata"),
        ("http://v6loop.example/hook", "loopback"),
        ("https://mixed.example/hook", "private"),
        ("http://empty.example/", "url"),
        ("http://2130706433/", "url"),
        ("http://127.1/", "url"),
        ("http://public.example:99999/", "url"),
        ("http:///nohost", "url"),
        ("ftp://public.example/", "scheme"),
        ("file:///etc/passwd", "scheme"),
        ("gopher://127.0.0.1:6379/", "scheme"),
        ("public.example/hook", "scheme"),
    ],
)
def test_check_url_refuses(url: str, rule: str) -> None:
    with pytest.raises(SsrfError) as info:
        check_url(url, NONE, resolve=FakeDns(DNS))
    assert info.value.rule == rule


def test_check_url_message_names_host_address_and_setting() -> None:
    with pytest.raises(SsrfError, match=r"mixed\.example \(192\.168\.1\.1\): private .*"
                       r"\[outbox\] allow_networks"):
        check_url("https://mixed.example/hook", NONE, resolve=FakeDns(DNS))


def test_check_url_allows_and_resolves_with_port() -> None:
    dns = FakeDns(DNS)
    check_url("https://public.example/hook", NONE, resolve=dns)
    check_url("http://public.example:8080/hook", NONE, resolve=dns)
    check_url("http://93.184.216.34/hook", NONE, resolve=dns)
    assert dns.calls == [("public.example", 443), ("public.example", 8080)]


def test_check_url_allow_listed_loopback() -> None:
    check_url("http://127.0.0.1:9000/hook", LOOPBACK, resolve=FakeDns(DNS))
    check_url("http://loopback.example/hook", LOOPBACK, resolve=FakeDns(DNS))


def test_check_url_without_resolver_checks_only_literals() -> None:
    check_url("http://loopback.example/hook", NONE, resolve=None)
    with pytest.raises(SsrfError):
        check_url("http://10.0.0.1/hook", NONE, resolve=None)


def test_ssrf_error_is_an_oserror_without_errno() -> None:
    err = SsrfError("loopback", "refused", "127.0.0.1")
    assert isinstance(err, OSError)
    assert err.errno is None and err.strerror == "refused" and str(err) == "refused"


class StaticResolver(AbstractResolver):
    def __init__(self, addresses: list[str]) -> None:
        self.addresses = addresses
        self.closed = False

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [
            ResolveResult(hostname=host, host=a, port=port, family=family, proto=0, flags=0)
            for a in self.addresses
        ]

    async def close(self) -> None:
        self.closed = True


async def test_guarded_resolver_with_fake_inner() -> None:
    inner = StaticResolver(["93.184.216.34", "10.0.0.1"])
    guarded = GuardedResolver(NONE, inner)
    with pytest.raises(SsrfError) as info:
        await guarded.resolve("mixed.example", 443)
    assert info.value.rule == "private"
    inner.addresses = ["93.184.216.34"]
    results = await guarded.resolve("public.example", 443)
    assert [r["host"] for r in results] == ["93.184.216.34"]
    await guarded.close()
    assert inner.closed


@pytest.fixture
async def server() -> AsyncIterator[TestServer]:
    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/", hello)
    srv = TestServer(app, host="127.0.0.1")
    async with srv:
        yield srv


async def _get(url: str, allow: Sequence[Network]) -> str:
    connector = aiohttp.TCPConnector(resolver=GuardedResolver(allow), use_dns_cache=False)
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.get(url) as response:
            return await response.text()


async def test_real_request_by_hostname_refused(server: TestServer) -> None:
    with pytest.raises(aiohttp.ClientConnectorError) as info:
        await _get(f"http://localhost:{server.port}/", NONE)
    assert isinstance(info.value.os_error, SsrfError)
    assert info.value.os_error.rule == "loopback"
    assert "[outbox] allow_networks" in str(info.value)


async def test_real_request_by_hostname_allow_listed(server: TestServer) -> None:
    assert await _get(f"http://localhost:{server.port}/", LOOPBACK) == "ok"


async def test_literal_ip_skips_resolver_so_check_url_is_required(server: TestServer) -> None:
    # aiohttp never consults the resolver for literal IPs: this request is NOT stopped.
    url = f"http://127.0.0.1:{server.port}/"
    assert await _get(url, NONE) == "ok"
    with pytest.raises(SsrfError):
        check_url(url, NONE, resolve=None)
