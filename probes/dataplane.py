"""The agent's side of the relayed data plane: AllowedIPs with local fast reroute, next-hop
heartbeats, and the forwarding a relay node does (nftables).

The controller serves each peer's AllowedIPs for the primary paths (`meshctl.core.dataplane`) and,
per other region, the path in use and a backup. The agent applies them, and when the primary's next
hop stops answering (N heartbeats lost in a row, `probes.loss`) it applies the backup's AllowedIPs
at once, without waiting for the controller: the relay node for a relayed region; for a direct
region, every watched node of it (one node down is a node problem, not a path problem). Both ends of
a pair watch the same next hop, so both switch, and the pair stays symmetric as cryptokey routing
needs. The controller's next peer list confirms or replaces the switch; while the next hop stays
down the backup is kept, and when it answers again the primary is back.

Forwarding (a relay node): the interface forwards (`net.ipv4.conf.<if>.forwarding`, that interface
only; ICMP redirects off on it) and the agent's own nftables table `inet meshctl` accepts only
overlay-to-overlay packets in and out of the WireGuard interface and drops anything else forwarded
through it; nothing else on the host is touched. Removed when the agent stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from probes.loss import LossTracker
from probes.stamp import MalformedPacket, SenderPacket, parse_reflector, to_ntp

log = logging.getLogger("meshctl.agent")
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux
TABLE = "meshctl"
HEARTBEAT_HZ = 10.0  # per watched next hop; 44-byte STAMP packets
HEARTBEAT_THRESHOLD = 3  # lost in a row: the next hop is down
HEARTBEAT_TIMEOUT_S = 0.4  # above the longest RTT between regions (~250 ms), below the reply timeout
WATCH_PER_REGION = 2  # nodes watched in a region reached directly
WARMUP_S = 2.0  # a new next hop is heartbeaten once its tunnel has had time to come up
PROBE_SEQ_OFFSET = 1 << 32  # the agent's probes in the heartbeat tracker: apart from heartbeat seqs


@dataclass
class Effective:
    """AllowedIPs per peer node id, and the regions switched to their backup (region -> where to)."""

    allowed: dict[str, list[str]] = field(default_factory=dict)
    switched: dict[str, str] = field(default_factory=dict)


def _describe(hop: Mapping[str, Any] | None) -> str:
    if not hop or not hop.get("relay_region"):
        return "direct"
    return f"via {hop['relay_region']} ({hop.get('relay_node')})"


def _by_region(peerlist: Mapping[str, Any]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for p in sorted(peerlist.get("peers", []), key=lambda p: p["node_id"]):
        out.setdefault(p["region"], []).append(p)
    return out


def _watched_in(region_peers: list[dict[str, Any]]) -> list[str]:
    live = [p["node_id"] for p in region_peers if not p.get("drained")] or [p["node_id"] for p in region_peers]
    return live[:WATCH_PER_REGION]


def _hop_down(hop: Mapping[str, Any] | None, region_peers: list[dict[str, Any]], down: set[str]) -> bool:
    if hop and hop.get("relay_node"):
        return hop["relay_node"] in down
    watched = _watched_in(region_peers)
    return bool(watched) and all(n in down for n in watched)


def watched_next_hops(own_region: str, peerlist: Mapping[str, Any]) -> set[str]:
    """Node ids to heartbeat: the next hops of the primary paths, i.e. the relay node of each relayed
    region and a few nodes of each region reached directly. (Backups are not watched: a backup whose
    next hop is dead too is no worse than the dead primary, and every heartbeat crosses the WAN.)"""
    if not peerlist.get("relay_data_plane"):
        return set()
    regions = _by_region(peerlist)
    out: set[str] = set()
    for path in peerlist.get("paths", []):
        hop = path.get("primary")
        if hop and hop.get("relay_node"):
            out.add(hop["relay_node"])
        elif hop is not None:
            out.update(_watched_in(regions.get(path["region"], [])))
    return out


def effective_allowed_ips(own_region: str, peerlist: Mapping[str, Any], down: set[str]) -> Effective:
    """Each peer's AllowedIPs: the primary path to each region, or its backup where the primary's
    next hop is down and the backup's is not (the same rule as `meshctl.core.dataplane.allowed_ips`)."""
    regions = _by_region(peerlist)
    chosen: dict[str, Mapping[str, Any] | None] = {}
    subnets: dict[str, str] = {}
    eff = Effective()
    for path in peerlist.get("paths", []):
        region, primary, backup = path["region"], path.get("primary"), path.get("backup")
        subnets[region] = path["subnet"]
        use = primary
        peers_there = regions.get(region, [])
        if backup is not None and _hop_down(primary, peers_there, down) and not _hop_down(backup, peers_there, down):
            use = backup
            eff.switched[region] = _describe(backup)
        chosen[region] = use
    for p in peerlist.get("peers", []):
        hop = chosen.get(p["region"]) if p["region"] != own_region else None
        ips = [f"{p['probe_ip']}/32"] if p.get("probe_ip") else []
        if not hop or not hop.get("relay_node"):
            ips.insert(0, f"{p['overlay_ip']}/32")
        ips += [subnets[r] for r, h in sorted(chosen.items()) if h and h.get("relay_node") == p["node_id"]]
        eff.allowed[p["node_id"]] = ips
    return eff


