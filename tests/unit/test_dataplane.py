"""The relayed data plane: one path per region pair, both ways, and AllowedIPs that carry it.

Besides the plan itself, each case walks packets through WireGuard's cryptokey routing as every
node would program it (longest prefix picks the peer; the receiver accepts an inner source only
from the peer whose AllowedIPs hold it), so "relayed both ways" is checked, not just asserted.
"""

from __future__ import annotations

import ipaddress
import math

import numpy as np
import pytest

from meshctl.core.dataplane import (
    DIRECT,
    Hop,
    PeerAddr,
    allowed_ips,
    pair_key,
    paths_from,
    plan_data_plane,
    rendezvous,
)
from meshctl.core.ipam import probe_address, region_subnet
from meshctl.core.routing import RoutingWeights, compute_routes
from probes import dataplane as agent_dp

OVERLAY, PROBE = "100.96.0.0/12", "100.112.0.0/12"
W = RoutingWeights(relay_penalty_ms=1.0, hysteresis_ratio=0.05)


def mesh(rtts: dict[tuple[str, str], float], regions: list[str]) -> tuple[np.ndarray, object]:
    r = len(regions)
    cost = np.full((r, r), math.inf)
    np.fill_diagonal(cost, 0.0)
    for (a, b), ms in rtts.items():
        i, j = regions.index(a), regions.index(b)
        cost[i, j] = cost[j, i] = ms
    table = compute_routes(regions, cost, cost.copy(), set(), W)
    return cost, table


REGIONS = ["aws:a", "aws:b", "aws:r", "aws:s"]
# a-b is slow direct; r is the best relay, s a worse one; every leg to r and s is direct
RTT = {
    ("aws:a", "aws:b"): 200.0,
    ("aws:a", "aws:r"): 20.0,
    ("aws:r", "aws:b"): 30.0,
    ("aws:a", "aws:s"): 40.0,
    ("aws:s", "aws:b"): 60.0,
    ("aws:r", "aws:s"): 30.0,
}
NODES = {"aws:a": ["n-a1", "n-a2"], "aws:b": ["n-b1"], "aws:r": ["n-r1", "n-r2", "n-r3"], "aws:s": ["n-s1"]}


def addresses(
    regions: list[str] = REGIONS, nodes: dict[str, list[str]] = NODES
) -> tuple[list[PeerAddr], dict[str, str]]:
    """Overlay and probe addresses as the controller hands them out (a /22 per region)."""
    subnets = {reg: str(region_subnet(OVERLAY, k, 22)) for k, reg in enumerate(regions)}
    peers = []
    for reg, ids in nodes.items():
        net = ipaddress.IPv4Network(subnets[reg])
        for h, nid in enumerate(ids):
            ip = str(net.network_address + 2 + h)
            peers.append(PeerAddr(nid, reg, ip, probe_address(ip, OVERLAY, PROBE)))
    return peers, subnets


def programs(plan: dict, peers: list[PeerAddr], subnets: dict[str, str]) -> dict[str, dict[str, list[str]]]:
    """Every node's AllowedIPs per peer, as the controller serves them."""
    out = {}
    for me in peers:
        mine = paths_from(me.region, plan)
        others = [p for p in peers if p.node_id != me.node_id]
        out[me.node_id] = allowed_ips(me.region, others, {r: p.primary for r, p in mine.items()}, subnets)
    return out


def peer_for(table: dict[str, list[str]], dst: str) -> str | None:
    """WireGuard's outgoing choice: the peer with the longest prefix holding dst."""
    best: tuple[int, str] | None = None
    for node, prefixes in table.items():
        for pfx in prefixes:
            net = ipaddress.IPv4Network(pfx)
            if ipaddress.IPv4Address(dst) in net and (best is None or net.prefixlen > best[0]):
                best = (net.prefixlen, node)
    return None if best is None else best[1]


def deliver(progs: dict, addr: dict[str, PeerAddr], src: str, dst: str) -> list[str]:
    """The nodes a packet from node src to node dst's data address crosses; fails where a
    receiver's cryptokey filter would drop it (inner source not on the sending peer's entry)."""
    hops, at = [src], src
    for _ in range(4):
        nxt = peer_for(progs[at], addr[dst].overlay_ip)
        assert nxt is not None, f"{at} has no peer for {dst}"
        # the receiver accepts the inner source only from the peer whose AllowedIPs hold it
        assert peer_for(progs[nxt], addr[src].overlay_ip) == at, f"{nxt} drops {src}'s packet from {at}"
        hops.append(nxt)
        if nxt == dst:
            return hops
        at = nxt
    raise AssertionError(f"loop: {hops}")


