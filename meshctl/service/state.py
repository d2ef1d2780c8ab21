"""The in-memory mesh of one replica: regions, drains, nodes and tokens as the store last said,
plus the live report counters that only this replica's memory has.

The store's values are frozen; a change is a new value put in place (after the store took it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from meshctl.core.regions import InvalidRegionId, parse_region_id
from meshctl.service.errors import Invalid, Missing
from meshctl.store.db import Store
from meshctl.store.values import Drain, Node, NodeDrain, Region, Token

Db = Callable[..., Awaitable[Any]]


@dataclass(slots=True)
class NodeCounters:
    """A node's report counters, live (the store's copy is written with each report batch)."""

    last_report_at: float | None = None
    last_seq: int | None = None
    reports_accepted: int = 0

    @classmethod
    def stored(cls, node: Node) -> NodeCounters:
        return cls(node.last_report_at, node.last_seq, node.reports_accepted)


class MeshState:
    """Regions, drains, nodes and tokens; reloaded when another writer moved their version."""

    def __init__(self, store: Store, db: Db, node_down_after_s: float) -> None:
        self._store = store
        self._db = db
        self.node_down_after_s = node_down_after_s
        self.regions: dict[str, Region] = {}
        self.drains: dict[str, Drain] = {}
        self.nodes: dict[str, Node] = {}
        self.node_drains: dict[str, NodeDrain] = {}  # node id -> its own drain (its region's is in `drains`)
        self.counters: dict[str, NodeCounters] = {}
        self.node_by_hash: dict[str, str] = {}
        self.tokens_by_hash: dict[str, Token] = {}
        self.region_last_report: dict[str, float] = {}
        # how far each node's clock is ahead (+) or behind (-) ours, as this replica measured it
        self.clock_offsets: dict[str, float] = {}
        self.skewed: set[str] = set()  # nodes whose offset is beyond the tolerance
        self.peer_generation = 0
        self.config_version = -1

    # --- reload from the store -----------------------------------------------------------

    async def reload(self, force: bool = False) -> tuple[bool, set[str]]:
        """Reload what changed in the store: (anything changed, ids of nodes that are gone)."""
        counters = await self._db(self._store.counters)
        version, peers = counters.get("config_version", 0), counters.get("peer_generation", 0)
        changed = False
        gone: set[str] = set()
        if force or version != self.config_version:
            regions, drains, tokens = await asyncio.gather(
                self._db(self._store.regions), self._db(self._store.drains), self._db(self._store.tokens)
            )
            self.regions = {r.id: r for r in regions}
            self.drains = {d.region: d for d in drains}
            self.tokens_by_hash = {t.token_hash: t for t in tokens}
            self.config_version = version
            changed = True
        if force or peers != self.peer_generation:
            nodes, node_drains = await asyncio.gather(self._db(self._store.nodes), self._db(self._store.node_drains))
            self.node_drains = {d.node_id: d for d in node_drains}
            gone = self._load_nodes(nodes, peers)
            changed = True
        return changed, gone

    def _load_nodes(self, nodes: list[Node], generation: int) -> set[str]:
        gone = set(self.nodes) - {n.id for n in nodes}
        counters: dict[str, NodeCounters] = {}
        for n in nodes:
            live, stored = self.counters.get(n.id), NodeCounters.stored(n)
            if live is not None and live.last_report_at and (stored.last_report_at or 0) < live.last_report_at:
                live.reports_accepted = max(live.reports_accepted, stored.reports_accepted)
                counters[n.id] = live  # this replica heard from it after the store's copy was written
            else:
                counters[n.id] = stored
        self.nodes = {n.id: n for n in nodes}
        self.counters = counters
        self.node_by_hash = {n.token_hash: n.id for n in nodes}
        self.peer_generation = max(self.peer_generation, generation)
        return gone

    # --- changes this replica made (already in the store) --------------------------------

    def put_region(self, region: Region) -> None:
        self.regions[region.id] = region

    def put_drain(self, drain: Drain) -> None:
        self.drains[drain.region] = drain

    def drop_drain(self, region_id: str) -> None:
        self.drains.pop(region_id, None)

    def put_node_drain(self, drain: NodeDrain, peer_generation: int) -> None:
        self.node_drains[drain.node_id] = drain
        self.peer_generation = max(self.peer_generation, peer_generation)

    def drop_node_drain(self, node_id: str, peer_generation: int) -> None:
        self.node_drains.pop(node_id, None)
        self.peer_generation = max(self.peer_generation, peer_generation)

    def put_token(self, token: Token) -> None:
        self.tokens_by_hash[token.token_hash] = token

    def drop_token(self, token_hash: str) -> None:
        self.tokens_by_hash.pop(token_hash, None)

    def put_node(self, node: Node, peer_generation: int) -> None:
        """A node joined or changed (its live counters are kept)."""
        self.nodes[node.id] = node
        self.counters.setdefault(node.id, NodeCounters.stored(node))
        self.node_by_hash[node.token_hash] = node.id
        self.peer_generation = max(self.peer_generation, peer_generation)

    def drop_node(self, node: Node, peer_generation: int) -> None:
        self.nodes.pop(node.id, None)
        self.node_drains.pop(node.id, None)
        self.counters.pop(node.id, None)
        self.clock_offsets.pop(node.id, None)
        self.skewed.discard(node.id)
        self.node_by_hash.pop(node.token_hash, None)
        self.peer_generation = max(self.peer_generation, peer_generation)

    # --- reading -------------------------------------------------------------------------

    def counters_of(self, node_id: str) -> NodeCounters:
        found = self.counters.get(node_id)
        return found if found is not None else NodeCounters()

    def node_up(self, node_id: str, now: float) -> bool:
        c = self.counters.get(node_id)
        return c is not None and c.last_report_at is not None and now - c.last_report_at <= self.node_down_after_s

    def nodes_up(self, now: float) -> int:
        return sum(1 for n in self.nodes if self.node_up(n, now))

    def region_of(self, node_id: str) -> str | None:
        node = self.nodes.get(node_id)
        return None if node is None else node.region

    def region_state(self, region_id: str, states: dict[str, str]) -> str:
        """Drained (manual or automatic, as the store says), else as the snapshot judged it."""
        if region_id in self.drains:
            return "drained"
        return states.get(region_id, "active")

    def drain_of_node(self, node_id: str) -> tuple[str, Drain | NodeDrain] | None:
        """Why a node takes no new sessions and relays nothing: ("node", its drain) or ("region",
        its region's drain; manual or automatic), the node's own first; None when it is active."""
        own = self.node_drains.get(node_id)
        if own is not None:
            return "node", own
        node = self.nodes.get(node_id)
        region_drain = None if node is None else self.drains.get(node.region)
        return None if region_drain is None else ("region", region_drain)

    @property
    def drained_nodes(self) -> frozenset[str]:
        """Live nodes that are drained, by their own drain or their region's: they take no new
        sessions and relay nothing (the data plane reads this)."""
        return frozenset(n.id for n in self.nodes.values() if n.id in self.node_drains or n.region in self.drains)

    def no_transit_regions(self) -> frozenset[str]:
        """Regions that relay nothing: drained ones, and those whose every node is drained (a
        region with no node at all is left to its own state, as before node drains)."""
        by_region: dict[str, bool] = {}
        for n in self.nodes.values():
            by_region[n.region] = by_region.get(n.region, True) and n.id in self.node_drains
        return frozenset(self.drains) | {rid for rid, all_drained in by_region.items() if all_drained}

    def placeable_nodes(self, region_id: str) -> list[str]:
        """The region's nodes that take new sessions (not drained, by themselves or the region), by id."""
        if region_id in self.drains:
            return []
        return sorted(n.id for n in self.nodes.values() if n.region == region_id and n.id not in self.node_drains)

    def last_report_by_region(self) -> dict[str, float]:
        """When each region's nodes were last heard from (by any replica, as far as we know)."""
        out = dict(self.region_last_report)
        for node_id, c in self.counters.items():
            node = self.nodes.get(node_id)
            if node is not None and c.last_report_at:
                out[node.region] = max(out.get(node.region, 0), c.last_report_at)
        return out

    # --- lookups the API answers 404 or 422 for ------------------------------------------

    def region(self, region_id: str) -> Region:
        check_region_id(region_id)
        r = self.regions.get(region_id)
        if r is None:
            raise Missing(f"unknown region {region_id!r}", field="region")
        return r

    def node(self, node_id: str) -> Node:
        n = self.nodes.get(node_id)
        if n is None:
            raise Missing(f"unknown node {node_id!r}", field="node_id")
        return n


def check_region_id(region_id: str, field: str = "region") -> tuple[str, str]:
    """(cloud, cloud region) of a well-formed region id; Invalid naming `field` otherwise."""
    try:
        return parse_region_id(region_id)
    except InvalidRegionId as exc:
        raise Invalid(f"{field}: {exc}", field=field) from exc
