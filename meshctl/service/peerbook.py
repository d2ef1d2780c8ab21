"""Peer lists as JSON, kept current entry by entry: a join adds one entry, it rebuilds no list.

Every node's peer list holds every other node (the WireGuard mesh; the agent picks its probe
targets, k per other region, from it). Without the relayed data plane a node's entry is the same
in every list (its keys, endpoint, overlay and probe /32s, drained flag), so the book keeps each
entry's JSON once, in node id order, and a list is those entries joined with the asking node's
own left out: a memory copy, no model or address arithmetic per peer. An entry is made again only
when its node changed (the state tells the book: `MeshState.watch`), or its drained flag did.

With the relayed data plane on, AllowedIPs depend on the asking node's region and the route
table, so the list is built by `Views.peers_of`, which stays the reference for the fast path
(tests/api/test_peer_book.py holds the two equal on generated fleets).

Deltas (`GET /v1/nodes/{id}/peers?since=G`): each entry made after the last full rebuild is
tagged with the generation after the one the state showed when it was made, and each node that
left with a tombstone tagged the same way. A tag is never below the change's own generation (a
drain can land in the state a moment before its generation does), so the delta since G (the
entries and tombstones tagged after G) holds every change after G, and sometimes one the asker
has already. A log of (tag, node) in tag order makes a delta cost the changes after G, not the
fleet. Before the last full rebuild, past the state's generation, or with the relayed data
plane, the answer is the whole list.
"""

from __future__ import annotations

import asyncio
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterator
from functools import partial
from itertools import chain

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from meshctl.core.ipam import probe_address
from meshctl.service.snapshot import Snapshot
from meshctl.service.state import MeshState
from meshctl.service.views import Views
from meshctl.settings import Settings
from meshctl.store.values import Node
from meshctl.wire import schemas as s

_EMPTY = b'"peers":[]'
MAX_TOMBSTONES = 10_000  # past it the older half is dropped, and deltas from before them are whole lists


