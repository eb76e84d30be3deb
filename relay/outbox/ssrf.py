"""Outbound SSRF guard at connect time: an aiohttp resolver that applies the address rules.

The rules themselves (`relay.core.addresses`) are pure; this is the aiohttp side.
"""

import socket
from collections.abc import Sequence

from aiohttp.abc import AbstractResolver, ResolveResult

from relay.core.addresses import Network, check_address


class GuardedResolver(AbstractResolver):
    """Wrap an aiohttp resolver and refuse hostnames that resolve to a disallowed address.

    Checked at connect time, so DNS rebinding after `check_url` cannot slip through.
    aiohttp never calls a resolver for literal-IP hosts: check those with `check_url`
    before the request. Any disallowed address fails the whole lookup with SsrfError,
    which aiohttp raises as `ClientConnectorDNSError` (its `os_error` is the SsrfError).
    Build it inside a running loop when `inner` is omitted (aiohttp's DefaultResolver).
    """

    def __init__(self, allow: Sequence[Network], inner: AbstractResolver | None = None) -> None:
        from aiohttp.resolver import DefaultResolver

        self._allow = tuple(allow)
        self._inner = inner if inner is not None else DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        for result in results:
            check_address(result["host"], self._allow, host=host)
        return results

    async def close(self) -> None:
        await self._inner.close()
