"""The relayed data plane in each node's peer list: per peer its AllowedIPs and probe address, per
other region the path in use and its backup (`meshctl.core.dataplane` plans; this serves).

The plan is computed once per (route table, peer generation, drained nodes) and shared by every
node's answer. With `relay_data_plane` off, AllowedIPs are each node's own two /32s (data and
probe) and routes are advice for applications only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from meshctl.core.dataplane import Hop, PairPlan, PeerAddr, allowed_ips, paths_from, plan_data_plane
from meshctl.core.ipam import probe_address, region_subnet
from meshctl.service.snapshot import Snapshot
from meshctl.service.state import MeshState
from meshctl.settings import Settings
from meshctl.wire import schemas as s

Plan = tuple[dict[str, str], dict[tuple[str, str], PairPlan]]  # region subnets, the path of every pair


@dataclass
class NodeDataPlane:
    """What one node's peer list carries of the data plane."""

    on: bool
    probe_ip: dict[str, str]  # node id -> probe address (every node, this one too)
    allowed: dict[str, list[str]] = field(default_factory=dict)  # peer node id -> AllowedIPs
    paths: list[s.DataPath] = field(default_factory=list)


class DataPlaneView:
    def __init__(self, state: MeshState, settings: Settings, clock: Callable[[], float]) -> None:
        self._state = state
        self._settings = settings
        self._clock = clock
        self._plan_for: tuple[Any, Plan] | None = None

    def generation(self, snap: Snapshot | None) -> int:
        """Peer changes, plus the route table's generation when the data plane follows it: both only
        grow, so the sum moves whenever either does (and the agents' long polls wake)."""
        gen = self._state.peer_generation
        if self._settings.relay_data_plane and snap is not None:
            gen += snap.generation
        return gen

    def for_node(self, node_id: str, snap: Snapshot | None) -> NodeDataPlane:
        state, cfg = self._state, self._settings
        me = state.node(node_id)
        nodes = sorted(state.nodes.values(), key=lambda x: x.id)
        probe = {n.id: probe_address(n.overlay_ip, cfg.overlay_cidr, cfg.probe_cidr) for n in nodes}
        out = NodeDataPlane(on=False, probe_ip=probe)
        plan = self._plan(snap) if snap is not None else None
        if plan is None:
            out.allowed = {n.id: [f"{n.overlay_ip}/32", f"{probe[n.id]}/32"] for n in nodes if n.id != node_id}
            return out
        subnets, pair_plans = plan
        mine = paths_from(me.region, pair_plans)
        addrs = [PeerAddr(n.id, n.region, n.overlay_ip, probe[n.id]) for n in nodes if n.id != node_id]
        out.on = True
        out.allowed = allowed_ips(me.region, addrs, {r: p.primary for r, p in mine.items()}, subnets)
        out.paths = [
            s.DataPath(
                region=r,
                subnet=subnets[r],
                primary=_hop_out(p.primary),
                backup=None if p.backup is None else _hop_out(p.backup),
                note=p.note,
            )
            for r, p in sorted(mine.items())
            if r in subnets
        ]
        return out

    def _plan(self, snap: Snapshot) -> Plan | None:
        if not self._settings.relay_data_plane or snap.table is None or snap.cost is None:
            return None
        state, cfg = self._state, self._settings
        drained = state.drained_nodes
        key = (snap.generation, id(snap), state.peer_generation, drained)
        if self._plan_for is not None and self._plan_for[0] == key:
            return self._plan_for[1]
        now = self._clock()
        relay_nodes: dict[str, list[str]] = {}
        for n in state.nodes.values():
            if n.id not in drained and state.node_up(n.id, now):  # a drained node relays nothing
                relay_nodes.setdefault(n.region, []).append(n.id)
        subnets = {
            r.id: str(region_subnet(cfg.overlay_cidr, r.ordinal, cfg.region_prefix)) for r in state.regions.values()
        }
        plan = (subnets, plan_data_plane(snap.table, snap.cost, relay_nodes, snap.drained))
        self._plan_for = (key, plan)
        return plan


def _hop_out(h: Hop) -> s.DataHop:
    return s.DataHop(relay_region=h.relay_region, relay_node=h.relay_node)
