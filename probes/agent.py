"""The node agent: join, keep the WireGuard tunnel, probe peers with STAMP, report each window.

Everything it needs to keep the tunnel up is on disk (key, credential, last peer set), so a
restart while the controller is away brings the overlay back. Every file it writes goes through
`meshctl.files.atomic_write` (whole or unchanged after a kill, fsync'd). Reporting never blocks
probing: windows go to an on-disk spool and a separate task delivers them in order.

How the reporter answers each status, and the "node removed" contract with the controller, are
in `probes.reporter`; key rotation is two-phase (a pending key until the controller has it).
About 720 lines because it is where the parts (join.py, wg.py, stamp.py, stats.py, schedule.py,
reporter.py, health.py, hooks.py, dataplane.py) meet: the tasks that run them and the state they share; each
part lives in its own module.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
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
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import httpx
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from meshctl.files import atomic_write, remove_temps
from probes import join as joining
from probes import keys, wg
from probes import peerlist as peerlists
from probes.config import PID_FILE, AgentConfig
from probes.dataplane import DataPlane
from probes.health import DrainState, Health, HealthServer
from probes.hooks import Hooks
from probes.loss import LossTracker
from probes.peer_metrics import PeerGauges
from probes.problem import describe, is_node_removed
from probes.reporter import AUTH_TROUBLE, REPORT_TIMEOUT, NodeRemoved, Reporter
from probes.schedule import ProbeSchedule, probe_rates
from probes.spool import Spool
from probes.stamp import MalformedPacket, reflect, reply_rtt, sender_packet
from probes.stats import Jitter, PeerWindow

log = logging.getLogger("meshctl.agent")
CREDENTIAL_FILE = "credential.json"
PEERLIST_FILE = "peerlist.json"
SEQ_FILE = "seq"
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux; SCM_TIMESTAMPNS has the same value
MAX_DATAGRAM = 2048
_MSG_TRUNC = int(socket.MSG_TRUNC)  # (the enum member costs ~2 us a test)
HANDSHAKE_GRACE_S = 2.0  # longer than any one handshake round trip between regions
TICK_S = 0.02  # the probe loop and the reflector wake together once a tick (`tick`)
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
        self.m_peers = Gauge("mesh_agent_peers", "WireGuard peers", registry=self.registry)
        self.peer_gauges = PeerGauges(self.registry)
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
        self.jitter: dict[str, Jitter] = {}  # peer node id -> its RFC 3550 jitter, carried across windows
        self.http: httpx.AsyncClient | None = None
        self.metadata_transport: httpx.BaseTransport | None = None  # the cloud metadata service (tests replace it)
        self._seq: int | None = None  # the next window's seq, once loaded
        self.retry_base_s = 0.5  # the key rotation's first back-off
        self._sleep: Callable[[float], Awaitable[None]] = asyncio.sleep  # back-off waits (tests replace it)
        self.reporting = Reporter(
            self.spool,
            self.registry,
            lambda: self.http,
            lambda: self.credential,
            lambda seconds: self._sleep(seconds),
            cfg.window_s,
            self.state / CREDENTIAL_FILE,
        )
        # drains reach the node: /healthz and the hooks follow the peer list's self_state (probes.health)
        self.health = Health(cfg.controller_grace_s)
        self.hooks = Hooks(cfg.on_drain, cfg.on_undrain, cfg.hook_timeout_s)
        self.reporting.on_contact = self.health.contact
        self.reporting.on_unreachable = self.health.unreachable
        # consecutive probe losses per peer: a peer that crosses early_after closes the window early
        self.loss = LossTracker(threshold=max(1, cfg.early_after), timeout_s=REPLY_TIMEOUT_S)
        self._missed: set[str] = set()  # targets that lost a probe in the running window
        # the relayed data plane: probe address, forwarding, next-hop heartbeats, local fast reroute
        self.dataplane = DataPlane(cfg.interface, cfg.region, cfg.stamp_port, lambda: self.reroute())
        self.m_early = Counter(
            "mesh_agent_early_windows",
            "Windows closed early: a peer lost early_after probes in a row",
            registry=self.registry,
        )
        self._rotating = False
        self._tunnel_is_up = False
        self._address_set: str | None = None  # the probe address put on the interface
        self._wg_turn = asyncio.Lock()  # one WireGuard change at a time (see `_set_wireguard`)
        self._wg_tasks: set[asyncio.Task[None]] = set()  # fast reroutes under way
        self._fatal: BaseException | None = None
        self._main: asyncio.Future[Any] | None = None
        remove_temps(self.state)  # left by a kill before a rename; only this agent writes here

    # --- identity -------------------------------------------------------------------------

    @property
    def credential(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.state / CREDENTIAL_FILE).read_text())
        return data

    def _save_json(self, name: str, data: Any, mode: int = 0o600) -> None:
        atomic_write(self.state / name, json.dumps(data), mode=mode)

    async def join(self, public_key: str) -> dict[str, Any]:
        """First start: join by a join token or by the cloud identity (`probes.join`); keep the credential."""
        assert self.http is not None
        plan = await asyncio.to_thread(joining.choose, self.cfg, self.metadata_transport)
        endpoint = self.cfg.endpoint
        if endpoint == "auto":
            from probes.metadata import public_endpoint

            endpoint = await asyncio.to_thread(
                public_endpoint, self.cfg.region, self.cfg.listen_port, self.metadata_transport
            )
        name = re.sub(r"[^A-Za-z0-9_.-]", "-", f"{socket.gethostname()}-{self.cfg.interface}").strip("-_.")[:63]
        body = {"region": self.cfg.region, "name": name or "node", "public_key": public_key, "endpoint": endpoint}
        joined = await joining.submit(
            self.http, plan, body, self.cfg.controller, self.metadata_transport, lambda s: self._sleep(s)
        )
        cred = {k: joined[k] for k in ("node_id", "node_token", "overlay_ip", "overlay_cidr", "region")}
        if not (self.state / SEQ_FILE).exists():
            atomic_write(self.state / SEQ_FILE, "0")  # a new node counts from 0; a missing counter later is damage
        self._save_json(CREDENTIAL_FILE, cred)
        self._save_json(PEERLIST_FILE, joined["peers"])
        return cred

    def next_seq(self) -> int:
        """The next window's seq; the counter on disk (`seq`, the next seq to use) is written durably
        before the window is spooled, so seqs never go back (the controller answers 409 to a seq it
        already has, and the agent takes that as already delivered)."""
        if self._seq is None:
            self._seq = self.load_seq()
        seq = self._seq
        atomic_write(self.state / SEQ_FILE, str(seq + 1))
        self._seq = seq + 1
        return seq

    def load_seq(self) -> int:
        """The counter on disk; when it is missing or unreadable, the agent starts anyway from `recover_seq`.

        (The counter is written atomically now, but an older agent could leave it truncated, and a
        disk can garble it; stopping the agent for it would silence the node's region.)
        """
        path = self.state / SEQ_FILE
        spooled = self.spool.highest_seq()
        try:
            seq = int(path.read_text().strip())
            if seq < 0:
                raise ValueError(f"negative seq {seq}")
        except (OSError, ValueError) as exc:
            seq = self.recover_seq()
            log.warning("window counter %s unreadable (%s); continuing from seq %d (time-based)", path, exc, seq)
            return seq
        return max(seq, spooled + 1) if spooled is not None else seq

    def recover_seq(self) -> int:
        """A seq above every seq this node can have used: the larger of the highest seq in the spool
        + 1 and the time in milliseconds since the epoch.

        The spool alone is not enough (it is empty once everything was delivered, and reusing a
        delivered seq would be answered 409 and the new window lost); the time-based seq is above any
        counter (one per window from 0 would need decades of windows shorter than a millisecond to
        reach it) and above an earlier time-based recovery as long as windows last more than a
        millisecond and the clock did not go back. Seqs stay below the wire's 2**62.
        """
        spooled = self.spool.highest_seq()
        return max(int(time.time() * 1000), spooled + 1 if spooled is not None else 0)

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
        self._tunnel_is_up = True
        self._address_set = None  # (a new interface has none of its addresses yet)
        if (self.state / PEERLIST_FILE).exists():
            self.apply_peerlist(json.loads((self.state / PEERLIST_FILE).read_text()))

    def desired_peers(self, peerlist: dict[str, Any]) -> list[wg.WgPeer]:
        """The peers as WireGuard should have them: the controller's AllowedIPs, or with the relayed
        data plane, the same rule with the backups of next hops that stopped answering (probes.dataplane)."""
        own = self._probe_address(peerlist)
        allowed = self.dataplane.allowed(peerlist) if own or peerlist.get("relay_data_plane") else {}
        return [
            wg.WgPeer(p["public_key"], p["endpoint"], tuple(allowed.get(p["node_id"]) or p["allowed_ips"]))
            for p in peerlist["peers"]
        ]

    def _probe_address(self, peerlist: dict[str, Any]) -> str | None:
        """This node's probe address on the interface (probes use it; it is never relayed)."""
        own, cidr = peerlist.get("probe_ip"), peerlist.get("probe_cidr")
        if own and cidr and self._tunnel_is_up:
            address = f"{own}/{ipaddress.ip_network(cidr).prefixlen}"
            if address != self._address_set:  # (`ip` once, not at every peer list)
                wg.ensure_address(self.cfg.interface, address)
                self._address_set = address
        return str(own) if own else None

    def reroute(self) -> None:
        """A next hop went down or came back: re-apply AllowedIPs at once (local fast reroute)."""
        if self.peerlist and self._tunnel_is_up:
            task = asyncio.get_running_loop().create_task(self._reroute())
            self._wg_tasks.add(task)
            task.add_done_callback(self._wg_tasks.discard)

    async def _reroute(self) -> None:
        try:
            await self._set_wireguard(lambda: self.desired_peers(self.peerlist))
        except wg.WireGuardError as exc:
            log.error("fast reroute: %s", exc)

    async def _set_wireguard(self, desired: Callable[[], list[wg.WgPeer]]) -> tuple[int, int, int]:
        """Apply the peers `desired()` gives when our turn comes, with `wg` in a thread, one change
        at a time: (peers, changed, removed). The event loop goes on meanwhile, so /healthz, probes
        and reflections do not wait for `wg` (two processes per change; on a busy node, whole tenths
        of a second in which a drained node's /healthz still said 200 and its probes stood still)."""
        async with self._wg_turn:
            peers = desired()
            changed, removed = await asyncio.to_thread(wg.apply_peers, self.cfg.interface, peers, self.public_key)
            return len(peers), changed, removed

    def apply_peerlist(self, peerlist: dict[str, Any]) -> None:
        """Apply a peer list at once, `wg` on this thread (at start-up, before the event loop's
        other work; `follow_peers` applies them off the loop)."""
        self.observe_self_state(peerlist.get("self_state"))  # first: /healthz does not wait for WireGuard
        desired = self.desired_peers(peerlist)
        changed, removed = wg.apply_peers(self.cfg.interface, desired, self.public_key)
        self._adopt_peerlist(peerlist, len(desired), changed, removed)

    async def apply_peerlist_off_loop(self, peerlist: dict[str, Any]) -> None:
        self.observe_self_state(peerlist.get("self_state"))  # first: /healthz does not wait for WireGuard
        peers, changed, removed = await self._set_wireguard(lambda: self.desired_peers(peerlist))
        self._adopt_peerlist(peerlist, peers, changed, removed)

    def _adopt_peerlist(self, peerlist: dict[str, Any], peers: int, changed: int, removed: int) -> None:
        """What the agent keeps of a peer list WireGuard now has."""
        now = time.monotonic()
        self.first_seen = {p["public_key"]: self.first_seen.get(p["public_key"], now) for p in peerlist["peers"]}
        self.peerlist = peerlist
        self._save_json(PEERLIST_FILE, peerlist)
        self.by_overlay = {p["overlay_ip"]: p for p in peerlist["peers"]}
        self.by_overlay.update({p["probe_ip"]: p for p in peerlist["peers"] if p.get("probe_ip")})
        self.by_node = {p["node_id"]: p for p in peerlist["peers"]}
        self.jitter = {node_id: j for node_id, j in self.jitter.items() if node_id in self.by_node}
        self.m_peers.set(peers)
        self.loss.forget(self.by_node)
        if changed or removed:
            log.info(
                "peers: %d added or updated, %d removed (generation %s)", changed, removed, peerlist.get("generation")
            )

    def observe_self_state(self, self_state: dict[str, Any] | None) -> None:
        """The controller's word on this node's drain (or its region's): /healthz and the hooks follow it."""
        state = DrainState.of(self_state)
        if state != self.health.drain:
            if state.drained:
                log.warning("drained (%s): %s; /healthz answers 503", state.scope, state.reason)
            elif self.health.drain.drained:
                log.info("active again (drain lifted); /healthz answers 200")
        self.health.drain = state
        self.hooks.observe(state)

    async def follow_peers(self) -> None:
        """Long-poll the controller for peer changes; apply only the difference."""
        assert self.http is not None
        cred = self.credential
        etag: str | None = None
        since: int | None = None  # the generation of the list we hold, once it came from this loop
        backoff = 1.0
        while True:
            headers = {"Authorization": f"Bearer {cred['node_token']}"}
            if etag:
                headers["If-None-Match"] = etag
            params: dict[str, float | int] = {"wait": 25} if since is None else {"wait": 25, "since": since}
            try:
                url = f"/v1/nodes/{cred['node_id']}/peers"
                r = await self.http.get(url, headers=headers, params=params, timeout=35)
                if is_node_removed(r):
                    raise NodeRemoved(self.reporting.removed_line(r))
                if r.status_code in (200, 304):
                    self.health.contact()
                elif r.status_code >= 500:
                    self.health.unreachable()
                if r.status_code == 200:
                    peerlist = peerlists.merged(self.peerlist, r.json())
                    await self.apply_peerlist_off_loop(peerlist)
                    etag = r.headers.get("etag")  # only once applied: a failed apply is asked for again
                    since = None if peerlist.get("relay_data_plane") else peerlist.get("generation")
                elif r.status_code != 304:
                    log.warning("peers: %s %s", r.status_code, describe(r))
                    await asyncio.sleep(backoff)
                backoff = 1.0
            except (httpx.HTTPError, wg.WireGuardError) as exc:
                if isinstance(exc, httpx.HTTPError):
                    self.health.unreachable()
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
        self.windows = {p["node_id"]: self.new_window(p["node_id"]) for p in chosen}

    def new_window(self, node_id: str) -> PeerWindow:
        """A window to one peer that carries on the peer's running jitter from its earlier windows."""
        return PeerWindow(jitter=self.jitter.setdefault(node_id, Jitter()))

    async def probe_loop(self) -> None:
        loop = asyncio.get_running_loop()
        cred = self.credential

        def on_reply(data: bytes, addr: tuple[str, int], received: float) -> None:
            peer = self.by_overlay.get(addr[0])
            if peer is None:
                return
            try:
                seq, rtt = reply_rtt(data, received)
            except MalformedPacket:
                return
            sent_to = self.outstanding.get(seq)
            if sent_to is not None and sent_to[0] == peer["node_id"]:
                # in time or not by when the kernel had it, not when the loop got to it
                arrived = time.monotonic() - max(0.0, time.time() - received)
                if self.loss.replied(sent_to[0], seq, arrived):
                    log.info("peer %s answers again", sent_to[0])
                self.dataplane.watch.probe_replied(sent_to[0], seq, arrived)
                sent_to[1].on_reply(seq, rtt * 1000.0)
                self.answered.add(sent_to[0])
                self.m_replies.inc()

        sender = timestamped_socket((self.peerlist.get("probe_ip") or cred["overlay_ip"], 0))  # never relayed
        window_no = 0
        while True:
            self.choose_targets(window_no)
            windows, seqs = self.windows, list[int]()
            window_start = datetime.now(UTC)
            deadline = loop.time() + self.cfg.window_s
            schedule = ProbeSchedule(self.target_rates(), loop.time())
            by_id = {p["node_id"]: p for p in self.targets}
            early: frozenset[str] = frozenset()
            while (now := loop.time()) < deadline:
                for node_id in schedule.due(now):
                    p = by_id[node_id]
                    if self.may_probe(p["public_key"]):
                        self.send_probe(sender, p, windows, seqs)
                receive_all(sender, on_reply)  # the replies since the last tick, before losses are counted
                early = self.early_close(schedule, now)
                if early:
                    break
                await tick()  # one wake-up a tick for the probes due in it, not one per probe or reply
            if early:
                # a peer just lost early_after probes in a row: send what this window saw now (its
                # unanswered probes count as lost), not at its end; the next window starts at once
                self.m_early.inc()
                lost_in_a_row = self.loss.threshold
                log.info("window closed early: %s lost %d probes in a row", ", ".join(sorted(early)), lost_in_a_row)
                self.close_window(window_start, windows, seqs, early=early)
            else:
                # probing goes on; this window closes once its last replies have had time to come back
                loop.call_later(REPLY_TIMEOUT_S, self.close_window, window_start, windows, seqs)
            window_no += 1

    def target_rates(self) -> dict[str, float]:
        """This window's probe rate per target (`probes.schedule`): the full rate to those that lost
        a probe in the last window or are losing now, the rest of the budget shared by the others."""
        cfg = self.cfg
        suspects, self._missed = self._missed, set()
        suspects.update(n for n in self.windows if self.loss.misses(n))
        return probe_rates(list(self.windows), cfg.probe_rate, cfg.probe_budget, suspects, 1.0 / cfg.window_s)

    def send_probe(
        self, sender: socket.socket, peer: dict[str, Any], windows: dict[str, PeerWindow], seqs: list[int]
    ) -> None:
        seq = self.probe_seq & 0xFFFFFFFF
        self.probe_seq += 1
        pkt = sender_packet(seq, time.time())
        with contextlib.suppress(BlockingIOError, OSError):
            sender.sendto(pkt, (peer.get("probe_ip") or peer["overlay_ip"], self.cfg.stamp_port))
        windows[peer["node_id"]].on_sent()
        now = time.monotonic()
        self.loss.sent(peer["node_id"], seq, now)
        self.dataplane.watch.probe_sent(peer["node_id"], seq, now)  # it counts as a heartbeat too
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

    def early_close(self, schedule: ProbeSchedule, now: float) -> frozenset[str]:
        """Count the probes that went unanswered; the peers of this window that just crossed
        early_after consecutive losses (none when early windows are off, or for a peer still
        handshaking). A target that lost one is probed at the full rate from now on (`schedule`)."""
        change = self.loss.expire(time.monotonic())
        if change.missed:
            self._missed |= change.missed
            for node_id in change.missed:
                schedule.hurry(node_id, self.cfg.probe_rate, now)
        if self.cfg.early_after <= 0:
            return frozenset()
        return frozenset(n for n in change.down if n in self.windows and self.established(n))

    def close_window(
        self,
        window_start: datetime,
        windows: dict[str, PeerWindow],
        seqs: list[int],
        early: frozenset[str] = frozenset(),
    ) -> None:
        """Report one window. An early window (closed when the peers `early` crossed the loss
        threshold) says its real length in `window_s`; its unanswered probes to those peers count as
        lost, and those to other peers, still in flight, are left out of it (not lost, not counted)."""
        for seq in seqs:
            sent_to = self.outstanding.pop(seq, None)  # a reply later than REPLY_TIMEOUT_S counts as lost
            if early and sent_to is not None and sent_to[0] not in early:
                sent_to[1].sent -= 1  # in flight to a peer that answers: not this window's loss
        cred = self.credential
        seq = self.next_seq()
        length = self.cfg.window_s
        if early:
            length = min(self.cfg.window_s, max(0.001, (datetime.now(UTC) - window_start).total_seconds()))
        report = {
            "node_id": cred["node_id"],
            "seq": seq,
            "window_start": window_start.isoformat(),
            "window_s": round(length, 3),
            "peers": [w.summary(node_id) for node_id, w in windows.items() if w.sent and self.established(node_id)],
        }
        reroutes = self.dataplane.take_reroutes()  # local fast reroutes since the last window
        if reroutes:
            report["reroutes"] = reroutes
        self.peer_gauges.window(report["peers"], self.by_node)
        dropped_before = self.spool.dropped
        self.spool.put(seq, report)
        self.reporting.spooled(self.spool.dropped - dropped_before)

    async def reflector(self) -> None:
        cred = self.credential

        def on_request(sock: socket.socket, data: bytes, addr: tuple[str, int], received: float) -> None:
            self.reflect_seq += 1
            reply = reflect(data, received, time.time(), self.reflect_seq, from_peer=addr[0] in self.by_overlay)
            if reply is None:
                self.m_dropped_in.inc()
                return
            with contextlib.suppress(BlockingIOError, OSError):
                sock.sendto(reply, addr)
                self.m_reflected.inc()

        readers = [
            (sock, functools.partial(on_request, sock))
            for sock in (
                timestamped_socket((address, self.cfg.stamp_port))
                for address in dict.fromkeys([cred["overlay_ip"], self.peerlist.get("probe_ip")])  # data, probe
                if address
            )
        ]
        # requests are read once a tick, in the probe loop's wake-up: each is stamped when the kernel
        # had it and its reply says how long it waited (T3 - T2), which the sender takes off its RTT
        while True:
            for sock, handle in readers:
                receive_all(sock, handle)
            await tick()

    # --- reports --------------------------------------------------------------------------

    async def reporter(self) -> None:
        """Deliver spooled windows in order (see `probes.reporter`); `NodeRemoved` ends it and the agent."""
        await self.reporting.run()

    # --- key rotation ---------------------------------------------------------------------

    async def rotate_key(self) -> None:
        """New key pair, used only once the controller has it.

        The new private key stays *pending* (its own file, `keys.PENDING_KEY_FILE`) until the
        controller acknowledged the public half (200); then it becomes the active key (one atomic,
        durable rename) and the interface switches to it. A refusal (400, 409, 422...) discards it
        and keeps the old key; no answer, 408, 429, 5xx or a credential problem (401, 403, 404, 410
        other than node-removed: maybe a replica that does not know it yet) keep it pending and retry
        with back-off, logged once. A pending key found at start is registered again first
        (`resume_rotation`): the controller may have taken it while its answer was lost, and setting
        the same key twice is harmless.
        """
        if self._rotating:
            log.info("rotate-key: a rotation is already under way")
            return
        self._rotating = True
        try:
            pending = keys.load_pending(self.state) or keys.new_pending(self.state)
            backoff, logged = self.retry_base_s, False
            while True:
                result, line = await self.register_pending(pending[1])
                if result is not None or not logged:
                    (log.error if result is False else log.info)(line)
                    logged = True
                if result is not None:
                    return
                await self._sleep(backoff * (0.5 + random.random()))
                backoff = min(backoff * 2, 60.0)
        finally:
            self._rotating = False

    async def resume_rotation(self) -> bool:
        """At start: a pending key left by an interrupted rotation is registered again or discarded.

        Returns True when it is still pending (not answered): `run` then keeps trying in the
        background while the tunnel comes up with the active (old) key.
        """
        pending = keys.load_pending(self.state)
        if pending is None:
            return False
        result, line = await self.register_pending(pending[1])
        (log.error if result is False else log.info)(f"{line} (a key pending from an interrupted rotation)")
        return result is None

    async def register_pending(self, public: str) -> tuple[bool | None, str]:
        """PUT the pending key's public half: (True promoted | False refused, discarded | None not answered, a line)."""
        assert self.http is not None
        cred = self.credential
        try:
            r = await self.http.put(
                f"/v1/nodes/{cred['node_id']}/key",
                json={"public_key": public},
                headers={"Authorization": f"Bearer {cred['node_token']}"},
                timeout=REPORT_TIMEOUT,
            )
        except httpx.HTTPError as exc:
            return None, f"rotate-key: controller unreachable ({type(exc).__name__}); the new key stays pending"
        if is_node_removed(r):
            raise NodeRemoved(self.reporting.removed_line(r))
        status = r.status_code
        if status in (408, 429, *AUTH_TROUBLE) or status >= 500:
            return None, f"rotate-key: not taken ({status}): {describe(r)}; the new key stays pending, retrying"
        if status != 200:
            keys.discard_pending(self.state)
            return False, f"rotate-key refused ({status}): {describe(r)}; kept the old key"
        keys.promote_pending(self.state)
        self.public_key = public
        if self._tunnel_is_up:
            wg.bring_up(
                self.cfg.interface,
                self.state / keys.PRIVATE_KEY_FILE,
                self.cfg.listen_port,
                f"{cred['overlay_ip']}/{ipaddress.ip_network(cred['overlay_cidr']).prefixlen}",
            )
        return True, "rotated the WireGuard key"

    def _background(self, coro: Any) -> None:
        """Run a side task; `NodeRemoved` from it stops the agent like one from the main tasks."""
        task = asyncio.ensure_future(coro)

        def done(t: asyncio.Future[Any]) -> None:
            if t.cancelled():
                return
            exc = t.exception()
            if isinstance(exc, NodeRemoved):
                self._fatal = exc
                if self._main is not None:
                    self._main.cancel()
            elif exc is not None:
                log.error("rotate-key failed: %s", exc)

        task.add_done_callback(done)

    # --- main -----------------------------------------------------------------------------

    async def run(self) -> None:
        _private, public = keys.load_or_create(self.state)
        self.public_key = public
        atomic_write(self.state / PID_FILE, str(os.getpid()), mode=0o644)
        start_http_server(self.cfg.metrics_bind_port, addr=self.cfg.metrics_host, registry=self.registry)
        self.health_server = HealthServer(self.health, self.cfg.health_listen)
        await self.health_server.start()  # before the join: a taken port is one line at once
        self.health.region = self.cfg.region
        async with httpx.AsyncClient(base_url=self.cfg.controller, timeout=10) as http:
            self.http = http
            if not (self.state / CREDENTIAL_FILE).exists():
                await self.join(public)
            self.health.node_id = self.hooks.node_id = self.credential["node_id"]
            self.hooks.region = self.cfg.region
            still_pending = await self.resume_rotation()
            self.tunnel_up()
            if still_pending:
                self._background(self.rotate_key())
            loop = asyncio.get_running_loop()
            loop.add_signal_handler(signal.SIGUSR1, lambda: self._background(self.rotate_key()))
            self._main = asyncio.gather(
                self.dataplane.watch.run(),
                self.follow_peers(),
                self.reflector(),
                self.probe_loop(),
                self.reporter(),
                self.hooks.run(),
            )
            try:
                await self._main
            except asyncio.CancelledError:
                if self._fatal is None:
                    raise
            finally:
                self.dataplane.stop()  # its nftables table and forwarding go with the agent
            if self._fatal is not None:
                raise self._fatal


_TICK_PHASE = random.random() * TICK_S  # this process's own: agents on one machine (a lab) do not tick in step


async def tick() -> None:
    """Sleep to this process's next tick (every TICK_S, at its own phase): the loops that tick
    (probes, reflector) wake in the same turn of the event loop, one wake-up for both."""
    loop = asyncio.get_running_loop()
    await asyncio.sleep(TICK_S - (loop.time() - _TICK_PHASE) % TICK_S)


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
        if flags & _MSG_TRUNC:
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
