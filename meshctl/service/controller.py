"""The controller: the one object the API talks to, a thin facade over the service's parts.

    state.py       regions, drains, nodes, tokens (frozen store values) and live node counters
    snapshot.py    the frozen route/link snapshot, and its published JSON form
    views.py       wire response bodies from state + snapshot
    peerbook.py    each node's peer-list entry as JSON, kept as nodes change (views.py: the reference)
    ingest.py      node reports: checks, seq de-duplication, group commit, the link book
    leadership.py  the leader lease as this replica sees it
    loop.py        the control loop (recompute, drains, publication), through the public
                   methods under "the control loop's side" below and nothing else

About 650 lines because it is the whole surface the API sees: one short delegating method per
operation, the logic in the modules above.

Reads (routes, links, placement, regions) are answered from memory. Writes a client is told
about are committed first. One replica at a time holds the leader lease and runs the
recompute/drain loop; the others follow the published tables.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, TypeVar

from meshctl.service import report_codec as codec
from meshctl.service.auth import Principal, hash_token, new_id, new_secret
from meshctl.service.batch import BatchWriter
from meshctl.service.credentials import Credentials
from meshctl.service.encoded import Encoded, SnapshotEncodings
from meshctl.service.errors import Conflict, Forbidden, Invalid, Missing
from meshctl.service.ingest import Ingest
from meshctl.service.join import AttestedJoin
from meshctl.service.leadership import Leadership
from meshctl.service.metrics import Metrics
from meshctl.service.peerbook import PeerBook, PeerBookCollector, splice
from meshctl.service.snapshot import Snapshot, from_body, to_body
from meshctl.service.state import MeshState, check_region_id
from meshctl.service.store_queue import StoreQueue
from meshctl.service.views import Views, ts
from meshctl.settings import Settings
from meshctl.store.db import JoinRefused, JoinRequest, NotFound, Store
from meshctl.store.values import Drain, Node, PublishedTable, Region, Token
from meshctl.wire import schemas as s

T = TypeVar("T")


__all__ = ["Controller", "Snapshot", "ts"]


class Controller:
    """State and operations of one controller replica."""

    def __init__(self, settings: Settings, store: Store, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock
        self.metrics = Metrics()
        self.weights = settings.routing_weights()
        # SQLite takes one writer at a time: funnel every store call through one thread, so
        # writers queue in Python instead of sleeping in SQLite's busy handler (measured: 100+ ms
        # stalls with several threads). PostgreSQL gets a small pool. Drains take the fast lane.
        self._db_pool = StoreQueue(workers=1 if store.backend == "sqlite" else 8)
        self.state = MeshState(store, self.db, settings.node_down_after_s)
        self.leadership = Leadership(settings.replica_id, self.metrics)
        self.reports = Ingest(
            settings, store, self.db, self.state, self.metrics, clock, self.leadership.writer_id, self.reload_config
        )
        self.views = Views(self.state, settings, self.weights, clock)
        self.encodings = SnapshotEncodings()
        self.peer_book = PeerBook(self.state, self.views, settings, lambda: self.peer_generation)
        self.metrics.registry.register(PeerBookCollector(self.peer_book, self.state))
        self.credentials = Credentials(self.state, store, self.db, clock, self.kick)
        # joins in flight together are registered in one transaction (one fsync), each told its own answer
        self._joins: BatchWriter[JoinRequest, tuple[Node, int] | Exception] = BatchWriter(
            lambda batch: self.db(store.join_batch, batch), max_batch=256, name="join-writer"
        )
        self.attested = AttestedJoin(
            settings,
            store,
            self.db,
            self.state,
            clock,
            lambda kind: self.metrics.events.labels(kind).inc(),
            self.register_node,
        )
        self._snapshot = Snapshot()
        self._store_ok = True
        self._replicas: list[s.ReplicaOut] = []
        self._changed = asyncio.Condition()
        self._changes = 0  # bumped by every notify(): long polls wait for it to move
        self.closing = False  # shutting down: long polls answer at once (`release_long_polls`)
        self._kick = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self.listening = False  # PostgreSQL LISTEN connection up: polling is only the fallback
        self._ticks_started = 0
        self._ticks_done = 0
        self.bootstrap_token: str | None = None
        self.metrics.watch(self)  # per-link and per-region series, read from the snapshot at scrape time

    def db(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> asyncio.Future[T]:
        """Run a store call on the store's thread(s), after the calls queued before it."""
        return self._db_pool.run(fn, *args, **kwargs)

    def db_urgent(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> asyncio.Future[T]:
        """Run a store call ahead of every ordinary one still waiting: drains (the agents wait for
        them), the leader's lease and route publication (traffic follows the table)."""
        return self._db_pool.run(fn, *args, urgent=True, **kwargs)

    # --- what the API reads ----------------------------------------------------------------

    @property
    def snapshot(self) -> Snapshot:
        return self._snapshot

    @property
    def regions(self) -> Mapping[str, Region]:
        return self.state.regions

    @property
    def nodes(self) -> Mapping[str, Node]:
        return self.state.nodes

    @property
    def peer_generation(self) -> int:
        """The peer list's generation (it also follows the route table with the relayed data plane)."""
        return self.views.data_plane.generation(self._snapshot)

    @property
    def is_leader(self) -> bool:
        return self.leadership.is_leader

    @property
    def store_ok(self) -> bool:
        return self._store_ok

    @property
    def replicas(self) -> list[s.ReplicaOut]:
        return self._replicas

    # --- start-up ------------------------------------------------------------------------

    async def start(self) -> None:
        await self.db(self.store.open)
        await self.attested.start()
        await self.reload_config(force=True)
        await self._ensure_admin_token()
        gen = await self.db(self.store.max_generation)
        published = await self.db(self.store.latest_route_table)
        if published is not None:
            self._snapshot = from_body(published.generation, published.computed_at, published.body)
        if gen > self._snapshot.generation:
            self._snapshot = self._snapshot.with_generation(gen)
        self.metrics.route_generation.set(self._snapshot.generation)
        self.reports.start()

    async def stop(self) -> None:
        await self._joins.stop()
        await self.reports.stop()
        with contextlib.suppress(Exception):
            if self.is_leader:
                await self.db(self.store.release, self.leadership.fence)
            await self.db(self.store.forget_replica, self.settings.replica_id)  # the id is free at once
        self._db_pool.shutdown()

    async def _ensure_admin_token(self) -> None:
        now = self.clock()
        given = self.settings.admin_token
        if given:  # replicas starting together with the same token: the first one creates it
            h = hash_token(given)
            if h not in self.state.tokens_by_hash:
                await self.db(self.store.ensure_token, new_id(), "admin (MESH_ADMIN_TOKEN)", "admin", h, now)
        elif not await self.db(self.store.has_admin_token):
            token = new_secret("admin")
            await self.db(self.store.create_token, new_id(), "bootstrap admin", "admin", hash_token(token), now, None)
            self.bootstrap_token = token
        await self.reload_config(force=True)

    async def reload_config(self, force: bool = False) -> bool:
        """Reload regions, drains, nodes and tokens when another writer changed them."""
        changed, gone = await self.state.reload(force)
        for node_id in gone:
            self.reports.forget_node(node_id)
        if changed:
            await self.notify()
        return changed

    async def notify(self) -> None:
        async with self._changed:
            self._changes += 1
            self._changed.notify_all()
        self.peer_book.poke()  # the peer long polls wake only when their lists moved

    def _moved_since(self, seen: int) -> Callable[[], bool]:
        return lambda: self._changes != seen

    def changed_elsewhere(self, what: str) -> None:
        """A NOTIFY from the database (another replica, or our own write, committed): a change of
        config, peers or route table kicks the loop; any change wakes the long polls."""
        if what in ("config", "peers", "table"):
            self.kick()
        task = asyncio.get_running_loop().create_task(self.notify())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def wait_changed(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Long poll: wait until predicate() holds or timeout passes (or the server shuts down)."""
        if predicate():
            return True
        try:
            async with self._changed:
                await asyncio.wait_for(self._changed.wait_for(lambda: predicate() or self.closing), timeout)
            return predicate()
        except TimeoutError:
            return False

    async def release_long_polls(self) -> None:
        """The server is shutting down: every waiting long poll answers now with what it has (a 304
        for an agent's peer list), as if its wait had run out, instead of being cancelled with a 500
        when the graceful shutdown's time is up (which agents count as the controller failing)."""
        self.closing = True
        await self.notify()
        self.peer_book.release()

    # --- auth ----------------------------------------------------------------------------

    async def authenticate(self, token: str | None) -> Principal:
        """Who is calling: see `Credentials.authenticate` (410 NodeRemoved for a removed node)."""
        return await self.credentials.authenticate(token)

    # --- regions and drains --------------------------------------------------------------

    def region_state(self, region_id: str) -> str:
        return self.state.region_state(region_id, self._snapshot.states)

    def get_region(self, region_id: str) -> Region:
        return self.state.region(region_id)

    async def _fresh_region(self, region_id: str) -> Region:
        """The region, also one added through another replica a moment ago (reloaded if unknown)."""
        if region_id not in self.state.regions:
            await self.reload_config()
        return self.get_region(region_id)

    @staticmethod
    def check_region_id(region_id: str, field: str = "region") -> tuple[str, str]:
        return check_region_id(region_id, field)

    async def put_region(self, region_id: str, body: s.RegionIn) -> tuple[s.RegionOut, bool]:
        cloud, _ = check_region_id(region_id, "id")
        if body.cloud is not None and body.cloud != cloud:
            raise Invalid(f"cloud: {body.cloud!r} does not match the region id prefix {cloud!r}", "cloud")
        region, created = await self.db(
            self.store.upsert_region, region_id, cloud, body.name, body.lat, body.lon, body.metro, self.clock()
        )
        self.state.put_region(region)
        await self.reload_config()
        self.kick()
        return self.region_out(region), created

    async def drain(self, region_id: str, reason: str, by: str) -> s.RegionOut:
        """Drain a region: its agents' long polls are answered at once (one store write first, no
        reload), then the routes move around it."""
        region = self.get_region(region_id)
        drain, gen = await self.db_urgent(self.store.set_drain, region_id, "manual", reason, by, self.clock())
        await self.drain_stored(drain, gen)
        self.metrics.events.labels("drain").inc()
        await self.reload_config()  # (a region or token another replica changed meanwhile)
        await self.recompute_now()
        return self.region_out(region)

    async def undrain(self, region_id: str, by: str) -> s.RegionOut:
        region = self.get_region(region_id)
        if region_id not in self.state.drains:
            raise Conflict(f"region {region_id} is not drained", field="region")
        gen = await self.db_urgent(self.store.remove_drain, region_id, f"undrained by {by}", by, self.clock())
        if gen is not None:  # (None: another replica lifted it first; the reload below shows that)
            await self.undrain_stored(region_id, gen)
            self.metrics.events.labels("undrain").inc()
        await self.reload_config()
        await self.recompute_now()
        return self.region_out(region)

    async def drain_stored(self, drain: Drain, peer_generation: int) -> None:
        """A region drain the store took (ours or the loop's): in place, and the long polls woken."""
        self._forget(await self.state.put_drain(drain, peer_generation))
        await self.notify()

    async def undrain_stored(self, region_id: str, peer_generation: int) -> None:
        """A region drain the store lifted (see `drain_stored`)."""
        self._forget(await self.state.drop_drain(region_id, peer_generation))
        await self.notify()

    async def drain_node(self, node_id: str, reason: str, by: str) -> s.NodeOut:
        """Drain one node: no new sessions, no relaying; its agent learns it by its peer long poll."""
        self.get_node(node_id)
        try:
            drain, gen = await self.db_urgent(self.store.set_node_drain, node_id, reason, by, self.clock())
        except NotFound as exc:
            raise Missing(f"unknown node {node_id!r}", field="node_id") from exc
        self._forget(await self.state.put_node_drain(drain, gen))
        self.metrics.events.labels("node_drain").inc()
        await self.notify()
        self.kick()  # a region whose every node is drained relays nothing: routes move
        return self.node_out(self.get_node(node_id))

    async def undrain_node(self, node_id: str, by: str) -> s.NodeOut:
        """Lift a node's drain (409 when it has none; its region's drain is lifted on the region)."""
        node = self.get_node(node_id)
        gen = await self.db_urgent(self.store.remove_node_drain, node_id, f"undrained by {by}", by, self.clock())
        if gen is None:
            raise Conflict(f"node {node.name} ({node_id}) is not drained", field="node_id")
        self._forget(await self.state.drop_node_drain(node_id, gen))
        self.metrics.events.labels("node_undrain").inc()
        await self.notify()
        self.kick()
        return self.node_out(self.get_node(node_id))

    def node_drain_preview(self, node_id: str) -> s.NodeDrainPreview:
        return self.views.node_drain_preview(node_id, self._snapshot)

    # --- tokens --------------------------------------------------------------------------

    async def create_token(self, body: s.TokenCreate) -> s.TokenCreated:
        secret = new_secret(body.scope)
        now = self.clock()
        expires = None if body.ttl_s is None else now + body.ttl_s
        token = await self.db(
            self.store.create_token, new_id(), body.name, body.scope, hash_token(secret), now, expires
        )
        self.state.put_token(token)
        return s.TokenCreated(**self.token_out(token).model_dump(), token=secret)

    @staticmethod
    def token_out(token: Token) -> s.TokenOut:
        return Views.token_out(token)

    async def list_tokens(self) -> list[s.TokenOut]:
        return [self.token_out(t) for t in await self.db(self.store.tokens)]

    async def revoke_token(self, token_id: str) -> s.TokenOut:
        try:
            token = await self.db(self.store.revoke_token, token_id, self.clock())
        except NotFound as exc:
            raise Missing(f"no active token with id {token_id!r}", field="id") from exc
        self.state.drop_token(token.token_hash)
        return self.token_out(token)

    async def create_join_token(self, body: s.JoinTokenCreate) -> s.JoinTokenOut:
        await self._fresh_region(body.region)
        secret = new_secret("join")
        jt = await self.db(
            self.store.create_join_token, new_id(), body.region, hash_token(secret), self.clock(), body.ttl_s, body.uses
        )
        return s.JoinTokenOut(
            id=jt.id, region=jt.region, expires_at=ts(jt.expires_at), uses=jt.uses, uses_left=jt.uses_left, token=secret
        )

    # --- nodes ---------------------------------------------------------------------------

    def get_node(self, node_id: str) -> Node:
        return self.state.node(node_id)

    def node_out(self, node: Node) -> s.NodeOut:
        return self.views.node_out(node)

    def peers_of(self, node_id: str) -> s.PeerList:
        return self.views.peers_of(node_id, self._snapshot)

    async def wait_peers(self, node_id: str, start: int, timeout: float) -> None:
        """Long poll: until the peer generation moves from `start` or the node leaves."""
        await self.peer_book.wait_moved(start, timeout, lambda: node_id not in self.state.nodes)

    def peers_json(self, node_id: str, since: int | None = None) -> bytes:
        """The node's peer list as JSON, from the peer book (equal to `peers_of`); with `since`, the
        changes after that generation when the book can tell."""
        return self.peer_book.peer_list_json(node_id, self._snapshot, since)

    def _forget(self, gone: set[str]) -> None:
        """Nodes that left through another replica (seen while catching up)."""
        for node_id in gone:
            self.reports.forget_node(node_id)

    async def _register(self, body: s.NodeJoin) -> tuple[Node, str]:
        """Join with a join token, or by cloud identity (`body.attestation`: see service/join.py):
        the node, in place here, and its credential. Only the nodes changed since our generation
        are read (none unless another join committed in between), never every node."""
        secret = new_secret("node")
        if body.attestation is not None:
            node, gen = await self.attested.join(body, "n-" + new_id(), hash_token(secret))
        else:
            node, gen = await self._join_with_token(body, hash_token(secret))
        self._forget(await self.state.put_node(node, gen))
        await self.notify()
        return node, secret

    def _joined(self, node: Node, secret: str, peers: s.PeerList) -> s.NodeJoined:
        return s.NodeJoined(
            node_id=node.id,
            node_token=secret,
            overlay_ip=node.overlay_ip,
            overlay_cidr=self.settings.overlay_cidr,
            region=node.region,
            peers=peers,
        )

    async def join(self, body: s.NodeJoin) -> s.NodeJoined:
        """Join (see `_register`); the answer with the node's peer list."""
        node, secret = await self._register(body)
        return self._joined(node, secret, self.peers_of(node.id))

    async def join_json(self, body: s.NodeJoin) -> bytes:
        """`join` as the JSON the API sends, its peer list from the peer book (no list rebuilt)."""
        node, secret = await self._register(body)
        book = self.peer_book
        if not book.fast():
            return self._joined(node, secret, self.peers_of(node.id)).model_dump_json().encode()
        book.lists_served += 1
        envelope = self._joined(node, secret, book.envelope(node.id, self._snapshot))
        return splice(envelope.model_dump_json().encode(), book.peers_json(node.id))

    async def register_node(self, request: JoinRequest) -> tuple[Node, int]:
        """Register a node in the store with the joins in flight beside it (`Store.join_batch`):
        (the node, its peer generation) once committed, or the store's refusal raised."""
        if not self._joins.started:
            self._joins.start()
        found = await self._joins.submit(request)
        if isinstance(found, Exception):
            raise found
        return found

    async def _join_with_token(self, body: s.NodeJoin, token_hash: str) -> tuple[Node, int]:
        assert body.join_token is not None
        await self._fresh_region(body.region)
        try:
            return await self.register_node(
                JoinRequest(
                    node_id="n-" + new_id(),
                    region=body.region,
                    name=body.name,
                    public_key=body.public_key,
                    endpoint=body.endpoint,
                    token_hash=token_hash,
                    now=self.clock(),
                    overlay_cidr=self.settings.overlay_cidr,
                    region_prefix=self.settings.region_prefix,
                    join_hash=hash_token(body.join_token),
                )
            )
        except JoinRefused as exc:
            raise Forbidden(f"join_token: {exc}", field="join_token") from exc

    async def remove_node(self, node_id: str) -> s.NodeOut:
        self.get_node(node_id)
        try:
            node, gen = await self.db(self.store.remove_node, node_id, self.clock())
        except NotFound as exc:
            raise Missing(f"unknown node {node_id!r}", field="node_id") from exc
        out = self.node_out(node)  # as it was when it left
        self._forget(await self.state.drop_node(node, gen) | {node_id})
        await self.notify()
        return out

    async def update_node(self, node_id: str, public_key: str | None = None, endpoint: str | None = None) -> s.NodeOut:
        self.get_node(node_id)
        try:
            node, gen = await self.db(self.store.update_node, node_id, self.clock(), public_key, endpoint)
        except NotFound as exc:
            raise Missing(f"unknown node {node_id!r}", field="node_id") from exc
        self._forget(await self.state.put_node(node, gen))
        await self.notify()
        return self.node_out(node)

    # --- reports -------------------------------------------------------------------------

    async def ingest(self, who: Principal, report: codec.ReportColumns, sent_at: float | None = None) -> s.ReportAck:
        """A node's report: see `Ingest.ingest` (`sent_at`: the node's clock when it sent it,
        from the `X-Mesh-Sent-At` request header, if any)."""
        return await self.reports.ingest(who, report, sent_at)

    def clock_offset(self, node_id: str) -> float | None:
        """How far the node's clock runs ahead (+) or behind (-) ours, as last measured; for the
        `X-Mesh-Clock-Offset-S` response header on reports and peers."""
        return self.state.clock_offsets.get(node_id)

    # --- reads answered from the snapshot (see views.py) ---------------------------------

    def region_out(self, region: Region) -> s.RegionOut:
        return self.views.region_out(region, self._snapshot)

    def drain_preview(self, region_id: str) -> s.DrainPreview:
        return self.views.drain_preview(region_id, self._snapshot)

    def links_out(self) -> s.LinksOut:
        return self.views.links_out(self._snapshot)

    def links_json(self) -> bytes:
        """`links_out()`'s JSON, made without the models (the dashboard's 150-region poll)."""
        return self.views.links_json(self._snapshot)

    def weights_out(self) -> s.RoutingWeightsOut:
        return self.views.weights_out()

    def route_out(self, src: str, dst: str) -> s.RouteOut:
        return self.views.route_out(src, dst, self._snapshot)

    def route_json(self, src: str, dst: str) -> bytes:
        """The hot path: cached bytes per pair and snapshot."""
        return self.views.route_json(src, dst, self._snapshot)

    def explain(self, src: str, dst: str) -> s.RouteExplained:
        return self.views.explain(src, dst, self._snapshot)

    def route_table_out(self) -> s.RouteTableOut:
        return self.views.route_table_out(self._snapshot)

    def route_table_encoded(self) -> Encoded:
        """The route table's JSON and gzip, made once per snapshot (every watcher asks at once)."""
        return self.encodings.route_table(
            self._snapshot, lambda snap: self.views.route_table_out(snap).model_dump_json().encode()
        )

    def links_etag(self) -> str:
        """The links' entity tag: unchanged while their measurements and freshness are."""
        return self.encodings.links_etag(self._snapshot, self.clock(), self.weights.stale_after_s)

    def placement(self, near: str | None, lat: float | None, lon: float | None) -> s.PlacementOut:
        return self.views.placement(near, lat, lon, self._snapshot)

    def status(self) -> s.StatusOut:
        lead = self.leadership
        return self.views.status(
            self._snapshot,
            leader=lead.leader,
            leader_since=lead.leader_since,
            store_ok=self._store_ok,
            replicas=self._replicas,
        )

    async def events(
        self, since: str | None, limit: int, wait: float, region: str | None = None, kind: str | None = None
    ) -> list[s.EventOut]:
        since_id: int | None = None
        since_ts: float | None = None
        if since is not None:
            if since.isdigit():
                since_id = int(since)
            else:
                try:
                    since_ts = datetime.fromisoformat(since.replace("Z", "+00:00")).timestamp()
                except ValueError as exc:
                    raise Invalid("since: give an event id or an ISO 8601 time", field="since") from exc
        deadline = self.clock() + wait
        while True:
            seen = self._changes
            found = await self.db(self.store.events, since_id, since_ts, limit, region, kind, self.clock())
            if found or wait <= 0 or self.clock() >= deadline:
                break
            # woken by any change (a NOTIFY "event" from the database while listening); polled
            # twice a second only when not listening (SQLite, or the LISTEN connection is down)
            cap = 5.0 if self.listening else 0.5
            await self.wait_changed(self._moved_since(seen), min(cap, max(0.0, deadline - self.clock())))
        return [Views.event_out(e) for e in found]

    # --- asking the control loop ---------------------------------------------------------

    def kick(self) -> None:
        """Ask the loop for a tick now rather than at its next interval."""
        self._kick.set()

    async def recompute_now(self, timeout: float = 3.0) -> None:
        """Ask the loop for a recompute and wait for it (on the leader), so a drain shows at once."""
        if not self.is_leader:
            return
        want = self._ticks_started + 1  # a tick that starts after this change
        self._kick.set()
        await self.wait_changed(lambda: self._ticks_done >= want, timeout)

    # --- the control loop's side (loop.py calls these, and reads the public parts) -------

    def tick_started(self) -> int:
        """A tick begins: its number."""
        self._ticks_started += 1
        return self._ticks_started

    async def tick_done(self, tick_no: int, store_ok: bool) -> None:
        """A tick ended (the database answered or not): wake whoever waits on it."""
        self._store_ok = store_ok
        self.metrics.store_up.set(1 if store_ok else 0)
        self._ticks_done = tick_no
        await self.notify()

    async def wait_kick(self, delay: float) -> None:
        """Sleep until the next tick is due or someone kicks."""
        self._kick.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._kick.wait(), delay)

    def adopt(self, snap: Snapshot) -> None:
        """Answer from this snapshot from now on (computed here, or published by the leader)."""
        self._snapshot = snap
        self.metrics.route_generation.set(snap.generation)
        self._set_gauges(snap)

    async def publish(self, snap: Snapshot, now: float) -> Snapshot | None:
        """Publish the snapshot as the next generation, fenced by our lease, and adopt it.

        None when the store refused it: the lease is no longer ours (the caller steps down).
        """
        generation = max(self._snapshot.generation, await self.db_urgent(self.store.max_generation)) + 1
        published = snap.with_generation(generation)
        body = await asyncio.to_thread(to_body, published)  # ~25 ms at 150 regions: not on the event loop
        ok = await self.db_urgent(self.store.publish_route_table, generation, self.leadership.fence, now, body)
        if not ok:
            return None
        self.adopt(published)
        return published

    async def follow(self) -> bool:
        """Adopt the newest published table if it is newer than ours."""
        found: PublishedTable | None = await self.db(self.store.latest_route_table, self._snapshot.generation)
        if found is None:
            return False
        self.adopt(from_body(found.generation, found.computed_at, found.body))
        await self.notify()
        return True

    def set_replicas(self, replicas: list[s.ReplicaOut]) -> None:
        self._replicas = replicas

    def _set_gauges(self, snap: Snapshot) -> None:
        counts = {"active": 0, "degraded": 0, "drained": 0}
        for rid in self.state.regions:
            counts[self.state.region_state(rid, snap.states)] += 1
        for state, n in counts.items():
            self.metrics.regions.labels(state).set(n)
        up = self.state.nodes_up(self.clock())
        self.metrics.nodes.labels("true").set(up)
        self.metrics.nodes.labels("false").set(len(self.state.nodes) - up)
        self.metrics.frozen.set(1 if snap.frozen else 0)
