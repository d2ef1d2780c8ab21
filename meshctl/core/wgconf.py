"""WireGuard configuration text: wg-quick files and `wg setconf` files, with validated inputs."""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass

PRIVATE_KEY_PLACEHOLDER = "<PRIVATE_KEY: filled in on the node>"


@dataclass(frozen=True)
class PeerConf:
    public_key: str
    endpoint: str | None
    allowed_ips: Sequence[str]
    persistent_keepalive: int | None = 25


# A WireGuard key: 32 bytes in canonical base64 (44 characters, the last data character carries
# 2 bits that must be zero, one "=" of padding); `wg` refuses anything else.
KEY_PATTERN = r"^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$"
_KEY = re.compile(KEY_PATTERN[:-1] + r"\Z")

_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = rf"{_OCTET}(?:\.{_OCTET}){{3}}"
_H16 = r"[0-9A-Fa-f]{1,4}"
_LS32 = rf"(?:{_H16}:{_H16}|{_IPV4})"
_IPV6 = "|".join(  # RFC 3986 IPv6address, no zone id
    [
        rf"(?:{_H16}:){{6}}{_LS32}",
        rf"::(?:{_H16}:){{5}}{_LS32}",
        rf"(?:{_H16})?::(?:{_H16}:){{4}}{_LS32}",
        rf"(?:(?:{_H16}:){{0,1}}{_H16})?::(?:{_H16}:){{3}}{_LS32}",
        rf"(?:(?:{_H16}:){{0,2}}{_H16})?::(?:{_H16}:){{2}}{_LS32}",
        rf"(?:(?:{_H16}:){{0,3}}{_H16})?::{_H16}:{_LS32}",
        rf"(?:(?:{_H16}:){{0,4}}{_H16})?::{_LS32}",
        rf"(?:(?:{_H16}:){{0,5}}{_H16})?::{_H16}",
        rf"(?:(?:{_H16}:){{0,6}}{_H16})?::",
    ]
)
_PORT = r"(?:[1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
# A WireGuard endpoint: a literal IPv4 address or a bracketed IPv6 address, and a port 1..65535.
ENDPOINT_PATTERN = rf"^(?:{_IPV4}|\[(?:{_IPV6})\]):{_PORT}$"
_ENDPOINT = re.compile(ENDPOINT_PATTERN[:-1] + r"\Z")


def check_key(key: str, what: str = "a WireGuard key") -> str:
    """`key` if it is 32 bytes in canonical base64 (KEY_PATTERN); ValueError naming what is wrong.

    The key itself is never echoed: the same check guards private keys.
    """
    if isinstance(key, str) and _KEY.match(key):
        return key
    try:
        raw = base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError, TypeError):
        raise ValueError(f"{what} must be base64 (44 characters ending in '=')") from None
    if len(raw) != 32:
        raise ValueError(f"{what} must be 32 bytes in base64, got {len(raw)} bytes")
    raise ValueError(f"{what} must be canonical base64 (the unused low bits of the last character are zero)")


def check_endpoint(endpoint: str, what: str = "endpoint") -> str:
    """`endpoint` if it is `IPv4:port` or `[IPv6]:port` (ENDPOINT_PATTERN); ValueError otherwise."""
    if isinstance(endpoint, str) and _ENDPOINT.match(endpoint):
        return endpoint
    raise ValueError(f"{what} must be ip:port with a literal IP address (IPv6 in brackets) and a port 1..65535")


def _peer_lines(p: PeerConf) -> list[str]:
    lines = ["", "[Peer]", f"PublicKey = {check_key(p.public_key)}"]
    nets = [str(ipaddress.ip_network(a, strict=False)) for a in p.allowed_ips]
    lines.append(f"AllowedIPs = {', '.join(nets)}")
    if p.endpoint:
        lines.append(f"Endpoint = {check_endpoint(p.endpoint)}")
    if p.persistent_keepalive:
        lines.append(f"PersistentKeepalive = {int(p.persistent_keepalive)}")
    return lines


def render_wg_quick(
    address: str, listen_port: int, peers: Sequence[PeerConf], private_key: str = PRIVATE_KEY_PLACEHOLDER
) -> str:
    """A wg-quick file; the private key stays a placeholder unless the node fills it in."""
    iface = ipaddress.ip_interface(address)
    if private_key != PRIVATE_KEY_PLACEHOLDER:
        check_key(private_key)
    if not 0 < int(listen_port) < 65536:
        raise ValueError(f"bad listen port {listen_port}")
    lines = ["[Interface]", f"Address = {iface}", f"ListenPort = {int(listen_port)}", f"PrivateKey = {private_key}"]
    for p in peers:
        lines += _peer_lines(p)
    return "\n".join(lines) + "\n"


def render_setconf(private_key: str | None, listen_port: int, peers: Sequence[PeerConf]) -> str:
    """The `wg setconf` / `wg syncconf` format (no Address line)."""
    lines = ["[Interface]", f"ListenPort = {int(listen_port)}"]
    if private_key is not None:
        lines.append(f"PrivateKey = {check_key(private_key)}")
    for p in peers:
        lines += _peer_lines(p)
    return "\n".join(lines) + "\n"
