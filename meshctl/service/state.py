"""The in-memory mesh of one replica: regions, drains, nodes and tokens as the store last said,
plus the live report counters that only this replica's memory has.

The store's values are frozen; a change is a new value put in place (after the store took it).

Nodes follow the store by peer generation: `peer_generation` is G when every node and node-drain
change up to G is here. A change this replica made (a join, a removal, a drain) comes back from
the store with its generation and is put in place; when it is not G + 1 (another replica's
change, or a concurrent join of ours, committed in between), the replica catches up by reading
the nodes changed after G (`Store.nodes_since`): a join costs a few rows, never the fleet. Each
node carries the generation of its last change, and an older version never replaces a newer one
(nor brings back a removed node), whatever order the answers arrive in. Catching up and putting
in place take turns (one lock), so a read made before a change never lands after it.
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
        self.nodes_per_region: dict[str, int] = {}  # live nodes by region (join policies' caps)
        self.peer_generation = 0  # every node change up to it is here (see the module's docstring)
        self.config_version = -1
        self.drain_version = 0  # moves with any region or node drain (the peer book's drained flags)
        self.node_rows_loaded = 0  # node rows read from the store, all told (a join reads a few)
        self.nodes_forgotten = 0  # moves whenever a node may have left `nodes` (peer lists checked before are stale)
        self._node_gen: dict[str, int] = {}  # node id -> generation of the version here (removed ones too)
        self._turns = asyncio.Lock()  # catching up and putting changes in place
        self._watchers: list[Callable[[str, Node | None], None]] = []
        self._drained: tuple[tuple[int, int, int], frozenset[str]] | None = None

    def watch(self, on_node: Callable[[str, Node | None], None]) -> None:
        """Call `on_node(id, node)` after a node joins or changes, `on_node(id, None)` after it leaves;
        `on_node("", None)` after a full reload (every node may have changed)."""
        self._watchers.append(on_node)

    def _tell(self, node_id: str, node: Node | None) -> None:
        for w in self._watchers:
            w(node_id, node)

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
            self.drain_version += 1
            self.tokens_by_hash = {t.token_hash: t for t in tokens}
            self.config_version = version
            changed = True
        if force:
            async with self._turns:
                gen, nodes, node_drains = await self._db(self._store.all_nodes)
                self._set_node_drains(node_drains)
                gone = self._load_nodes(nodes, gen)
            changed = True
        elif peers > self.peer_generation:  # (a smaller one was read before a change of ours landed)
            async with self._turns:
                gone = await self._catch_up()
            changed = True
        return changed, gone

    def _load_nodes(self, nodes: list[Node], generation: int) -> set[str]:
        """Every live node, as the store had them at `generation` (a start, or a forced reload)."""
        gone = set(self.nodes) - {n.id for n in nodes}
        self.nodes_forgotten += 1
        counters: dict[str, NodeCounters] = {}
        for n in nodes:
            counters[n.id] = self._merged_counters(n)
        self.nodes = {n.id: n for n in nodes}
        self.counters = counters
        self.node_by_hash = {n.token_hash: n.id for n in nodes}
        self._node_gen = {k: v for k, v in self._node_gen.items() if v > generation}  # removed after the read
        self._node_gen.update((n.id, n.peer_gen) for n in nodes)
        self.nodes_per_region = {}
        for n in nodes:
            self.nodes_per_region[n.region] = self.nodes_per_region.get(n.region, 0) + 1
        self.node_rows_loaded += len(nodes)
        self.peer_generation = max(self.peer_generation, generation)
        self._tell("", None)
        return gone

    def _merged_counters(self, n: Node) -> NodeCounters:
        live, stored = self.counters.get(n.id), NodeCounters.stored(n)
        if live is not None and live.last_report_at and (stored.last_report_at or 0) < live.last_report_at:
            live.reports_accepted = max(live.reports_accepted, stored.reports_accepted)
            return live  # this replica heard from it after the store's copy was written
        return stored

    async def _catch_up(self) -> set[str]:
        """Read the nodes changed after our generation and put them in place (the lock is held):
        the ids of the nodes that left."""
        gen, changed, node_drains = await self._db(self._store.nodes_since, self.peer_generation)
        self.node_rows_loaded += len(changed)
        gone = {n.id for n in changed if n.removed_at is not None and n.id in self.nodes}
        for n in changed:
            self._apply(n)
        self._set_node_drains(node_drains)
        self.peer_generation = max(self.peer_generation, gen)
        return gone

    def _set_node_drains(self, node_drains: list[NodeDrain]) -> None:
        found = {d.node_id: d for d in node_drains}
        if found != self.node_drains:
            self.node_drains = found
            self.drain_version += 1

    def _apply(self, node: Node) -> bool:
        """Put this version of a node in place unless a newer one (or its removal) is here already:
        everything up to `peer_generation` is, and `_node_gen` says what is past it."""
        if node.peer_gen <= self.peer_generation or node.peer_gen <= self._node_gen.get(node.id, -1):
            return False  # that version or a newer one is here (a version is one committed change)
        self._node_gen[node.id] = node.peer_gen
        old = self.nodes.get(node.id)
        if node.removed_at is not None:
            if old is not None:
                self._forget(old)
                self._tell(node.id, None)
            return True
        if old is None:
            self.nodes_per_region[node.region] = self.nodes_per_region.get(node.region, 0) + 1
            self.counters[node.id] = self._merged_counters(node)
        elif old.token_hash != node.token_hash:
            self.node_by_hash.pop(old.token_hash, None)
        self.nodes[node.id] = node
        self.node_by_hash[node.token_hash] = node.id
        self._tell(node.id, node)
        return True

    def _forget(self, node: Node) -> None:
        self.nodes.pop(node.id, None)
        self.nodes_forgotten += 1
        if self.node_drains.pop(node.id, None) is not None:
            self.drain_version += 1
        self.counters.pop(node.id, None)
        self.clock_offsets.pop(node.id, None)
        self.skewed.discard(node.id)
        self.node_by_hash.pop(node.token_hash, None)
        left = self.nodes_per_region.get(node.region, 0) - 1
        if left > 0:
            self.nodes_per_region[node.region] = left
        else:
            self.nodes_per_region.pop(node.region, None)

    async def _caught_up_to(self, generation: int) -> set[str]:
        """After a change of ours at `generation` (the lock is held): the generation moves on when it
        was the next one; past a gap, catch up. The ids of the nodes that left meanwhile."""
        if generation == self.peer_generation + 1:
            self.peer_generation = generation
            return set()
        if generation > self.peer_generation:
            return await self._catch_up()
        return set()

    # --- changes this replica made (already in the store) --------------------------------

    def put_region(self, region: Region) -> None:
        self.regions[region.id] = region

    async def put_drain(self, drain: Drain, peer_generation: int) -> set[str]:
        """A region drain this replica set, at `peer_generation`: in place at once (its nodes'
        long polls wake on it, no reload first). The ids of nodes that left meanwhile."""
        async with self._turns:
            self.drains[drain.region] = drain
            self.drain_version += 1
            return await self._caught_up_to(peer_generation)

    async def drop_drain(self, region_id: str, peer_generation: int) -> set[str]:
        """A region drain this replica lifted, at `peer_generation` (see `put_drain`)."""
        async with self._turns:
            self.drains.pop(region_id, None)
            self.drain_version += 1
            return await self._caught_up_to(peer_generation)

    async def put_node_drain(self, drain: NodeDrain, peer_generation: int) -> set[str]:
        async with self._turns:
            if peer_generation > self.peer_generation:
                self.node_drains[drain.node_id] = drain
                self.drain_version += 1
            return await self._caught_up_to(peer_generation)

    async def drop_node_drain(self, node_id: str, peer_generation: int) -> set[str]:
        async with self._turns:
            if peer_generation > self.peer_generation and self.node_drains.pop(node_id, None) is not None:
                self.drain_version += 1
            return await self._caught_up_to(peer_generation)

    def put_token(self, token: Token) -> None:
        self.tokens_by_hash[token.token_hash] = token

    def drop_token(self, token_hash: str) -> None:
        self.tokens_by_hash.pop(token_hash, None)

    def know_node(self, node: Node) -> None:
        """A node the store just named (a credential not in memory): in place now, unless a newer
        version is here; the generation does not move (the next reload brings the rest)."""
        self._apply(node)

    async def put_node(self, node: Node, peer_generation: int) -> set[str]:
        """A node this replica registered or changed, at `peer_generation` (its live counters are
        kept): the ids of the nodes that left meanwhile (when it had to catch up)."""
        async with self._turns:
            self._apply(node)
            return await self._caught_up_to(peer_generation)

    async def drop_node(self, node: Node, peer_generation: int) -> set[str]:
        """A node this replica removed (`node` as the store returned it, removed)."""
        async with self._turns:
            self._apply(node)
            return await self._caught_up_to(peer_generation)

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
        sessions and relay nothing (the data plane reads this). Worked out again only when a drain
        or the nodes moved."""
        key = (self.drain_version, self.peer_generation, len(self.nodes))
        if self._drained is None or self._drained[0] != key:
            drained = frozenset(
                n.id for n in self.nodes.values() if n.id in self.node_drains or n.region in self.drains
            )
            self._drained = (key, drained)
        return self._drained[1]

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
