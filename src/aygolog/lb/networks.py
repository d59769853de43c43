"""Where Log API instances may be registered: the load balancer's defence against SSRF.

A registration names a URL that the load balancer will then health-check and proxy to, so its
host is checked (`check_network`): it, or every address its name resolves to, must be inside the
allowed networks (`AYGOLOG_REGISTRATION_ALLOWED_NETWORKS`, default the private and loopback
ranges), and never a link-local (where cloud metadata services live), metadata, unspecified,
broadcast or multicast address, whatever the setting says. The address checked is returned: the
load balancer stores it as the instance's `ip` and connects there, never to the name again, so
a name re-pointed after registration (DNS rebinding) cannot move the traffic.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Sequence
from typing import Final
from urllib.parse import urlsplit

from litestar.exceptions import PermissionDeniedException

__all__ = ["IPAddress", "Network", "as_address", "check_network", "inside", "refused_address"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def inside(host: str, networks: Sequence[Network]) -> bool:
    """Whether `host` is an IP address inside one of `networks`."""
    address = as_address(host)
    return address is not None and any(address in network for network in networks)


def as_address(host: str) -> IPAddress | None:
    """`host` as an IP address (an IPv4-mapped IPv6 address as its IPv4 one), or None."""
    try:
        address = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


# Never a Log API instance, whatever AYGOLOG_REGISTRATION_ALLOWED_NETWORKS says.
_ALWAYS_REFUSED: Final[tuple[tuple[Network, str], ...]] = tuple(
    (ipaddress.ip_network(net), why)
    for net, why in (
        ("169.254.0.0/16", "a link-local address (cloud metadata services live there)"),
        ("fe80::/10", "a link-local address"),
        ("fd00:ec2::254/128", "the EC2 instance metadata service"),
        ("0.0.0.0/8", "an unspecified address"),
        ("::/128", "an unspecified address"),
        ("255.255.255.255/32", "a broadcast address"),
        ("224.0.0.0/4", "a multicast address"),
        ("ff00::/8", "a multicast address"),
    )
)


def refused_address(address: IPAddress) -> str | None:
    """Why `address` may never be registered (link-local, metadata, unspecified, broadcast,
    multicast), or None when it may be."""
    for network, why in _ALWAYS_REFUSED:
        if address in network:
            return why
    return None


async def check_network(url: str, networks: Sequence[Network]) -> str:
    """Check where a URL points and return the address to connect to.

    The URL's host (or every address its name resolves to) must be inside `networks` (when not
    empty) and never a link-local, metadata, unspecified, broadcast or multicast address. Of the
    addresses checked, the first IPv4 one is returned (Log API instances usually listen on
    IPv4), else the first.

    Raises:
        PermissionDeniedException: the host is refused, outside `networks`, or cannot be
            resolved.
    """
    host = urlsplit(url).hostname or ""
    literal = as_address(host)
    if literal is not None:
        addresses = [literal]
    else:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, None, type=socket.SOCK_STREAM
            )
        except OSError as exc:
            raise PermissionDeniedException(f"url: cannot resolve {host!r}: {exc}") from None
        addresses = []
        for info in infos:
            address = as_address(str(info[4][0]))
            if address is not None and address not in addresses:
                addresses.append(address)
    if not addresses:
        raise PermissionDeniedException(f"url: {host!r} resolves to no address")
    for address in addresses:
        why = refused_address(address)
        if why is not None:
            shown = host if literal is not None else f"{host!r} ({address})"
            raise PermissionDeniedException(f"url: {shown} is {why}: never allowed")
    outside = sorted(str(a) for a in addresses if networks and not inside(str(a), networks))
    if outside:
        raise PermissionDeniedException(
            f"url: {host!r} ({', '.join(outside)}) is outside the networks allowed to register"
            " (AYGOLOG_REGISTRATION_ALLOWED_NETWORKS)"
        )
    return str(next((a for a in addresses if a.version == 4), addresses[0]))
