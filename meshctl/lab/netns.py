"""Network namespaces for lab nodes: a host bridge, one namespace per node, and a full cleanup."""

from __future__ import annotations

import contextlib
import glob
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from meshctl.files import atomic_write

JOIN_TOKEN_FILE = "join-token"  # in a node's state directory, mode 0600


def sh(*args: str, check: bool = True, ns: str | None = None) -> subprocess.CompletedProcess[str]:
    cmd = (["ip", "netns", "exec", ns] if ns else []) + list(args)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {proc.stderr.strip()}")
    return proc


@dataclass
class Lab:
    """A bridge on the host (the 'internet' and the management path) and node namespaces on it."""

    prefix: str
    net: str = "10.213"  # a /16: the bridge on <net>.0.0/24, node i's WAN link on <net>.<i+1>.0/24
    namespaces: list[str] = field(default_factory=list)

    @property
    def bridge(self) -> str:
        return f"{self.prefix}br"

    @property
    def host_ip(self) -> str:
        return f"{self.net}.0.1"

    def node_ip(self, i: int) -> str:
        return f"{self.net}.0.{10 + i}"

    def node_ns(self, i: int) -> str:
        return f"{self.prefix}n{i}"

    def up(self, count: int) -> None:
        sh("ip", "link", "add", self.bridge, "type", "bridge")
        sh("ip", "addr", "add", f"{self.host_ip}/24", "dev", self.bridge)
        sh("ip", "link", "set", self.bridge, "up")
        for i in range(count):
            ns = self.node_ns(i)
            sh("ip", "netns", "add", ns)
            self.namespaces.append(ns)
            host_end, ns_end = f"{self.prefix}h{i}", f"{self.prefix}e{i}"
            sh("ip", "link", "add", host_end, "type", "veth", "peer", "name", ns_end)
            sh("ip", "link", "set", ns_end, "netns", ns)
            sh("ip", "link", "set", host_end, "master", self.bridge, "up")
            sh("ip", "addr", "add", f"{self.node_ip(i)}/24", "dev", ns_end, ns=ns)
            sh("ip", "link", "set", ns_end, "up", ns=ns)
            sh("ip", "link", "set", "lo", "up", ns=ns)

    @property
    def wan_ns(self) -> str:
        return f"{self.prefix}wan"

    @property
    def tun(self) -> str:
        return f"{self.prefix}t0"

    def wan_ip(self, i: int) -> str:
        return f"{self.net}.{i + 1}.2"

    def add_wan(self, count: int) -> None:
        """A "wan" namespace between the nodes; its router process is started by the caller.

        Each node gets a second veth into it (<net>.<i+1>.2, gateway .1), policy-routed into the
        TUN the router opens; management traffic (the controller) stays on the host bridge.
        """
        wan = self.wan_ns
        sh("ip", "netns", "add", wan)
        self.namespaces.append(wan)
        sh("ip", "link", "set", "lo", "up", ns=wan)
        for key in ("net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0"):
            sh("sysctl", "-qw", key, ns=wan)
        for i in range(count):
            node, a, b = self.node_ns(i), f"{self.prefix}a{i}", f"{self.prefix}b{i}"
            gateway = f"{self.net}.{i + 1}.1"
            sh("ip", "link", "add", a, "type", "veth", "peer", "name", b)
            sh("ip", "link", "set", a, "netns", wan)
            sh("ip", "link", "set", b, "netns", node)
            sh("ip", "addr", "add", f"{gateway}/24", "dev", a, ns=wan)
            sh("sysctl", "-qw", f"net.ipv4.conf.{a}.rp_filter=0", ns=wan)
            sh("ip", "link", "set", a, "up", ns=wan)
            sh("ip", "rule", "add", "iif", a, "lookup", "100", ns=wan)
            sh("ip", "addr", "add", f"{self.wan_ip(i)}/24", "dev", b, ns=node)
            sh("ip", "link", "set", b, "up", ns=node)
            sh("ip", "route", "add", f"{self.net}.0.0/16", "via", gateway, ns=node)

    def router_argv(self, *options: str) -> list[str]:
        """The command that runs the WAN router (meshctl.lab.wanrouter) in the wan namespace."""
        return [
            "ip",
            "netns",
            "exec",
            self.wan_ns,
            sys.executable,
            "-m",
            "meshctl.lab.wanrouter",
            "--tun",
            self.tun,
            *options,
        ]

    def agent_argv(self, i: int, controller: str, region: str, state_dir: str, **options: str | None) -> list[str]:
        """`meshctl-agent run` (`python -m probes run`, as a media node runs it) as node i of this lab.

        In node i's namespace, with its WAN endpoint and interface.

        Further options by name (`window="1"`, `join_token_file=...`); None leaves one out. A secret
        never goes on a command line (any local user reads it in `ps`): `join_token` is refused,
        write the token with `write_join_token` and pass `join_token_file`.
        """
        if "join_token" in options:
            raise ValueError("agent_argv: no join token on a command line; write_join_token() and join_token_file=")
        argv = ["ip", "netns", "exec", self.node_ns(i), sys.executable, "-m", "probes", "run"]
        flags = {
            "controller": controller,
            "region": region,
            "endpoint": f"{self.wan_ip(i)}:51820",
            "interface": f"{self.prefix}w{i}",
            "state_dir": state_dir,
            **options,
        }
        for name, value in flags.items():
            if value is not None:
                argv += [f"--{name.replace('_', '-')}", value]
        return argv

    def route_wan_into_tun(self) -> None:
        """Once the router has opened the TUN: send everything from the node veths into it."""
        sh("ip", "route", "replace", "default", "dev", self.tun, "table", "100", ns=self.wan_ns)
        sh("sysctl", "-qw", f"net.ipv4.conf.{self.tun}.rp_filter=0", ns=self.wan_ns)

    def wireguard_pids(self) -> list[int]:
        """The wireguard-go processes of this lab's interfaces (they detach from the agent that started them)."""
        pids = []
        for pid_dir in glob.glob("/proc/[0-9]*"):
            with contextlib.suppress(OSError):
                cmd = Path(pid_dir, "cmdline").read_bytes().split(b"\0")
                if (
                    cmd
                    and cmd[0].endswith(b"wireguard-go")
                    and any(a.startswith(self.prefix.encode()) for a in cmd[1:])
                ):
                    pids.append(int(pid_dir.rsplit("/", 1)[1]))
        return pids

    def down(self, processes: Sequence[subprocess.Popen[bytes]] = ()) -> None:
        """Remove everything with our prefix, also what a failed run left behind."""
        for p in processes:
            with contextlib.suppress(ProcessLookupError):
                p.kill()
        for pid in self.wireguard_pids():
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGTERM)
        for ns in sorted(set(self.namespaces) | set(existing_namespaces(self.prefix))):
            sh("ip", "netns", "del", ns, check=False)
        for link in [x for x in leftovers(self.prefix) if not x.startswith("/")]:
            sh("ip", "link", "del", link, check=False)  # veth host ends outlive their namespace briefly
        sh("ip", "link", "del", self.bridge, check=False)
        for sock in glob.glob(f"/var/run/wireguard/{self.prefix}*.sock"):
            with contextlib.suppress(OSError):
                os.unlink(sock)
        self.namespaces.clear()


def write_join_token(state_dir: str | os.PathLike[str], token: str) -> str:
    """Put a node's join token in its state directory (made 0700 if new) as a 0600 file; its path."""
    directory = Path(state_dir)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = directory / JOIN_TOKEN_FILE
    atomic_write(path, token + "\n", mode=0o600)
    return str(path)


def existing_namespaces(prefix: str) -> list[str]:
    out = sh("ip", "netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(prefix)]


def leftovers(prefix: str) -> list[str]:
    """Anything of ours still on the machine: namespaces, links, sockets."""
    found = existing_namespaces(prefix)
    links = sh("ip", "-o", "link", "show", check=False).stdout
    found += [
        line.split(":")[1].strip().split("@")[0]
        for line in links.splitlines()
        if line.split(":")[1].strip().startswith(prefix)
    ]
    found += glob.glob(f"/var/run/wireguard/{prefix}*.sock")
    return found
