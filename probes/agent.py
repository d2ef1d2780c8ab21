"""The node agent: join, keep the WireGuard tunnel, probe peers with STAMP, report each window.

Everything it needs to keep the tunnel up is on disk (key, credential, last peer set), so a
restart while the controller is away brings the overlay back. Reporting never blocks probing:
windows go to an on-disk spool and a separate task delivers them in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import random
import re
import signal
import socket
import struct
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from probes import keys, wg
from probes.config import AgentConfig
from probes.spool import Spool
from probes.stamp import MalformedPacket, SenderPacket, parse_reflector, reflect, to_ntp
from probes.stats import PeerWindow

log = logging.getLogger("meshctl.agent")
CREDENTIAL_FILE = "credential.json"
PEERLIST_FILE = "peerlist.json"
SEQ_FILE = "seq"
PID_FILE = "agent.pid"
# a report is small and acknowledged after one group commit: a slow answer means a cut path
REPORT_TIMEOUT = httpx.Timeout(3.0, connect=2.0)
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux; SCM_TIMESTAMPNS has the same value
MAX_DATAGRAM = 2048
HANDSHAKE_GRACE_S = 2.0  # longer than any one handshake round trip between regions
WARMUP_S = 5.0  # a new peer that never answered is reported as lost only after this
REPLY_TIMEOUT_S = 0.6  # a STAMP reply later than this is lost (useless to real-time media anyway)


class Agent:
    def __init__(self, cfg: AgentConfig) -> None:
        self.cfg = cfg
        self.state = cfg.state_dir
        self.state.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.spool = Spool(self.state / "spool")
        self.registry = CollectorRegistry()
        self.m_sent = Counter("mesh_agent_probes_sent", "STAMP test packets sent", registry=self.registry)
        self.m_replies = Counter("mesh_agent_probe_replies", "STAMP replies received", registry=self.registry)
        self.m_reflected = Counter("mesh_agent_reflected", "STAMP requests answered", registry=self.registry)
        self.m_dropped_in = Counter(
            "mesh_agent_reflector_dropped", "Packets the reflector dropped", registry=self.registry
        )
        self.m_reports = Counter(
            "mesh_agent_reports_delivered", "Windows the controller accepted", registry=self.registry
        )
        self.m_report_drops = Counter(
            "mesh_agent_reports_dropped", "Windows dropped", ["reason"], registry=self.registry
        )
        self.m_spooled = Gauge("mesh_agent_reports_spooled", "Windows waiting in the spool", registry=self.registry)
        self.m_peers = Gauge("mesh_agent_peers", "WireGuard peers", registry=self.registry)
        self.peerlist: dict[str, Any] = {}
        self.windows: dict[str, PeerWindow] = {}
        self.targets: list[dict[str, Any]] = []
        self.by_overlay: dict[str, dict[str, Any]] = {}
        self.probe_seq = 0
        self.reflect_seq = 0
        self.public_key = ""
        self.first_seen: dict[str, float] = {}  # peer public key -> when it appeared (monotonic)
        self.outstanding: dict[int, tuple[str, PeerWindow]] = {}  # probe seq -> (peer node id, its window)
        self.answered: set[str] = set()  # peers (node ids) that have answered a probe at least once
        self.by_node: dict[str, dict[str, Any]] = {}
        self.http: httpx.AsyncClient | None = None
        self._wake_reporter = asyncio.Event()

    # --- identity -------------------------------------------------------------------------

    @property
    def credential(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.state / CREDENTIAL_FILE).read_text())
        return data

    def _save_json(self, name: str, data: Any, mode: int = 0o600) -> None:
        tmp = self.state / f".{name}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f)
        os.replace(tmp, self.state / name)

    async def join(self, public_key: str) -> dict[str, Any]:
        if not self.cfg.join_token:
            raise RuntimeError("not joined yet and no join token: give --join-token or MESH_JOIN_TOKEN")
        assert self.http is not None
        endpoint = self.cfg.endpoint
        if endpoint == "auto":
            from probes.metadata import public_endpoint

            endpoint = await asyncio.to_thread(public_endpoint, self.cfg.region, self.cfg.listen_port)
        name = re.sub(r"[^A-Za-z0-9_.-]", "-", f"{socket.gethostname()}-{self.cfg.interface}").strip("-_.")[:63]
        body = {
            "join_token": self.cfg.join_token,
            "region": self.cfg.region,
            "name": name or "node",
            "public_key": public_key,
            "endpoint": endpoint,
        }
        r = await self.http.post("/v1/nodes", json=body)
        if r.status_code != 201:
            raise RuntimeError(f"join refused ({r.status_code}): {r.text[:300]}")
        joined = r.json()
        cred = {k: joined[k] for k in ("node_id", "node_token", "overlay_ip", "overlay_cidr", "region")}
        self._save_json(CREDENTIAL_FILE, cred)
        self._save_json(PEERLIST_FILE, joined["peers"])
        return cred

    def next_seq(self) -> int:
        path = self.state / SEQ_FILE
        seq = int(path.read_text()) if path.exists() else 0
        path.write_text(str(seq + 1))
        return seq

    # --- tunnel ---------------------------------------------------------------------------

    def tunnel_up(self) -> None:
        cred = self.credential
        prefix = ipaddress.ip_network(cred["overlay_cidr"]).prefixlen
        wg.bring_up(
            self.cfg.interface,
            self.state / keys.PRIVATE_KEY_FILE,
            self.cfg.listen_port,
            f"{cred['overlay_ip']}/{prefix}",
        )
        if (self.state / PEERLIST_FILE).exists():
            self.apply_peerlist(json.loads((self.state / PEERLIST_FILE).read_text()))

    def apply_peerlist(self, peerlist: dict[str, Any]) -> None:
        desired = [wg.WgPeer(p["public_key"], p["endpoint"], tuple(p["allowed_ips"])) for p in peerlist["peers"]]
        changed, removed = wg.apply_peers(self.cfg.interface, desired, self.state, self.public_key)
        now = time.monotonic()
        self.first_seen = {p["public_key"]: self.first_seen.get(p["public_key"], now) for p in peerlist["peers"]}
        self.peerlist = peerlist
        self._save_json(PEERLIST_FILE, peerlist)
        self.by_overlay = {p["overlay_ip"]: p for p in peerlist["peers"]}
        self.by_node = {p["node_id"]: p for p in peerlist["peers"]}
        self.m_peers.set(len(desired))
        if changed or removed:
            log.info(
                "peers: %d added or updated, %d removed (generation %s)", changed, removed, peerlist.get("generation")
            )

    async def follow_peers(self) -> None:
        """Long-poll the controller for peer changes; apply only the difference."""
        assert self.http is not None
        cred = self.credential
        etag: str | None = None
        backoff = 1.0
        while True:
            headers = {"Authorization": f"Bearer {cred['node_token']}"}
            if etag:
                headers["If-None-Match"] = etag
            try:
                r = await self.http.get(
                    f"/v1/nodes/{cred['node_id']}/peers", headers=headers, params={"wait": 25}, timeout=35
                )
                if r.status_code == 200:
                    etag = r.headers.get("etag")
                    self.apply_peerlist(r.json())
                elif r.status_code != 304:
                    log.warning("peers: %s %s", r.status_code, r.text[:200])
                    await asyncio.sleep(backoff)
                backoff = 1.0
            except (httpx.HTTPError, wg.WireGuardError) as exc:
                log.info("peers: controller unreachable (%s); keeping the last peer set", type(exc).__name__)
                await asyncio.sleep(backoff + random.random())
                backoff = min(backoff * 2, 30.0)

    # --- probes ---------------------------------------------------------------------------

    def choose_targets(self, window_no: int) -> None:
        """A few peers in every other region, rotating each window."""
        by_region: dict[str, list[dict[str, Any]]] = {}
        for p in sorted(self.peerlist.get("peers", []), key=lambda p: p["node_id"]):
            if p["region"] != self.cfg.region:
                by_region.setdefault(p["region"], []).append(p)
        chosen = []
        for peers in by_region.values():
            n = self.cfg.targets_per_region
            start = (window_no * n) % len(peers)
            chosen += (peers[start:] + peers[:start])[:n]
        self.targets = chosen
        self.windows = {p["node_id"]: PeerWindow() for p in chosen}

    async def probe_loop(self) -> None:
        loop = asyncio.get_running_loop()
        cred = self.credential

        def on_reply(data: bytes, addr: tuple[str, int], received: float) -> None:
            peer = self.by_overlay.get(addr[0])
            if peer is None:
                return
            try:
                pkt = parse_reflector(data)
            except MalformedPacket:
                return
            sent_to = self.outstanding.get(pkt.sender_seq)
            if sent_to is not None and sent_to[0] == peer["node_id"]:
                sent_to[1].on_reply(pkt.sender_seq, pkt.rtt_seconds(received) * 1000.0)
                self.answered.add(sent_to[0])
                self.m_replies.inc()

        sender = timestamped_socket((cred["overlay_ip"], 0))
        loop.add_reader(sender.fileno(), receive_all, sender, on_reply)
        window_no = 0
        while True:
            self.choose_targets(window_no)
            windows, seqs = self.windows, list[int]()
            window_start = datetime.now(UTC)
            deadline = loop.time() + self.cfg.window_s
            interval = 1.0 / self.cfg.probe_rate
            next_send = loop.time()
            while loop.time() < deadline:
                step = interval / max(1, len(self.targets))  # spread out: no burst queues behind itself
                slots: list[dict[str, Any] | None] = [*self.targets] or [None]
                for p in slots:  # every slot sleeps, sent or not: never a busy loop
                    if p is not None and self.may_probe(p["public_key"]):
                        self.send_probe(sender, p, windows, seqs)
                    next_send += step
                    await asyncio.sleep(max(0.0, next_send - loop.time()))
            # probing goes on; this window closes once its last replies have had time to come back
            loop.call_later(REPLY_TIMEOUT_S, self.close_window, window_start, windows, seqs)
            window_no += 1

    def send_probe(
        self, sender: socket.socket, peer: dict[str, Any], windows: dict[str, PeerWindow], seqs: list[int]
    ) -> None:
        seq = self.probe_seq & 0xFFFFFFFF
        self.probe_seq += 1
        pkt = SenderPacket(seq=seq, timestamp=to_ntp(time.time())).encode()
        with contextlib.suppress(BlockingIOError, OSError):
            sender.sendto(pkt, (peer["overlay_ip"], self.cfg.stamp_port))
        windows[peer["node_id"]].on_sent()
        self.outstanding[seq] = (peer["node_id"], windows[peer["node_id"]])
        seqs.append(seq)
        self.m_sent.inc()

    def established(self, node_id: str) -> bool:
        """Report a peer once it has answered, or once its tunnel has had time to come up: a new
        peer that has not answered yet is still handshaking, not lost."""
        if node_id in self.answered:
            return True
        peer = self.by_node.get(node_id)
        key = peer["public_key"] if peer else ""
        return time.monotonic() - self.first_seen.get(key, 0.0) >= WARMUP_S

    def may_probe(self, peer_key: str) -> bool:
        """The responding side of a new tunnel waits a moment for the initiator's handshake."""
        if wg.initiates(self.public_key, peer_key):
            return True
        return time.monotonic() - self.first_seen.get(peer_key, 0.0) >= HANDSHAKE_GRACE_S

    def close_window(self, window_start: datetime, windows: dict[str, PeerWindow], seqs: list[int]) -> None:
        for seq in seqs:
            self.outstanding.pop(seq, None)  # a reply later than REPLY_TIMEOUT_S counts as lost
        cred = self.credential
        seq = self.next_seq()
        report = {
            "node_id": cred["node_id"],
            "seq": seq,
            "window_start": window_start.isoformat(),
            "window_s": self.cfg.window_s,
            "peers": [w.summary(node_id) for node_id, w in windows.items() if w.sent and self.established(node_id)],
        }
        self.spool.put(seq, report)
        self.m_spooled.set(len(self.spool))
        self._wake_reporter.set()

    async def reflector(self) -> None:
        loop = asyncio.get_running_loop()
        cred = self.credential
        sock = timestamped_socket((cred["overlay_ip"], self.cfg.stamp_port))

        def on_request(data: bytes, addr: tuple[str, int], received: float) -> None:
            self.reflect_seq += 1
            reply = reflect(data, received, time.time(), self.reflect_seq, from_peer=addr[0] in self.by_overlay)
            if reply is None:
                self.m_dropped_in.inc()
                return
            with contextlib.suppress(BlockingIOError, OSError):
                sock.sendto(reply, addr)
                self.m_reflected.inc()

        loop.add_reader(sock.fileno(), receive_all, sock, on_request)
        await asyncio.Event().wait()

    # --- reports --------------------------------------------------------------------------

    async def reporter(self) -> None:
        """Deliver spooled windows in order; back off with jitter while the controller is away."""
        assert self.http is not None
        backoff = 0.5
        while True:
            self._wake_reporter.clear()
            delivered_all = True
            for seq, report in self.spool:
                token = self.credential["node_token"]
                try:
                    r = await self.http.post(
                        "/v1/reports",
                        json=report,
                        headers={"Authorization": f"Bearer {token}"},
                        timeout=REPORT_TIMEOUT,
                    )
                except httpx.HTTPError:
                    delivered_all = False
                    break
                if r.status_code in (202, 409):
                    self.spool.done(seq)
                    if r.status_code == 202:
                        self.m_reports.inc()
                    else:
                        self.m_report_drops.labels("duplicate").inc()
                elif r.status_code in (408, 429) or r.status_code >= 500:
                    delivered_all = False
                    break
                else:
                    log.warning("report %d refused (%d): %s; dropped", seq, r.status_code, r.text[:200])
                    self.spool.done(seq)
                    self.m_report_drops.labels("refused").inc()
            self.m_spooled.set(len(self.spool))
            if delivered_all:
                backoff = 0.5
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake_reporter.wait(), self.cfg.window_s)
            else:
                await asyncio.sleep(backoff * (0.5 + random.random()))
                backoff = min(backoff * 2, max(1.0, self.cfg.window_s))  # back within a window or so of an outage

    # --- key rotation ---------------------------------------------------------------------

    async def rotate_key(self) -> None:
        """New key pair: register the public key first, then switch the interface to it."""
        assert self.http is not None
        cred = self.credential
        old = (self.state / keys.PRIVATE_KEY_FILE).read_text()
        _private, public = keys.rotate(self.state)
        previous_public, self.public_key = self.public_key, public
        r = await self.http.put(
            f"/v1/nodes/{cred['node_id']}/key",
            json={"public_key": public},
            headers={"Authorization": f"Bearer {cred['node_token']}"},
        )
        if r.status_code != 200:
            keys.write_private(self.state / keys.PRIVATE_KEY_FILE, old.strip())
            self.public_key = previous_public
            log.error("rotate-key refused (%d): %s; kept the old key", r.status_code, r.text[:200])
            return
        wg.bring_up(
            self.cfg.interface,
            self.state / keys.PRIVATE_KEY_FILE,
            self.cfg.listen_port,
            f"{cred['overlay_ip']}/{ipaddress.ip_network(cred['overlay_cidr']).prefixlen}",
        )
        log.info("rotated the WireGuard key")

    # --- main -----------------------------------------------------------------------------

    async def run(self) -> None:
        _private, public = keys.load_or_create(self.state)
        self.public_key = public
        (self.state / PID_FILE).write_text(str(os.getpid()))
        start_http_server(self.cfg.metrics_port, addr=self.cfg.metrics_host, registry=self.registry)
        async with httpx.AsyncClient(base_url=self.cfg.controller, timeout=10) as http:
            self.http = http
            if not (self.state / CREDENTIAL_FILE).exists():
                await self.join(public)
            self.tunnel_up()
            loop = asyncio.get_running_loop()
            loop.add_signal_handler(signal.SIGUSR1, lambda: asyncio.ensure_future(self.rotate_key()))
            await asyncio.gather(self.follow_peers(), self.reflector(), self.probe_loop(), self.reporter())


