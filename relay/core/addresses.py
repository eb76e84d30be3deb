"""Which addresses outbound calls may reach: the SSRF rules behind `[outbox] allow_networks`.

Pure apart from the default `getaddrinfo` resolver (blocking: run it off the event loop).
The configuration checks literal addresses with it at load; `relay.outbox.ssrf` applies it
again at connect time.
"""

import ipaddress
import socket
from collections.abc import Callable, Sequence
from urllib.parse import urlsplit

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolve = Callable[[str, int], Sequence[str]]

SETTING = "[outbox] allow_networks"
METADATA = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200")
)
_PRIVATE = tuple(
    ipaddress.ip_network(n)
    for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7")
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class SsrfError(OSError):
    """Raised when an outbound URL or address is refused.

    `rule` names why ("loopback", "private", "link_local", "multicast", "reserved",
    "unspecified", "metadata", "scheme", "url"). An OSError so that aiohttp reports a
    refusal at connect time as `ClientConnectorError` like any other connection failure.
    """

    def __init__(self, rule: str, message: str, address: str = "") -> None:
        super().__init__(message)
        self.strerror = message  # aiohttp's ClientConnectorError shows strerror
        self.rule = rule
        self.address = address


def _embedded_ipv4(ip: Address) -> ipaddress.IPv4Address | None:
    if isinstance(ip, ipaddress.IPv4Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def _rule(ip: Address) -> str | None:
    if ip in METADATA:
        return "metadata"
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link_local"
    if ip.is_multicast:
        return "multicast"
    if any(ip in net for net in _PRIVATE):
        return "private"
    site_local = isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local
    if ip.is_reserved or site_local or not ip.is_global:
        return "reserved"
    return None


def _allowed(ip: Address, allow: Sequence[Network], rule: str) -> bool:
    # A metadata endpoint must be listed on its own: allowing 169.254.0.0/16 or
    # 100.64.0.0/10 (Tailscale) must not open the cloud's credential service.
    exact = rule == "metadata"
    return any(ip in net and (not exact or net.num_addresses == 1) for net in allow)


def check_address(ip: str, allow: Sequence[Network], host: str | None = None) -> None:
    """Raise SsrfError unless `ip` is a public address or lies in an allowed network.

    IPv4-mapped, 6to4 and NAT64 IPv6 addresses are judged by the IPv4 address they carry.
    """
    try:
        raw = ipaddress.ip_address(ip)
    except ValueError:
        raise SsrfError("url", f"not an IP address: {ip!r}", ip) from None
    judged = _embedded_ipv4(raw) or raw
    rule = _rule(judged)
    if rule is None or _allowed(judged, allow, rule) or _allowed(raw, allow, rule):
        return
    shown = ip if host is None else f"{host} ({ip})"
    how = f"list {judged} on its own" if rule == "metadata" else "add a network containing it"
    raise SsrfError(
        rule, f"refusing outbound connection to {shown}: {rule} address; {how} to {SETTING}", ip
    )


def parse_allow_networks(values: Sequence[str]) -> tuple[Network, ...]:
    """Parse CIDRs (or bare addresses) for `[outbox] allow_networks`; ValueError names the value."""
    networks: list[Network] = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value.strip()))
        except ValueError as exc:
            raise ValueError(f"{SETTING}: not a network ({value!r}): {exc}") from None
    return tuple(networks)


def resolve_with_getaddrinfo(host: str, port: int) -> list[str]:
    """Return the unique addresses `host` resolves to (blocking; run it off the event loop)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def check_url(
    url: str, allow: Sequence[Network], resolve: Resolve | None = resolve_with_getaddrinfo
) -> None:
    """Raise SsrfError unless `url` is http(s) and EVERY address its host maps to is allowed.

    Literal IPs are checked directly. Hostnames are resolved with `resolve`; pass
    `resolve=None` to check only scheme and literal IPs and leave names to
    `GuardedResolver` at connect time. Resolver errors (OSError) propagate.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise SsrfError("scheme", f"refusing {parts.scheme or 'no'} scheme: only http and https")
    host = parts.hostname
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise SsrfError("url", f"invalid port in URL host {parts.netloc!r}") from None
    if not host:
        raise SsrfError("url", "URL has no host")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if ":" in host or host.replace(".", "").isdigit():
            # Legacy forms such as 2130706433 or 127.1 that getaddrinfo maps onto 127.0.0.1.
            raise SsrfError("url", f"not a canonical IP address: {host!r}", host) from None
        if resolve is None:
            return
        addresses = resolve(host, port)
        if not addresses:
            raise SsrfError("url", f"{host} resolved to no addresses") from None
        for address in addresses:
            check_address(address, allow, host=host)
    else:
        check_address(host, allow)