def test_relayed_pair_uses_one_relay_node_both_ways_and_packets_get_through() -> None:
    cost, table = mesh(RTT, REGIONS)
    assert table.path("aws:a", "aws:b") == ["aws:a", "aws:r", "aws:b"]
    relay_nodes = {k: v for k, v in NODES.items()}
    plan = plan_data_plane(table, cost, relay_nodes)
    pp = plan[pair_key("aws:a", "aws:b")]
    assert pp.primary.relay_region == "aws:r" and pp.primary.relay_node in NODES["aws:r"]
    # the backup shares no relay and no link with a-r-b: the cheaper of direct (200 ms) and a-s-b (100 ms)
    assert pp.backup == Hop("aws:s", "n-s1")
    # the same plan from both ends
    assert paths_from("aws:a", plan)["aws:b"] is paths_from("aws:b", plan)["aws:a"]
    peers, subnets = addresses()
    addr = {p.node_id: p for p in peers}
    progs = programs(plan, peers, subnets)
    r = pp.primary.relay_node
    for a in NODES["aws:a"]:
        assert deliver(progs, addr, a, "n-b1") == [a, r, "n-b1"]
        assert deliver(progs, addr, "n-b1", a) == ["n-b1", r, a]
        # probes stay direct: b's probe /32 is on b's own entry
        assert peer_for(progs[a], addr["n-b1"].probe_ip) == "n-b1"
    # the direct pairs stay direct
    assert deliver(progs, addr, "n-a1", r) == ["n-a1", r]
    assert deliver(progs, addr, "n-s1", "n-b1") == ["n-s1", "n-b1"]


def test_every_pair_delivers_both_ways_in_a_random_mesh() -> None:
    rng = np.random.default_rng(7)
    regions = [f"gcp:r{i}" for i in range(7)]
    for _ in range(6):
        rtts = {(a, b): float(rng.uniform(5, 250)) for i, a in enumerate(regions) for b in regions[i + 1 :]}
        cost, table = mesh(rtts, regions)
        nodes = {reg: [f"n-{reg[-2:]}-{k}" for k in range(1 + int(rng.integers(0, 3)))] for reg in regions}
        plan = plan_data_plane(table, cost, nodes)
        peers, subnets = addresses(regions, nodes)
        addr = {p.node_id: p for p in peers}
        progs = programs(plan, peers, subnets)
        for (a, b), pp in plan.items():
            if not pp.primary.direct:
                r = pp.primary.relay_region
                assert table.path(r, a) == [r, a] and table.path(b, r) == [b, r]  # the relay's legs are direct
                assert pp.backup is not None and pp.backup.relay_region != r
        for src in peers:
            for dst in peers:
                if src.region != dst.region:
                    hops = deliver(progs, addr, src.node_id, dst.node_id)
                    assert len(hops) <= 3
        # each pair switched to its backup (both ends, as local fast reroute does) still delivers
        first = {reg: next(p for p in peers if p.region == reg) for reg in regions}
        for (a, b), pp in plan.items():
            if pp.backup is None:
                continue
            switched = {k: (v if k != (a, b) else type(v)(v.backup, None)) for k, v in plan.items()}
            progs_b = programs(switched, peers, subnets)
            hops = deliver(progs_b, addr, first[a].node_id, first[b].node_id)
            assert hops[1:-1] == ([pp.backup.relay_node] if pp.backup.relay_node else [])
            assert deliver(progs_b, addr, first[b].node_id, first[a].node_id)[1:-1] == hops[1:-1]


def test_drained_region_and_nodes_never_relay() -> None:
    cost, table = mesh(RTT, REGIONS)
    plan = plan_data_plane(table, cost, {**NODES, "aws:r": []})  # every r node drained or down
    pp = plan[pair_key("aws:a", "aws:b")]
    assert pp.primary.relay_region == "aws:s"  # the next qualifying relay, cheaper than direct
    assert "best one-relay path" in (pp.note or "")
    plan = plan_data_plane(table, cost, NODES, drained_regions={"aws:r", "aws:s"})
    pp = plan[pair_key("aws:a", "aws:b")]
    assert pp.primary == DIRECT and pp.backup is None and "no relay region qualifies" in (pp.note or "")


def test_relay_node_is_deterministic_and_stable_under_churn() -> None:
    pair = ("aws:a", "aws:b")
    chosen = rendezvous(pair, ["n-r1", "n-r2", "n-r3"])
    assert chosen == rendezvous(pair, ["n-r3", "n-r1", "n-r2"])  # order does not matter
    others = [n for n in ["n-r1", "n-r2", "n-r3"] if n != chosen]
    assert rendezvous(pair, [chosen, others[0]]) == chosen  # another node leaving moves nothing
    assert rendezvous(pair, [*["n-r1", "n-r2", "n-r3"], "n-r9"]) in (chosen, "n-r9")
    # pairs spread over the nodes
    spread = {rendezvous((f"aws:x{i}", "aws:y"), ["n-r1", "n-r2", "n-r3"]) for i in range(30)}
    assert spread == {"n-r1", "n-r2", "n-r3"}