def timestamped_socket(addr: tuple[str, int]) -> socket.socket:
    """A non-blocking UDP socket whose datagrams carry the kernel's receive time."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    sock.bind(addr)
    return sock


def receive_all(sock: socket.socket, handle: Callable[[bytes, tuple[str, int], float], None]) -> None:
    """Read every waiting datagram; each is stamped when the kernel received it, not when Python
    got round to it (on a busy node that difference is most of the measurement error)."""
    while True:
        try:
            data, ancillary, flags, addr = sock.recvmsg(MAX_DATAGRAM, socket.CMSG_SPACE(16))
        except (BlockingIOError, InterruptedError):
            return
        if flags & socket.MSG_TRUNC:
            continue  # larger than any STAMP packet: hostile or broken
        received = time.time()
        for level, kind, value in ancillary:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(value) >= 16:
                sec, nsec = struct.unpack("qq", value[:16])
                received = sec + nsec / 1e9
        handle(data, addr, received)


def run(cfg: AgentConfig) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(Agent(cfg).run())


def main() -> None:
    """`meshctl-agent`: the same as `meshctl agent run`."""
    import sys

    from meshctl.cli.main import main as cli_main

    sys.argv = [sys.argv[0], "agent", "run", *sys.argv[1:]]
    cli_main()
