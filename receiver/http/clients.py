"""Who is calling: the client's address, the TCP peer's, or, behind proxies the operator trusts
(TRUSTED_PROXIES), the right-most `X-Forwarded-For` hop that is not one of them. A hop further
left was written by someone no trusted proxy vouches for, and is never believed."""

from __future__ import annotations

from collections.abc import Sequence
from ipaddress import IPv4Address, IPv6Address, ip_address

from aiohttp import web

from receiver.config import Network

Address = IPv4Address | IPv6Address


def parse_address(text: str | None) -> Address | None:
    """An address, an IPv4-mapped IPv6 one (`::ffff:a.b.c.d`) as the IPv4 address it is; None
    for anything else."""
    if text is None:
        return None
    try:
        address = ip_address(text.strip().strip("[]"))
    except ValueError:
        return None
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def client_address(request: web.Request, trusted: Sequence[Network]) -> str | None:
    """The client's address as text (None when it cannot be known)."""
    peer = parse_address(request.remote)
    if peer is None:
        return request.remote
    if not _is_trusted(peer, trusted):
        return str(peer)
    hops = [
        hop.strip()
        for header in request.headers.getall("X-Forwarded-For", [])
        for hop in header.split(",")
        if hop.strip()
    ]
    client = peer
    for hop in reversed(hops):
        address = parse_address(hop)
        if address is None:
            return None  # garbage where a trusted proxy's record should be: nobody known
        client = address
        if not _is_trusted(address, trusted):
            break
    return str(client)


def _is_trusted(address: Address, trusted: Sequence[Network]) -> bool:
    return any(address in network for network in trusted)
