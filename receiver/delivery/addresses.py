"""Subscriber URLs are chosen by API clients: the dispatcher refuses to connect to this host's
own network (loopback, private, link-local, CGNAT, ULA, unspecified, IPv4-mapped...) unless a
network is explicitly allowed. Checked on the addresses actually connected to, after DNS."""

from __future__ import annotations

import functools
import socket
from collections.abc import Sequence
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network
from typing import Any

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from receiver.config import Network

CGNAT = ip_network("100.64.0.0/10")
# IPv6 ranges that can carry an IPv4 address or a site's network, which `ipaddress` still calls
# public on Python 3.11: 6to4, deprecated site-local, NAT64.
TUNNELS = (ip_network("2002::/16"), ip_network("fec0::/10"), ip_network("64:ff9b::/96"))


class BlockedAddress(OSError):
    """The subscriber's address is one the hub does not connect to."""


def is_public(address: IPv4Address | IPv6Address, allowed: Sequence[Network]) -> bool:
    if any(address in network for network in allowed):
        return True
    if isinstance(address, IPv6Address):
        if address.ipv4_mapped is not None:
            return False  # IPv4-mapped: refused whatever it maps to
        if any(address in network for network in TUNNELS):
            return False
    return not (
        address.is_loopback
        or address.is_private
        or address.is_link_local
        or address.is_unspecified
        or address.is_multicast
        or address.is_reserved
        or (isinstance(address, IPv4Address) and address in CGNAT)
    )


def check_literal_host(host: str, allowed: Sequence[Network]) -> None:
    """A URL with an IP address for host never reaches the resolver: check it here."""
    if not _literal_host_allowed(host, tuple(allowed)):
        raise BlockedAddress(f"{host} is not a public address")


@functools.lru_cache(maxsize=4096)  # asked for every delivery, of a few hosts
def _literal_host_allowed(host: str, allowed: tuple[Network, ...]) -> bool:
    try:
        address = ip_address(host.strip("[]"))
    except ValueError:
        return True  # a name: the resolver checks what it resolves to
    return is_public(address, allowed)


class GuardedResolver(AbstractResolver):
    """Resolves as usual, then drops every address the guard refuses."""

    def __init__(self, allowed: Sequence[Network]) -> None:
        self._resolver = DefaultResolver()
        self._allowed = tuple(allowed)

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._resolver.resolve(host, port, family)
        kept = [r for r in results if is_public(ip_address(r["host"]), self._allowed)]
        if not kept:
            raise BlockedAddress(f"{host} resolves only to addresses that are not public")
        return kept

    async def close(self) -> None:
        await self._resolver.close()


def connector_options(allowed: Sequence[Network]) -> dict[str, Any]:
    return {"resolver": GuardedResolver(allowed)}
