"""The WireGuard interface: the kernel module where there is one, wireguard-go where not.

Peers are applied as a difference (`wg set ... peer ... [remove]`), so tunnels that did not
change stay up. (The agent keeps the last peer list on disk, so a restarted agent can bring
the tunnel back while the controller is away.)
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path


class WireGuardError(RuntimeError):
    pass


@dataclass(frozen=True)
class WgPeer:
    public_key: str
    endpoint: str
    allowed_ips: tuple[str, ...]


def _run(*args: str, stdin: str | None = None) -> str:
    proc = subprocess.run(args, capture_output=True, text=True, input=stdin, timeout=20)
    if proc.returncode != 0:
        raise WireGuardError(f"{' '.join(args)}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout


def link_exists(ifname: str) -> bool:
    return subprocess.run(["ip", "link", "show", "dev", ifname], capture_output=True).returncode == 0


def bring_up(ifname: str, private_key_file: Path, listen_port: int, address: str) -> None:
    """Create (or reuse) the interface, set key, port and overlay address, and set it up."""
    if not link_exists(ifname):
        kernel = subprocess.run(["ip", "link", "add", "dev", ifname, "type", "wireguard"], capture_output=True)
        if kernel.returncode != 0:
            if shutil.which("wireguard-go") is None:
                raise WireGuardError("no WireGuard kernel module and no wireguard-go: apt-get install wireguard-go")
            env = dict(os.environ, WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD="1")
            _run_env(["wireguard-go", ifname], env)
    _run("wg", "set", ifname, "private-key", str(private_key_file), "listen-port", str(listen_port))
    have = _run("ip", "-o", "addr", "show", "dev", ifname)
    if address.split("/")[0] + "/" not in have:
        _run("ip", "addr", "add", address, "dev", ifname)
    _run("ip", "link", "set", "up", "dev", ifname)


def _run_env(args: list[str], env: dict[str, str]) -> None:
    proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=20)
    if proc.returncode != 0:
        raise WireGuardError(f"{' '.join(args)}: {proc.stderr.strip()}")


def current_peers(ifname: str) -> dict[str, WgPeer]:
    """What the interface has now (`wg show dump`)."""
    out: dict[str, WgPeer] = {}
    for line in _run("wg", "show", ifname, "dump").splitlines()[1:]:
        cols = line.split("\t")
        if len(cols) >= 4:
            allowed = tuple(sorted(a for a in cols[3].split(",") if a and a != "(none)"))
            out[cols[0]] = WgPeer(cols[0], "" if cols[2] == "(none)" else cols[2], allowed)
    return out


def initiates(own_public_key: str, peer_public_key: str) -> bool:
    """Which side of a pair opens the tunnel: the smaller public key.

    If both sides start a handshake at once (both get each other as a new peer in the same
    second, and a persistent keepalive fires the moment a peer is set), the initiations
    cross, each side ends up a responder waiting for the other, and the tunnel waits for
    the 5 s retransmit - often several times over on a long path. One initiator avoids it.
    """
    return own_public_key < peer_public_key


def apply_peers(ifname: str, desired: list[WgPeer], own_public_key: str = "", keepalive: int = 25) -> tuple[int, int]:
    """Add or update what differs, remove what is gone; returns (changed, removed).

    Only the initiating side of each pair keeps a persistent keepalive (see `initiates`).
    """
    have = current_peers(ifname)
    want = {p.public_key: p for p in desired}
    changed = removed = 0
    args: list[str] = []  # one `wg set` for the whole difference: a reroute is one call, not one per peer
    for key in set(have) - set(want):
        args += ["peer", key, "remove"]
        removed += 1
    for key, p in want.items():
        cur = have.get(key)
        if cur is not None and cur.endpoint == p.endpoint and set(cur.allowed_ips) == set(p.allowed_ips):
            continue
        keep = str(keepalive if initiates(own_public_key, key) else 0)
        args += ["peer", key, "endpoint", p.endpoint, "allowed-ips", ",".join(p.allowed_ips)]
        args += ["persistent-keepalive", keep]
        changed += 1
    if args:
        _run("wg", "set", ifname, *args)
    return changed, removed


def ensure_address(ifname: str, address: str) -> None:
    """Add an address (with its prefix) to the interface unless it is there (the probe address)."""
    have = _run("ip", "-o", "addr", "show", "dev", ifname)
    if address.split("/")[0] + "/" not in have:
        _run("ip", "addr", "add", address, "dev", ifname)