# --- forwarding on a relay node ---------------------------------------------------------------


def _run(args: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, input=stdin, capture_output=True, text=True, timeout=20)


def forwarding_rules(ifname: str, overlay_cidr: str) -> str:
    """The agent's nftables table: wg -> wg between overlay addresses is forwarded, anything else
    forwarded through the WireGuard interface is dropped, and no ICMP redirect leaves it (a relay
    sends packets back out of the interface they came in by, which would otherwise trigger them)."""
    return (
        f"table inet {TABLE} {{\n"
        " chain forward {\n  type filter hook forward priority 0; policy accept;\n"
        f'  iifname "{ifname}" oifname "{ifname}" ip saddr {overlay_cidr} ip daddr {overlay_cidr} accept\n'
        f'  iifname "{ifname}" drop\n  oifname "{ifname}" drop\n }}\n'
        " chain output {\n  type filter hook output priority 0; policy accept;\n"
        f'  oifname "{ifname}" icmp type redirect drop\n }}\n}}\n'
    )


def enable_forwarding(ifname: str, overlay_cidr: str) -> None:
    """Relay mesh traffic on this node (idempotent); raises RuntimeError when nft or sysctl fail."""
    disable_forwarding(ifname, keep_sysctl=True)
    proc = _run(["nft", "-f", "-"], forwarding_rules(ifname, overlay_cidr))
    if proc.returncode != 0:
        raise RuntimeError(f"nft: {proc.stderr.strip()}")
    for key, value in (("forwarding", "1"), ("send_redirects", "0")):
        path = f"/proc/sys/net/ipv4/conf/{ifname}/{key}"
        with open(path, "w") as f:
            f.write(value)


def disable_forwarding(ifname: str, keep_sysctl: bool = False) -> None:
    _run(["nft", "delete", "table", "inet", TABLE])
    if not keep_sysctl:
        with contextlib.suppress(OSError), open(f"/proc/sys/net/ipv4/conf/{ifname}/forwarding", "w") as f:
            f.write("0")


# --- next-hop heartbeats --------------------------------------------------------------------


