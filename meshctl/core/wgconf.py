"""WireGuard configuration text: wg-quick files and `wg setconf` files, with validated inputs."""

from __future__ import annotations

import base64
import binascii
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

PRIVATE_KEY_PLACEHOLDER = "<PRIVATE_KEY: filled in on the node>"


@dataclass(frozen=True)
class PeerConf:
    public_key: str
    endpoint: str | None
    allowed_ips: Sequence[str]
    persistent_keepalive: int | None = 25


def check_key(key: str) -> str:
    try:
        raw = base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"not a base64 WireGuard key: {key!r}") from exc
    if len(raw) != 32:
        raise ValueError(f"a WireGuard key is 32 bytes, got {len(raw)}")
    return key


def _check_endpoint(endpoint: str) -> str:
    host, sep, port = endpoint.rpartition(":")
    ipaddress.ip_address(host.strip("[]"))
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"bad endpoint {endpoint!r}")
    return endpoint


def _peer_lines(p: PeerConf) -> list[str]:
    lines = ["", "[Peer]", f"PublicKey = {check_key(p.public_key)}"]
    nets = [str(ipaddress.ip_network(a, strict=False)) for a in p.allowed_ips]
    lines.append(f"AllowedIPs = {', '.join(nets)}")
    if p.endpoint:
        lines.append(f"Endpoint = {_check_endpoint(p.endpoint)}")
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