def test_two_relay_route_is_carried_by_one_relay_or_direct() -> None:
    regions = ["aws:a", "aws:p", "aws:q", "aws:b"]
    rtts = {("aws:a", "aws:p"): 10.0, ("aws:p", "aws:q"): 10.0, ("aws:q", "aws:b"): 10.0, ("aws:a", "aws:b"): 300.0}
    rtts |= {("aws:a", "aws:q"): 200.0, ("aws:p", "aws:b"): 200.0}
    cost, table = mesh(rtts, regions)
    assert table.path("aws:a", "aws:b") == ["aws:a", "aws:p", "aws:q", "aws:b"]
    plan = plan_data_plane(table, cost, {r: [f"n-{r[-1]}"] for r in regions})
    pp = plan[pair_key("aws:a", "aws:b")]
    # a-p and q-b are relayed themselves (through q and p), so neither p nor q has direct legs
    # to both ends: the pair is carried direct, and says so
    assert pp.primary == DIRECT and "aws:a-aws:p-aws:q-aws:b" in (pp.note or "")


def test_agent_derives_the_same_allowed_ips_and_switches_to_the_backup() -> None:
    """The agent's own rule (probes.dataplane) gives the controller's AllowedIPs for the primaries,
    and with the relay node down, the backup's: direct again, both ends alike."""
    cost, table = mesh(RTT, REGIONS)
    plan = plan_data_plane(table, cost, NODES)
    peers, subnets = addresses()
    addr = {p.node_id: p for p in peers}
    progs = programs(plan, peers, subnets)
    relay = plan[pair_key("aws:a", "aws:b")].primary.relay_node
    assert relay is not None

    def peerlist(me: PeerAddr) -> dict:
        mine = paths_from(me.region, plan)
        hop = lambda h: None if h is None else {"relay_region": h.relay_region, "relay_node": h.relay_node}  # noqa: E731
        return {
            "relay_data_plane": True,
            "peers": [
                {"node_id": p.node_id, "region": p.region, "overlay_ip": p.overlay_ip, "probe_ip": p.probe_ip}
                for p in peers
                if p.node_id != me.node_id
            ],
            "paths": [
                {"region": r, "subnet": subnets[r], "primary": hop(pp.primary), "backup": hop(pp.backup)}
                for r, pp in mine.items()
            ],
        }

    for me in peers:
        got = agent_dp.effective_allowed_ips(me.region, peerlist(me), down=set())
        assert {k: sorted(v) for k, v in got.allowed.items()} == {k: sorted(v) for k, v in progs[me.node_id].items()}
        assert "aws:b" not in got.switched
    # the relay node stops answering: a and b both take the backup relay, and say which pair switched
    switched = {}
    for me in peers:
        got = agent_dp.effective_allowed_ips(me.region, peerlist(me), down={relay})
        progs[me.node_id] = got.allowed
        switched[me.node_id] = got.switched
    assert switched["n-a1"] == {"aws:b": "via aws:s (n-s1)"} and switched["n-b1"] == {"aws:a": "via aws:s (n-s1)"}
    assert deliver(progs, addr, "n-a1", "n-b1") == ["n-a1", "n-s1", "n-b1"]
    assert deliver(progs, addr, "n-b1", "n-a2") == ["n-b1", "n-s1", "n-a2"]
    # and with aws:s down too, nothing better than the primary is left: the primary stays
    got = agent_dp.effective_allowed_ips("aws:a", peerlist(addr["n-a1"]), down={relay, "n-s1"})
    assert "aws:b" not in got.switched


def test_direct_pair_switches_to_its_backup_relay_only_when_all_its_nodes_are_down() -> None:
    cost, table = mesh(RTT, REGIONS)
    plan = plan_data_plane(table, cost, NODES)
    pp = plan[pair_key("aws:a", "aws:r")]
    assert pp.primary == DIRECT and pp.backup == Hop("aws:s", "n-s1")
    assert agent_dp.watched_next_hops(
        "aws:a",
        {
            "relay_data_plane": True,
            "peers": [{"node_id": n, "region": r} for r, ns in NODES.items() for n in ns if r != "aws:a"],
            "paths": [{"region": "aws:r", "subnet": "x", "primary": {"relay_region": None, "relay_node": None}}],
        },
    ) >= {"n-r1", "n-r2"}


@pytest.mark.parametrize("bad", ["100.96.0.0/11", "100.100.0.0/12"])
def test_probe_network_must_match_the_overlay(bad: str) -> None:
    with pytest.raises(ValueError):
        probe_address("100.96.0.2", OVERLAY, bad)
    assert probe_address("100.96.4.7", OVERLAY, PROBE) == "100.112.4.7"
