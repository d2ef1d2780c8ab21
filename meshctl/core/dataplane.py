"""The relayed data plane: which path overlay traffic between two regions takes, and each peer's
AllowedIPs that make WireGuard send it that way. Pure: the controller serves the result in every
node's peer list and the agent programs it.

WireGuard's cryptokey routing uses a peer's AllowedIPs both to pick the peer a packet goes to and
to accept the inner source address of what that peer sends. So a relayed pair uses the same relay
node in both directions: for the unordered region pair {X, Y} there is one path, direct or through
exactly one relay region R (whose own routes to X and to Y are direct, so its node forwards between
tunnels it already has) and one node r of R. Then on a node of X, r's entry carries Y's region
subnet and Y's nodes keep only their probe addresses (a /32 on their own entry would win by longest
prefix); symmetrically on Y; on r both ends keep their own addresses. Probe addresses are never
relayed, so every direct pair stays measured while its data is relayed.

Routes through two relays are carried on the best qualifying one-relay path (or direct when none
is cheaper): a two-hop relay would need the middle relays to agree on more state than a peer list
holds, and the note on the pair says so.

Each pair also has a backup that shares no relay and no link with the primary (direct for a relayed
pair, another relay otherwise; the cheaper of them): the agent switches to it on its own when the
primary's next hop stops answering (local fast reroute), and the controller's next table confirms
or replaces it.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from meshctl.core.routing import RouteTable


@dataclass(frozen=True)
class Hop:
    """One data-plane path between two regions: direct (relay_region None) or through one relay node."""

    relay_region: str | None = None
    relay_node: str | None = None

    @property
    def direct(self) -> bool:
        return self.relay_region is None


DIRECT = Hop()


@dataclass(frozen=True)
class PairPlan:
    """The path of an unordered region pair, the same both ways, and its backup (None: no other path)."""

    primary: Hop
    backup: Hop | None
    note: str | None = None


@dataclass(frozen=True)
class PeerAddr:
    node_id: str
    region: str
    overlay_ip: str
    probe_ip: str


def pair_key(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a <= b else (b, a)


def rendezvous(pair: tuple[str, str], nodes: Iterable[str]) -> str | None:
    """The relay node of a pair: highest hash of (pair, node). Deterministic, and when a node comes
    or goes only the pairs it carried move (rendezvous hashing)."""
    best: tuple[bytes, str] | None = None
    for n in nodes:
        h = hashlib.sha256(f"{pair[0]}|{pair[1]}|{n}".encode()).digest()
        if best is None or h > best[0]:
            best = (h, n)
    return None if best is None else best[1]


def plan_data_plane(
    table: RouteTable,
    cost: np.ndarray,
    relay_nodes: Mapping[str, Sequence[str]],
    drained_regions: Collection[str] = (),
) -> dict[tuple[str, str], PairPlan]:
    """The path of every region pair (keys sorted), from the route table and the link costs.

    `cost` is the link cost matrix the table was computed from (inf where unusable); `relay_nodes`
    maps each region to the nodes that may relay (up and not drained; a region without any never
    relays). A pair is relayed when the table relays it in either direction and a relay region
    qualifies: not drained, not an end, routes to both ends direct both ways, a relay node, and a
    finite cost both ways. The table's own relay is preferred (the cheaper direction's first);
    otherwise the cheapest qualifying relay by the sum of both directions, when it is cheaper than
    direct both ways.
    """
    regions = table.regions
    idx = table.index
    drained = set(drained_regions)

    def direct_both(a: str, b: str) -> bool:
        return table.path(a, b) == [a, b] and table.path(b, a) == [b, a]

    def direct_cost(a: str, b: str) -> float:
        return float(cost[idx[a], idx[b]] + cost[idx[b], idx[a]])

    def relay_cost(a: str, r: str, b: str) -> float:
        i, k, j = idx[a], idx[r], idx[b]
        return float(cost[i, k] + cost[k, j] + cost[j, k] + cost[k, i])

    def qualifies(a: str, r: str, b: str) -> bool:
        return (
            r not in (a, b)
            and r not in drained
            and bool(relay_nodes.get(r))
            and direct_both(r, a)
            and direct_both(r, b)
            and math.isfinite(relay_cost(a, r, b))
        )

    def hop(a: str, r: str, b: str) -> Hop:
        return Hop(r, rendezvous((a, b), sorted(relay_nodes[r])))

    primaries: dict[tuple[str, str], tuple[Hop, str | None]] = {}
    for ia, a in enumerate(regions):
        for b in regions[ia + 1 :]:
            fwd, back = table.path(a, b), table.path(b, a)
            relayed = [p for p in (fwd, back) if p is not None and len(p) > 2]
            primary, note = DIRECT, None
            if relayed:
                named = sorted(
                    (p for p in relayed if len(p) == 3 and qualifies(a, p[1], b)),
                    key=lambda p: float(table.cost[idx[p[0]], idx[p[-1]]]),
                )
                ranked = sorted((r for r in regions if qualifies(a, r, b)), key=lambda r: (relay_cost(a, r, b), r))
                d = direct_cost(a, b)
                if named:
                    primary = hop(a, named[0][1], b)
                elif ranked and (not math.isfinite(d) or relay_cost(a, ranked[0], b) < d):
                    primary = hop(a, ranked[0], b)
                    note = f"route {'-'.join(relayed[0])} carried through the best one-relay path"
                else:
                    note = f"route {'-'.join(relayed[0])} carried direct: no relay region qualifies"
            primaries[pair_key(a, b)] = (primary, note)

    def backup_relay(a: str, r: str, b: str, primary: Hop) -> bool:
        """A backup's relay needs direct *data-plane* legs (primaries carried direct count too)."""
        return (
            r not in (a, b, primary.relay_region)
            and r not in drained
            and bool(relay_nodes.get(r))
            and primaries[pair_key(r, a)][0].direct
            and primaries[pair_key(r, b)][0].direct
            and math.isfinite(relay_cost(a, r, b))
        )

    out: dict[tuple[str, str], PairPlan] = {}
    for (a, b), (primary, note) in primaries.items():
        d = direct_cost(a, b)
        others = sorted((r for r in regions if backup_relay(a, r, b, primary)), key=lambda r: (relay_cost(a, r, b), r))
        backup: Hop | None = None
        if primary.direct:
            backup = hop(a, others[0], b) if others else None
        elif math.isfinite(d) and (not others or d <= relay_cost(a, others[0], b)):
            backup = DIRECT
        elif others:
            backup = hop(a, others[0], b)
        out[(a, b)] = PairPlan(primary, backup, note)
    return out