class NextHopWatch:
    """Heartbeats (STAMP test packets, from this node's probe address to each watched peer's) at
    HEARTBEAT_HZ, a `LossTracker` over them, and `on_change()` at every down/up transition.

    The agent's own probes to a watched next hop count as heartbeats (`probe_sent`,
    `probe_replied`): a next hop probed within the last heartbeat interval gets no heartbeat of its
    own, so a next hop that is also a probe target (most are) costs HEARTBEAT_HZ packets a second in
    all, not HEARTBEAT_HZ plus the probe rate. Heartbeats due together leave together, one wake-up
    per interval (they measure loss, not RTT: a burst of 44-byte packets queues behind nothing).
    """

    def __init__(self, stamp_port: int, on_change: Callable[[], None]) -> None:
        self.stamp_port = stamp_port
        self.on_change = on_change
        self.tracker = LossTracker(threshold=HEARTBEAT_THRESHOLD, timeout_s=HEARTBEAT_TIMEOUT_S)
        self.tracker.listeners.append(self._transition)
        self.targets: dict[str, str] = {}  # node id -> probe address
        self.answered: set[str] = set()  # next hops that answered a heartbeat at least once
        self._since: dict[str, float] = {}  # node id -> when it became a target (its tunnel may be new)
        self._by_addr: dict[str, str] = {}
        self._sock: socket.socket | None = None
        self._bound_to: str | None = None
        self._seq = 0
        self._probed: dict[str, float] = {}  # node id -> when the agent last probed it (monotonic)

    def set_targets(self, own_probe_ip: str | None, targets: Mapping[str, str]) -> None:
        self.targets = dict(targets)
        now = time.monotonic()
        self._since = {n: self._since.get(n, now) for n in self.targets}
        self._probed = {n: t for n, t in self._probed.items() if n in self.targets}
        self._by_addr = {ip: n for n, ip in self.targets.items()}
        self.tracker.forget(self.targets)
        if own_probe_ip and own_probe_ip != self._bound_to:
            self.close()
            try:
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sock.setblocking(False)
                sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
                sock.bind((own_probe_ip, 0))
            except OSError as exc:
                log.warning("next-hop heartbeats: cannot bind %s (%s)", own_probe_ip, exc)
                return
            self._sock, self._bound_to = sock, own_probe_ip
            asyncio.get_running_loop().add_reader(sock.fileno(), self._receive)

    @property
    def down(self) -> set[str]:
        """Next hops down: N heartbeats lost in a row after answering once (a tunnel still coming up is
        not a failure, and switching one end of a pair alone would break it)."""
        return {n for n in self.tracker.down if n in self.answered}

    def _transition(self, node_id: str, is_down: bool) -> None:
        if node_id not in self.answered:
            return
        log.warning("next hop %s %s", node_id, "down: switching its paths to their backups" if is_down else "back")
        asyncio.get_running_loop().call_soon(self.on_change)  # not inside the tracker's own pass

    def _warm(self, node_id: str, now: float) -> bool:
        return node_id in self.targets and now - self._since.get(node_id, now) >= WARMUP_S

    def probe_sent(self, node_id: str, seq: int, at: float) -> None:
        """The agent sent probe `seq` to `node_id` at `at` (monotonic): a heartbeat if it is watched."""
        if self._warm(node_id, at):
            self.tracker.sent(node_id, PROBE_SEQ_OFFSET + seq, at)
            self._probed[node_id] = at

    def probe_replied(self, node_id: str, seq: int, at: float) -> None:
        """The reply to probe `seq` came at `at` (monotonic, when the kernel had it)."""
        if node_id in self.targets:
            self.tracker.replied(node_id, PROBE_SEQ_OFFSET + seq, at)
            self.answered.add(node_id)

    def _receive(self) -> None:
        """Every waiting reply, timed by the kernel's receive stamp (a busy event loop is not a loss)."""
        if self._sock is None:
            return
        while True:
            try:
                data, ancillary, _flags, addr = self._sock.recvmsg(2048, socket.CMSG_SPACE(16))
            except (BlockingIOError, InterruptedError, OSError):
                return
            now = time.monotonic()
            for level, kind, value in ancillary:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(value) >= 16:
                    sec, nsec = struct.unpack("qq", value[:16])
                    now -= max(0.0, time.time() - (sec + nsec / 1e9))  # when it arrived, on the monotonic clock
            node = self._by_addr.get(addr[0])
            if node is None:
                continue
            try:
                pkt = parse_reflector(data)
            except MalformedPacket:
                continue
            self.tracker.replied(node, pkt.sender_seq, now)
            self.answered.add(node)

    async def run(self) -> None:
        interval = 1.0 / HEARTBEAT_HZ
        due = time.monotonic()
        while True:
            self._receive()  # replies already in, first: a late event loop must not turn them into losses
            self.tracker.expire(time.monotonic())
            self.send_heartbeats(time.monotonic(), interval)
            due = max(due + interval, time.monotonic() - interval)  # on schedule, without a burst after a stall
            await asyncio.sleep(max(0.0, due - time.monotonic()))

    def send_heartbeats(self, now: float, interval: float) -> int:
        """A heartbeat to every warm target not probed in the last 3/4 interval; how many were sent."""
        if self._sock is None:
            return 0
        sent = 0
        for node, ip in self.targets.items():
            if not self._warm(node, now) or now - self._probed.get(node, -interval) < 0.75 * interval:
                continue
            seq = self._seq & 0xFFFFFFFF
            self._seq += 1
            pkt = SenderPacket(seq=seq, timestamp=to_ntp(time.time())).encode()
            with contextlib.suppress(BlockingIOError, OSError):
                self._sock.sendto(pkt, (ip, self.stamp_port))
            self.tracker.sent(node, seq, now)
            sent += 1
        return sent

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock, self._bound_to = None, None