class PeerBook:
    """The JSON of every node's entry, in node id order, made once per change of that node."""

    def __init__(
        self, state: MeshState, views: Views, settings: Settings, generation: Callable[[], int] | None = None
    ) -> None:
        self._state = state
        self._generation = generation or (lambda: state.peer_generation)  # what the lists' ETag says
        self._views = views
        self._settings = settings
        self._ids: list[str] = []  # node ids, sorted
        self._entries: list[bytes] = []  # the JSON of each one's entry, as in _ids
        self._made: dict[str, tuple[Node, bool]] = {}  # the version and drained flag each entry shows
        self._dirty: set[str] = set()
        self._all_dirty = True
        self._tags: dict[str, int] = {}  # node id -> tag of its entry, for entries made since the rebuild
        self._tombstones: dict[str, int] = {}  # node id -> tag of its leaving
        self._changes: list[tuple[int, str]] = []  # (tag, node id) of each entry made or node gone, in tag order
        self._horizon = 0  # a delta since a generation below this is the whole list
        self._drains_seen = -1
        self.entries_built = 0  # entries made since start (a join makes one)
        self.lists_served = 0
        self.deltas_served = 0  # of those, deltas (`?since=`)
        self.polls_woken = 0  # waiting long polls woken by a move of the generation
        self.polls_waiting = 0
        self._moved: asyncio.Future[None] | None = None  # resolved when the generation moves
        self._armed_at = -1  # the generation `_moved` waits to move from
        self._fire_due = False
        self.closing = False  # the server shuts down: no poll waits any more
        state.watch(self._changed)

    def _changed(self, node_id: str, node: Node | None) -> None:
        if not node_id:
            self._all_dirty = True
        else:
            self._dirty.add(node_id)

    # --- keeping the entries ----------------------------------------------------------------

    def _entry(self, node: Node, drained: bool) -> bytes:
        cfg = self._settings
        probe = probe_address(node.overlay_ip, cfg.overlay_cidr, cfg.probe_cidr)
        self.entries_built += 1
        self._made[node.id] = (node, drained)
        return (
            s.Peer(
                node_id=node.id,
                name=node.name,
                region=node.region,
                public_key=node.public_key,
                endpoint=node.endpoint,
                overlay_ip=node.overlay_ip,
                allowed_ips=[f"{node.overlay_ip}/32", f"{probe}/32"],
                drained=drained,
                probe_ip=probe,
            )
            .model_dump_json()
            .encode()
        )

    def _drained(self, node: Node) -> bool:
        state = self._state
        return node.id in state.node_drains or node.region in state.drains

    def _sync(self) -> None:
        """Bring the entries to the state: every one after a full reload, else the changed nodes',
        and after a drain moved, those whose drained flag flipped."""
        state = self._state
        tag = self._generation() + 1
        if self._all_dirty:
            self._all_dirty, self._dirty = False, set()
            self._drains_seen = state.drain_version
            nodes = sorted(state.nodes.values(), key=lambda n: n.id)
            self._made = {}
            self._ids = [n.id for n in nodes]
            self._entries = [self._entry(n, self._drained(n)) for n in nodes]
            self._tags, self._tombstones, self._changes, self._horizon = {}, {}, [], tag
            return
        if self._dirty:
            dirty, self._dirty = self._dirty, set()
            for node_id in sorted(dirty):
                self._put(node_id, state.nodes.get(node_id), tag)
        if self._drains_seen != state.drain_version:
            self._drains_seen = state.drain_version
            for i, node_id in enumerate(self._ids):
                node, drained = self._made[node_id]
                if self._drained(node) != drained:
                    self._entries[i] = self._entry(node, not drained)
                    self._tagged(node_id, tag)

    def _put(self, node_id: str, node: Node | None, tag: int) -> None:
        i = bisect_left(self._ids, node_id)
        here = i < len(self._ids) and self._ids[i] == node_id
        if node is None:
            if here:
                del self._ids[i], self._entries[i]
                self._made.pop(node_id, None)
                self._tags.pop(node_id, None)
                self._bury(node_id, tag)
            return
        made = self._made.get(node_id)
        drained = self._drained(node)
        if here and made is not None and made[0] is node and made[1] == drained:
            return
        entry = self._entry(node, drained)
        self._tagged(node_id, tag)
        self._tombstones.pop(node_id, None)
        if here:
            self._entries[i] = entry
        else:
            self._ids.insert(i, node_id)
            self._entries.insert(i, entry)

    def _tagged(self, node_id: str, tag: int) -> None:
        self._tags[node_id] = tag
        self._log(node_id, tag)

    def _log(self, node_id: str, tag: int) -> None:
        """Append to the change log (tags only grow); rewritten from the tags when it holds twice
        what they do, so it stays O(nodes)."""
        self._changes.append((tag, node_id))
        if len(self._changes) > 2 * (len(self._tags) + len(self._tombstones)) + 64:
            self._changes = sorted((t, n) for n, t in chain(self._tags.items(), self._tombstones.items()))

    def _bury(self, node_id: str, tag: int) -> None:
        self._tombstones[node_id] = tag
        self._log(node_id, tag)
        if len(self._tombstones) > MAX_TOMBSTONES:
            by_age = sorted(self._tombstones.items(), key=lambda kv: kv[1])
            dropped = by_age[: len(by_age) // 2]
            self._horizon = max(self._horizon, dropped[-1][1])
            self._tombstones = dict(by_age[len(by_age) // 2 :])

    # --- long polls ---------------------------------------------------------------------------

    async def wait_moved(self, start: int, timeout: float, gone: Callable[[], bool]) -> None:
        """Until the lists' generation moves from `start` (or `gone()`), at most `timeout` seconds.

        The waiting polls share one future, resolved once when the generation moves (`poke`):
        a route tick, an event or a report wakes none of them, and the joins of one batch wake
        each of them once."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._generation() == start and not gone() and not self.closing:
            if self._moved is None or self._moved.done():
                self._moved, self._armed_at = loop.create_future(), self._generation()
            left = deadline - loop.time()
            if left <= 0:
                return
            self.polls_waiting += 1
            try:
                await asyncio.wait_for(asyncio.shield(self._moved), left)
            except TimeoutError:
                return
            finally:
                self.polls_waiting -= 1
            self.polls_woken += 1

    def poke(self) -> None:
        """Something changed: wake the waiting polls if the generation moved (once per loop turn,
        so the joins answered together move it once for them)."""
        if self._moved is None or self._fire_due:
            return
        self._fire_due = True
        asyncio.get_running_loop().call_soon(self._fire)

    def release(self) -> None:
        """The server shuts down: wake every waiting poll at once, and let none wait from now on."""
        self.closing = True
        if self._moved is not None and not self._moved.done():
            self._moved.set_result(None)
        self._moved = None

    def _fire(self) -> None:
        self._fire_due = False
        moved = self._moved
        if moved is not None and not moved.done() and self._generation() != self._armed_at:
            moved.set_result(None)
            self._moved = None

    # --- serving lists ----------------------------------------------------------------------

    def peers_json(self, node_id: str) -> bytes:
        """The `peers` array of `node_id`'s list (every other node), as JSON."""
        self._sync()
        i = bisect_left(self._ids, node_id)
        entries = self._entries
        if i < len(self._ids) and self._ids[i] == node_id:
            return b"[" + b",".join(chain(entries[:i], entries[i + 1 :])) + b"]"
        return b"[" + b",".join(entries) + b"]"

    def delta(self, node_id: str, since: int) -> tuple[bytes, list[str]] | None:
        """The `peers` array of the entries changed after generation `since` (the asking node's own
        left out) and the ids of the nodes that left after it; None: only the whole list will do."""
        self._sync()
        if not self.fast() or since < self._horizon or since > self._generation():
            return None
        # the nodes that changed after `since`, from the log's tail: a poll costs the changes, not the fleet
        moved = {n for _, n in self._changes[bisect_right(self._changes, (since, "\uffff")) :]}
        changed = sorted(n for n in moved if n in self._tags and n != node_id)
        entries = self._entries
        found = [entries[i] for i in map(partial(bisect_left, self._ids), changed)]
        removed = sorted(n for n in moved if n in self._tombstones)
        return b"[" + b",".join(found) + b"]", removed

    def envelope(self, node_id: str, snap: Snapshot | None) -> s.PeerList:
        """`node_id`'s peer list with its peers left out (`splice` puts them in)."""
        state, views, cfg = self._state, self._views, self._settings
        node = state.node(node_id)
        return s.PeerList(
            node_id=node_id,
            generation=views.data_plane.generation(snap),
            overlay_cidr=cfg.overlay_cidr,
            peers=[],
            self_state=views.self_state(node_id),
            probe_ip=probe_address(node.overlay_ip, cfg.overlay_cidr, cfg.probe_cidr),
            probe_cidr=cfg.probe_cidr,
            relay_data_plane=False,
            paths=[],
        )

    def peer_list_json(self, node_id: str, snap: Snapshot | None, since: int | None = None) -> bytes:
        """`node_id`'s peer list as JSON, the body of `GET /v1/nodes/{id}/peers`: with `since`, only
        what changed after that generation when the book can tell (`delta`), else the whole list."""
        self.lists_served += 1
        if self._settings.relay_data_plane:
            return self._views.peers_of(node_id, snap).model_dump_json().encode()
        found = self.delta(node_id, since) if since is not None else None
        if found is None:
            return splice(self.envelope(node_id, snap).model_dump_json().encode(), self.peers_json(node_id))
        self.deltas_served += 1
        changed, removed = found
        envelope = self.envelope(node_id, snap).model_copy(update={"since": since, "removed": removed})
        return splice(envelope.model_dump_json().encode(), changed)

    def fast(self) -> bool:
        """Whether lists come from the book (no relayed data plane) rather than `Views.peers_of`."""
        return not self._settings.relay_data_plane


def splice(body: bytes, peers: bytes) -> bytes:
    """Put a `peers` array (JSON) in place of the first empty one in `body`: the peer list's own
    (its node id, CIDRs and tokens before it cannot hold a quote)."""
    head, found, tail = body.partition(_EMPTY)
    if not found:
        raise ValueError("no empty peers array to fill")
    return head + b'"peers":' + peers + tail


class PeerBookCollector(Collector):
    """What joins cost the peer lists, for /metrics: entries made, node rows read, lists served.
    A join makes one entry and reads a few rows, whatever the fleet's size."""

    def __init__(self, book: PeerBook, state: MeshState) -> None:
        self.book = book
        self.state = state

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "mesh_peer_entries_built", "Peer list entries made (one per node change)", self.book.entries_built
        )
        yield CounterMetricFamily(
            "mesh_peer_lists_served", "Peer lists sent (joins and GET /v1/nodes/{id}/peers)", self.book.lists_served
        )
        yield CounterMetricFamily(
            "mesh_peer_deltas_served",
            "Of the peer lists sent, those that held only changes (?since=)",
            self.book.deltas_served,
        )
        yield CounterMetricFamily(
            "mesh_node_rows_loaded", "Node rows read from the store into memory", self.state.node_rows_loaded
        )
        yield CounterMetricFamily(
            "mesh_peer_polls_woken", "Waiting peer long polls woken by a peer change", self.book.polls_woken
        )
        yield GaugeMetricFamily("mesh_peer_polls_waiting", "Peer long polls waiting now", self.book.polls_waiting)
