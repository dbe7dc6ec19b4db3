"""Where the notifier may connect: a URL's host is resolved once, every address it resolves to is checked,
and the connection goes to a checked address (never resolved again, so DNS rebinding cannot slip in).

A CertCheck author writes webhook URLs, so by default loopback, link-local (cloud metadata), private,
shared (CGNAT), multicast, reserved and unspecified addresses are refused; an operator allows chosen
ranges with CERTCHECK_WEBHOOK_ALLOWED_CIDRS. Reasons name no address: status and Events are readable by
the author, and must not map the internal network for them.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Sequence[str]]

REFUSED = "the destination is not an allowed address"


def parse_networks(text: str) -> tuple[Network, ...]:
    """A comma-separated list of CIDRs (a bare address is a /32 or /128); ValueError names a bad one."""
    networks: list[Network] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(f"not a CIDR: {item!r}") from None
    return tuple(networks)


def _plain(address: Address) -> Address:
    """An IPv4 address written as IPv6 (::ffff:a.b.c.d, 64:ff9b::/96 is left alone) read as the IPv4 one."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _internal(address: Address) -> bool:
    return (
        address.is_loopback
        or address.is_link_local
        or address.is_private
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        or not address.is_global  # shared (100.64/10), documentation, benchmarking ranges...
    )


@dataclass(frozen=True)
class EgressPolicy:
    """Which addresses a connection may go to: public ones, and the allowed networks."""

    allowed: tuple[Network, ...] = ()
    allow_all: bool = False  # for destinations the operator configured (the Slack API URL)

    def permits(self, address: Address) -> bool:
        address = _plain(address)
        if self.allow_all or any(address in network for network in self.allowed):
            return True
        return not _internal(address)


def system_resolver(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


class DestinationRefused(Exception):
    """The URL's host resolves to an address the policy does not permit."""


def checked_addresses(host: str, port: int, policy: EgressPolicy, resolve: Resolver) -> list[Address]:
    """Every address the host resolves to, in order, if the policy permits all of them.

    One refused address refuses the host: a name that resolves to a public and to an internal address
    is the very shape of a rebinding attack."""
    try:
        literal: Address | None = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        literal = None
    if literal is not None:
        resolved = [literal]
    else:  # a scoped IPv6 address (fe80::1%eth0) is checked without its scope
        resolved = [ipaddress.ip_address(found.split("%")[0]) for found in resolve(host, port)]
    if not resolved or not all(policy.permits(address) for address in resolved):
        raise DestinationRefused(REFUSED)
    unique: list[Address] = []
    for address in resolved:
        if address not in unique:
            unique.append(address)
    return unique