def allowed_ips(
    own_region: str,
    peers: Sequence[PeerAddr],
    paths: Mapping[str, Hop],
    subnets: Mapping[str, str],
) -> dict[str, list[str]]:
    """Each peer's AllowedIPs on a node of `own_region`, given the path to every other region.

    Every peer keeps its probe /32; its data /32 stays unless its region is reached through a
    relay; a relay node also carries the data subnet of each region it relays to. A region with no
    path given is direct. (The agent applies the same rule to switch to a backup: probes.dataplane.)
    """
    out: dict[str, list[str]] = {}
    for p in peers:
        path = paths.get(p.region, DIRECT) if p.region != own_region else DIRECT
        ips = [f"{p.probe_ip}/32"]
        if path.direct:
            ips.insert(0, f"{p.overlay_ip}/32")
        ips += [subnets[dst] for dst, h in sorted(paths.items()) if h.relay_node == p.node_id and dst in subnets]
        out[p.node_id] = ips
    return out


def paths_from(own_region: str, plan: Mapping[tuple[str, str], PairPlan]) -> dict[str, PairPlan]:
    """The plans of `own_region`'s pairs, by the other region."""
    out: dict[str, PairPlan] = {}
    for (a, b), p in plan.items():
        if a == own_region:
            out[b] = p
        elif b == own_region:
            out[a] = p
    return out