# --- what the agent holds -------------------------------------------------------------------


@dataclass(frozen=True)
class Reroute:
    """A local switch to (or back from) a backup, for the next report and the log."""

    at: float  # epoch seconds
    region: str
    to: str  # "direct", "via REGION (NODE)"
    reason: str


class DataPlane:
    """The agent's data plane state: its probe address, forwarding, heartbeats and reroutes."""

    def __init__(self, ifname: str, region: str, stamp_port: int, reapply: Callable[[], None]) -> None:
        self.ifname = ifname
        self.region = region
        self.watch = NextHopWatch(stamp_port, reapply)
        self.forwarding = False
        self.switched: dict[str, str] = {}  # region -> the backup in use
        self.primaries: dict[str, str] = {}  # region -> its primary path, as the controller last said
        self.reroutes: list[Reroute] = []  # not yet reported

    def allowed(self, peerlist: Mapping[str, Any]) -> dict[str, list[str]]:
        """AllowedIPs per peer node id for this peer list (empty when the data plane is off: then
        the controller's allowed_ips are used as they are); forwarding and heartbeats follow it."""
        on = bool(peerlist.get("relay_data_plane"))
        self_state = peerlist.get("self_state") or {}
        relay = on and not self_state.get("drained")  # a drained node relays nothing
        if relay and not self.forwarding:
            try:
                enable_forwarding(self.ifname, peerlist.get("overlay_cidr", "100.96.0.0/12"))
                self.forwarding = True
                log.info("relaying mesh traffic on %s (nftables table inet %s)", self.ifname, TABLE)
            except (OSError, RuntimeError) as exc:
                log.error("cannot relay on %s: %s", self.ifname, exc)
        elif not relay and self.forwarding:
            disable_forwarding(self.ifname)
            self.forwarding = False
            log.info("not relaying any more on %s", self.ifname)
        by_node = {p["node_id"]: p for p in peerlist.get("peers", [])}
        hops = watched_next_hops(self.region, peerlist) if on else set()
        with contextlib.suppress(RuntimeError):  # no running loop (a test applying a peer list)
            self.watch.set_targets(
                peerlist.get("probe_ip"),
                {n: by_node[n]["probe_ip"] for n in hops if by_node.get(n, {}).get("probe_ip")},
            )
        if not on:
            self.switched = {}
            return {}
        eff = effective_allowed_ips(self.region, peerlist, self.watch.down)
        now = time.time()
        primaries = {p["region"]: _describe(p.get("primary")) for p in peerlist.get("paths", [])}
        for region in sorted(set(eff.switched) | set(self.switched)):
            if eff.switched.get(region) != self.switched.get(region):
                to = eff.switched.get(region) or primaries.get(region, "direct")
                down = sorted(self.watch.down)
                if region in eff.switched:
                    reason = f"next hop down: {', '.join(down)}"
                elif primaries.get(region) != self.primaries.get(region):
                    reason = "the controller's table replaced it"
                else:
                    reason = "the primary's next hop answers again"
                log.warning("fast reroute: %s -> %s (%s)", region, to, reason)
                self.reroutes.append(Reroute(now, region, to, reason))
        self.switched = eff.switched
        self.primaries = primaries
        del self.reroutes[:-100]  # bounded while the controller is away
        return eff.allowed

    def take_reroutes(self) -> list[dict[str, Any]]:
        """The reroutes since the last report, for the next one."""
        out = [{"at": r.at, "region": r.region, "to": r.to, "reason": r.reason} for r in self.reroutes]
        self.reroutes.clear()
        return out

    def stop(self) -> None:
        self.watch.close()
        if self.forwarding:
            disable_forwarding(self.ifname)
            self.forwarding = False
