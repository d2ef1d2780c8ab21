"""Overlay addresses: one subnet per region by a never-reused ordinal; no address twice."""

from __future__ import annotations

import ipaddress
from collections.abc import Collection, Iterator

DEFAULT_OVERLAY = "100.96.0.0/12"


class SubnetExhausted(RuntimeError):
    """No address (or no region subnet) left."""


def region_subnet(overlay_cidr: str, ordinal: int, prefix: int) -> ipaddress.IPv4Network:
    """The ordinal-th subnet of size /prefix inside the overlay."""
    overlay = ipaddress.IPv4Network(overlay_cidr)
    if prefix < overlay.prefixlen or prefix > 30:
        raise ValueError(f"region prefix /{prefix} does not fit in {overlay}")
    count = 1 << (prefix - overlay.prefixlen)
    if not 0 <= ordinal < count:
        raise SubnetExhausted(f"{overlay} holds {count} region subnets of /{prefix}; ordinal {ordinal} is past them")
    size = 1 << (32 - prefix)
    return ipaddress.IPv4Network((int(overlay.network_address) + ordinal * size, prefix))


def free_addresses(subnet: ipaddress.IPv4Network | str, used: Collection[str]) -> Iterator[str]:
    """The host addresses never handed out, lowest first (as `next_address` would give them one
    after another): a batch of joins into one region takes its addresses in one pass."""
    net = ipaddress.IPv4Network(subnet)
    taken = set(used)
    for value in range(int(net.network_address) + 2, int(net.broadcast_address)):
        addr = str(ipaddress.IPv4Address(value))
        if addr not in taken:
            yield addr


def next_address(subnet: ipaddress.IPv4Network | str, used: Collection[str]) -> str:
    """The lowest host address never handed out (skips network, broadcast and the first host)."""
    net = ipaddress.IPv4Network(subnet)
    taken = set(used)
    first = int(net.network_address) + 2
    last = int(net.broadcast_address) - 1
    for value in range(first, last + 1):
        addr = str(ipaddress.IPv4Address(value))
        if addr not in taken:
            return addr
    raise SubnetExhausted(f"no address left in {net}")


DEFAULT_PROBE = "100.112.0.0/12"


def probe_address(overlay_ip: str, overlay_cidr: str, probe_cidr: str) -> str:
    """A node's probe address: its overlay address's host bits in the probe network.

    Probes (STAMP) go between probe addresses, which are never relayed, so every direct pair
    stays measured while data traffic takes a relay. Derived, never stored: the same overlay
    address always has the same probe address.
    """
    overlay = ipaddress.IPv4Network(overlay_cidr)
    probe = ipaddress.IPv4Network(probe_cidr)
    if probe.prefixlen != overlay.prefixlen:
        raise ValueError(f"the probe network {probe} must be the size of the overlay {overlay}")
    if probe.overlaps(overlay):
        raise ValueError(f"the probe network {probe} overlaps the overlay {overlay}")
    host = int(ipaddress.IPv4Address(overlay_ip)) - int(overlay.network_address)
    if not 0 <= host < overlay.num_addresses:
        raise ValueError(f"{overlay_ip} is not in the overlay {overlay}")
    return str(ipaddress.IPv4Address(int(probe.network_address) + host))
