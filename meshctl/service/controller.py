"""The controller: in-memory view of the mesh over the store, and the operations the API calls.

Reads (routes, links, placement, regions) are answered from memory. Writes a client is told
about are committed first. One replica at a time holds the leader lease and runs the
recompute/drain loop (see `meshctl.service.loop`); the others follow the published tables.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import math
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar, cast, overload

import numpy as np

from meshctl.api import schemas as s
from meshctl.core.health import HealthState, initial_state
from meshctl.core.links import LinkBook, RegionLink
from meshctl.core.placement import NoHealthyRegion, UnknownRegion, place
from meshctl.core.regions import InvalidRegionId, parse_region_id
from meshctl.core.routing import RouteTable, RoutingWeights, compute_routes, explain_route
from meshctl.service.auth import Principal, hash_token, new_id, new_secret
from meshctl.service.batch import BatchWriter
from meshctl.service.metrics import Metrics
from meshctl.settings import Settings
from meshctl.store.db import JoinRefused, NotFound, Store
from meshctl.store.models import DrainRow, NodeRow, RegionRow, TokenRow


class ServiceError(Exception):
    """An error the API turns into a 4xx/5xx with this message."""

    status = 400

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class Invalid(ServiceError):
    status = 422


class Missing(ServiceError):
    status = 404


class Forbidden(ServiceError):
    status = 403


class Unauthorized(ServiceError):
    status = 401


class Conflict(ServiceError):
    status = 409


class Unavailable(ServiceError):
    status = 503


T = TypeVar("T")


@overload
def ts(epoch: float) -> datetime: ...
@overload
def ts(epoch: None) -> None: ...
@overload
def ts(epoch: float | None) -> datetime | None: ...
def ts(epoch: float | None) -> datetime | None:
    """Epoch seconds (how the store keeps time) to an aware UTC datetime."""
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC)


@dataclass
class Snapshot:
    """What route and link queries are answered from; replaced whole, never mutated."""

    generation: int = 0
    computed_at: float | None = None
    table: RouteTable | None = None
    cost: np.ndarray | None = None
    rtt: np.ndarray | None = None
    drained: frozenset[str] = frozenset()
    links: dict[tuple[str, str], RegionLink] = field(default_factory=dict)
    states: dict[str, str] = field(default_factory=dict)
    health: dict[str, dict[str, Any]] = field(default_factory=dict)
    frozen: bool = False
    alerts: tuple[str, ...] = ()
    route_cache: dict[tuple[str, str], bytes] = field(default_factory=dict)


class Controller:
    """State and operations of one controller replica."""

    def __init__(self, settings: Settings, store: Store, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock
        self.metrics = Metrics()
        self.weights: RoutingWeights = settings.routing_weights()
        self.regions: dict[str, RegionRow] = {}
        self.drains: dict[str, DrainRow] = {}
        self.nodes: dict[str, NodeRow] = {}
        self.node_by_hash: dict[str, str] = {}
        self.tokens_by_hash: dict[str, TokenRow] = {}
        self.peer_generation = 0
        self.config_version = -1
        self.snapshot = Snapshot()
        self.linkbook = LinkBook(loss_smoothing=settings.loss_smoothing, smoothing_horizon_s=settings.stale_after_s)
        self.baselines: dict[tuple[str, str], float] = {}
        self.health: HealthState = initial_state([])
        self.region_last_report: dict[str, float] = {}
        self.recent_seqs: dict[str, tuple[deque[int], set[int]]] = {}
        self.pending_seqs: dict[str, set[int]] = {}
        self.is_leader = False
        self.leader: str | None = None
        self.leader_since: float | None = None
        self.lease_epoch = 0
        self.lease_expires = 0.0
        self.store_ok = True
        self.replicas: list[s.ReplicaOut] = []
        self.report_cursor = 0
        self._changed = asyncio.Condition()
        self._kick = asyncio.Event()
        self.ticks_started = 0
        self.ticks_done = 0
        # SQLite takes one writer at a time: funnel every store call through one thread, so
        # writers queue in Python instead of sleeping in SQLite's busy handler (measured: 100+ ms
        # stalls with several threads). PostgreSQL gets a small pool.
        self._db_pool = ThreadPoolExecutor(
            max_workers=1 if store.backend == "sqlite" else 8, thread_name_prefix="store"
        )
        self.writer = BatchWriter(self._write_reports)
        self.bootstrap_token: str | None = None

    def db(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> asyncio.Future[T]:
        """Run a store call on the store's thread(s)."""
        return asyncio.get_running_loop().run_in_executor(self._db_pool, functools.partial(fn, *args, **kwargs))

    # --- start-up ------------------------------------------------------------------------

    async def start(self) -> None:
        await self.db(self.store.open)
        await self.reload_config(force=True)
        await self._ensure_admin_token()
        gen = await self.db(self.store.max_generation)
        row = await self.db(self.store.latest_route_table)
        if row is not None:
            self.load_published(row.generation, row.computed_at, row.body)
        self.snapshot.generation = max(self.snapshot.generation, gen)
        self.metrics.route_generation.set(self.snapshot.generation)
        self.writer.start()

    async def stop(self) -> None:
        await self.writer.stop()
        if self.is_leader:
            with contextlib.suppress(Exception):
                await self.db(self.store.release, self.settings.replica_id, self.lease_epoch)
        self._db_pool.shutdown(wait=False)

    async def _ensure_admin_token(self) -> None:
        now = self.clock()
        given = self.settings.admin_token
        if given:
            h = hash_token(given)
            if h not in self.tokens_by_hash and await self.db(self.store.token_by_hash, h) is None:
                await self.db(self.store.create_token, new_id(), "admin (MESH_ADMIN_TOKEN)", "admin", h, now, None)
        elif not await self.db(self.store.has_admin_token):
            token = new_secret("admin")
            await self.db(self.store.create_token, new_id(), "bootstrap admin", "admin", hash_token(token), now, None)
            self.bootstrap_token = token
        await self.reload_config(force=True)

    async def reload_config(self, force: bool = False) -> bool:
        """Reload regions, drains, nodes and tokens when another writer changed them."""
        counters = await self.db(self.store.counters)
        version, peers = counters.get("config_version", 0), counters.get("peer_generation", 0)
        changed = False
        if force or version != self.config_version:
            regions, drains, tokens = await asyncio.gather(
                self.db(self.store.regions),
                self.db(self.store.drains),
                self.db(self.store.tokens),
            )
            self.regions = {r.id: r for r in regions}
            self.drains = {d.region: d for d in drains}
            self.tokens_by_hash = {t.token_hash: t for t in tokens}
            self.config_version = version
            changed = True
        if force or peers != self.peer_generation:
            await self._reload_nodes(peers)
            changed = True
        if changed:
            await self.notify()
        return changed

    async def _reload_nodes(self, generation: int) -> None:
        nodes = await self.db(self.store.nodes)
        gone = set(self.nodes) - {n.id for n in nodes}
        for node_id in gone:
            self.linkbook.forget_node(node_id)
        previous = self.nodes
        self.nodes = {}
        for n in nodes:
            old = previous.get(n.id)
            if old is not None and old.last_report_at and (n.last_report_at or 0) < old.last_report_at:
                n.last_report_at, n.last_seq = old.last_report_at, old.last_seq
                n.reports_accepted = max(n.reports_accepted, old.reports_accepted)
            self.nodes[n.id] = n
        self.node_by_hash = {n.token_hash: n.id for n in nodes}
        self.peer_generation = max(self.peer_generation, generation)

    async def notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def wait_changed(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Long poll: wait until predicate() holds or timeout passes."""
        if predicate():
            return True
        try:
            async with self._changed:
                await asyncio.wait_for(self._changed.wait_for(predicate), timeout)
            return True
        except TimeoutError:
            return False

    # --- auth ----------------------------------------------------------------------------

    async def authenticate(self, token: str | None) -> Principal:
        if not token:
            raise Unauthorized("missing bearer token: send 'Authorization: Bearer <token>'")
        h = hash_token(token)
        now = self.clock()
        node_id = self.node_by_hash.get(h)
        if node_id is not None:
            node = self.nodes[node_id]
            return Principal(kind="node", id=node.id, name=node.name, scope="node")
        row = self.tokens_by_hash.get(h)
        if row is None:
            row = await self._token_from_store(h)
        if row is None or row.revoked_at is not None:
            raise Unauthorized("invalid or revoked token")
        if row.expires_at is not None and row.expires_at <= now:
            raise Unauthorized("token expired")
        return Principal(
            kind="token",
            id=row.id,
            name=row.name,
            scope=cast(s.Scope, row.scope),
            expires_at=row.expires_at,
        )

    async def _token_from_store(self, h: str) -> TokenRow | None:
        """A token made on another replica a moment ago is not in memory yet: ask the store."""
        try:
            row = await self.db(self.store.token_by_hash, h)
        except Exception:
            return None
        if row is not None and row.revoked_at is None:
            self.tokens_by_hash[h] = row
        return row

    # --- regions -------------------------------------------------------------------------

    def region_state(self, region_id: str) -> str:
        if region_id in self.drains:
            return "drained"
        return self.snapshot.states.get(region_id, "active")

    def region_out(self, r: RegionRow) -> s.RegionOut:
        drain = self.drains.get(r.id)
        now = self.clock()
        nodes = [n for n in self.nodes.values() if n.region == r.id]
        up = sum(1 for n in nodes if self._node_up(n, now))
        health = self.snapshot.health.get(r.id, {})
        return s.RegionOut(
            id=r.id,
            cloud=r.cloud,
            name=r.name,
            lat=r.lat,
            lon=r.lon,
            metro=r.metro,
            state=cast(s.RegionState, self.region_state(r.id)),
            drain=None
            if drain is None
            else s.DrainInfo(
                kind=cast(s.DrainKind, drain.kind), reason=drain.reason, since=ts(drain.since), by=drain.by
            ),
            nodes_total=len(nodes),
            nodes_up=up,
            health=s.RegionHealth(**health),
        )

    def get_region(self, region_id: str) -> RegionRow:
        self.check_region_id(region_id)
        r = self.regions.get(region_id)
        if r is None:
            raise Missing(f"unknown region {region_id!r}", field="region")
        return r

    @staticmethod
    def check_region_id(region_id: str, field: str = "region") -> tuple[str, str]:
        try:
            return parse_region_id(region_id)
        except InvalidRegionId as exc:
            raise Invalid(f"{field}: {exc}", field=field) from exc

    async def put_region(self, region_id: str, body: s.RegionIn) -> tuple[s.RegionOut, bool]:
        cloud, _ = self.check_region_id(region_id, "id")
        if body.cloud is not None and body.cloud != cloud:
            raise Invalid(f"cloud: {body.cloud!r} does not match the region id prefix {cloud!r}", "cloud")
        row, created = await self.db(
            self.store.upsert_region, region_id, cloud, body.name, body.lat, body.lon, body.metro, self.clock()
        )
        self.regions[region_id] = row
        await self.reload_config()
        self.kick()
        return self.region_out(row), created

    async def drain(self, region_id: str, reason: str, by: str) -> s.RegionOut:
        r = self.get_region(region_id)
        row = await self.db(self.store.set_drain, region_id, "manual", reason, by, self.clock())
        self.drains[region_id] = row
        self.metrics.events.labels("drain").inc()
        await self.reload_config()
        await self.recompute_now()
        return self.region_out(r)

    async def undrain(self, region_id: str, by: str) -> s.RegionOut:
        r = self.get_region(region_id)
        if region_id not in self.drains:
            raise Conflict(f"region {region_id} is not drained", field="region")
        await self.db(self.store.remove_drain, region_id, f"undrained by {by}", by, self.clock())
        self.drains.pop(region_id, None)
        self.metrics.events.labels("undrain").inc()
        await self.reload_config()
        await self.recompute_now()
        return self.region_out(r)

    def drain_preview(self, region_id: str) -> s.DrainPreview:
        self.get_region(region_id)
        snap = self.snapshot
        already = region_id in self.drains
        route_changes: list[s.RouteChange] = []
        placement_changes: list[s.PlacementChange] = []
        if snap.table is not None and snap.cost is not None and snap.rtt is not None and not already:
            drained = set(snap.drained) | {region_id}
            after = compute_routes(snap.table.regions, snap.cost, snap.rtt, drained, self.weights, snap.table)
            from meshctl.core.routing import diff_routes

            for src, dst, before_path, after_path in diff_routes(snap.table, after):
                route_changes.append(s.RouteChange(src=src, dst=dst, before=before_path, after=after_path))
        if not already:
            states_before = {rid: self.region_state(rid) for rid in self.regions}
            states_after = dict(states_before, **{region_id: "drained"})
            for near in sorted(self.regions):
                before = self._place_region(states_before, near)
                after_r = self._place_region(states_after, near)
                if before != after_r:
                    placement_changes.append(s.PlacementChange(near=near, before=before, after=after_r))
        summary = (
            f"{region_id} is already drained; nothing would change"
            if already
            else f"draining {region_id} would move {len(route_changes)} routes and {len(placement_changes)} placements"
        )
        return s.DrainPreview(
            region=region_id,
            already_drained=already,
            routes_changed=route_changes,
            placements_changed=placement_changes,
            summary=summary,
        )

    def _place_region(self, states: dict[str, str], near: str) -> str | None:
        try:
            return place(self.regions, states, self.snapshot.table, near=near).region
        except (NoHealthyRegion, UnknownRegion):
            return None

    # --- tokens --------------------------------------------------------------------------

    async def create_token(self, body: s.TokenCreate) -> s.TokenCreated:
        token = new_secret(body.scope)
        now = self.clock()
        expires = None if body.ttl_s is None else now + body.ttl_s
        row = await self.db(self.store.create_token, new_id(), body.name, body.scope, hash_token(token), now, expires)
        self.tokens_by_hash[row.token_hash] = row
        return s.TokenCreated(**self.token_out(row).model_dump(), token=token)

    @staticmethod
    def token_out(row: TokenRow) -> s.TokenOut:
        return s.TokenOut(
            id=row.id,
            name=row.name,
            scope=cast(s.Scope, row.scope),
            created_at=ts(row.created_at),
            expires_at=ts(row.expires_at),
        )

    async def list_tokens(self) -> list[s.TokenOut]:
        rows = await self.db(self.store.tokens)
        return [self.token_out(r) for r in rows]

    async def revoke_token(self, token_id: str) -> s.TokenOut:
        try:
            row = await self.db(self.store.revoke_token, token_id, self.clock())
        except NotFound as exc:
            raise Missing(f"no active token with id {token_id!r}", field="id") from exc
        self.tokens_by_hash.pop(row.token_hash, None)
        return self.token_out(row)

    async def create_join_token(self, body: s.JoinTokenCreate) -> s.JoinTokenOut:
        self.get_region(body.region)
        token = new_secret("join")
        row = await self.db(
            self.store.create_join_token, new_id(), body.region, hash_token(token), self.clock(), body.ttl_s, body.uses
        )
        return s.JoinTokenOut(
            id=row.id,
            region=row.region,
            expires_at=ts(row.expires_at),
            uses=row.uses,
            uses_left=row.uses_left,
            token=token,
        )

    # --- nodes ---------------------------------------------------------------------------

    def _node_up(self, n: NodeRow, now: float) -> bool:
        return n.last_report_at is not None and now - n.last_report_at <= self.settings.node_down_after_s

    def node_out(self, n: NodeRow) -> s.NodeOut:
        return s.NodeOut(
            id=n.id,
            name=n.name,
            region=n.region,
            public_key=n.public_key,
            endpoint=n.endpoint,
            overlay_ip=n.overlay_ip,
            joined_at=ts(n.joined_at),
            last_report_at=ts(n.last_report_at),
            up=self._node_up(n, self.clock()),
            last_seq=n.last_seq,
            reports_accepted=n.reports_accepted,
        )

    def get_node(self, node_id: str) -> NodeRow:
        n = self.nodes.get(node_id)
        if n is None:
            raise Missing(f"unknown node {node_id!r}", field="node_id")
        return n

    def peers_of(self, node_id: str) -> s.PeerList:
        self.get_node(node_id)
        peers = [
            s.Peer(
                node_id=n.id,
                name=n.name,
                region=n.region,
                public_key=n.public_key,
                endpoint=n.endpoint,
                overlay_ip=n.overlay_ip,
                allowed_ips=[f"{n.overlay_ip}/32"],
            )
            for n in sorted(self.nodes.values(), key=lambda x: x.id)
            if n.id != node_id
        ]
        return s.PeerList(
            node_id=node_id, generation=self.peer_generation, overlay_cidr=self.settings.overlay_cidr, peers=peers
        )

    async def join(self, body: s.NodeJoin) -> s.NodeJoined:
        self.get_region(body.region)
        token = new_secret("node")
        node_id = "n-" + new_id()
        try:
            row, gen = await self.db(
                self.store.join_node,
                node_id=node_id,
                join_hash=hash_token(body.join_token),
                region=body.region,
                name=body.name,
                public_key=body.public_key,
                endpoint=body.endpoint,
                token_hash=hash_token(token),
                now=self.clock(),
                overlay_cidr=self.settings.overlay_cidr,
                region_prefix=self.settings.region_prefix,
            )
        except JoinRefused as exc:
            raise Forbidden(f"join_token: {exc}", field="join_token") from exc
        await self.reload_config()
        self.nodes[row.id] = row
        self.node_by_hash[row.token_hash] = row.id
        self.peer_generation = max(self.peer_generation, gen)
        await self.notify()
        return s.NodeJoined(
            node_id=row.id,
            node_token=token,
            overlay_ip=row.overlay_ip,
            overlay_cidr=self.settings.overlay_cidr,
            region=row.region,
            peers=self.peers_of(row.id),
        )

    async def remove_node(self, node_id: str) -> s.NodeOut:
        self.get_node(node_id)
        try:
            row, gen = await self.db(self.store.remove_node, node_id, self.clock())
        except NotFound as exc:
            raise Missing(f"unknown node {node_id!r}", field="node_id") from exc
        self.nodes.pop(node_id, None)
        self.node_by_hash.pop(row.token_hash, None)
        self.linkbook.forget_node(node_id)
        self.peer_generation = max(self.peer_generation, gen)
        await self.notify()
        return self.node_out(row)

    async def update_node(self, node_id: str, public_key: str | None = None, endpoint: str | None = None) -> s.NodeOut:
        old = self.get_node(node_id)
        try:
            row, gen = await self.db(self.store.update_node, node_id, self.clock(), public_key, endpoint)
        except NotFound as exc:
            raise Missing(f"unknown node {node_id!r}", field="node_id") from exc
        row.last_report_at, row.last_seq = old.last_report_at, old.last_seq
        row.reports_accepted = old.reports_accepted
        self.nodes[node_id] = row
        self.peer_generation = max(self.peer_generation, gen)
        await self.notify()
        return self.node_out(row)

    # --- reports -------------------------------------------------------------------------

    async def ingest(self, who: Principal, report: s.ReportColumns, raw: str) -> s.ReportAck:
        """Check, write durably (group commit), then fold into the link book.

        `raw` is the accepted JSON text: stored as is, never re-serialised. Nothing here loops in
        Python over the peers unless a check fails (then the loop finds the first bad one).
        """
        reject = self.metrics.reports_rejected
        if who.kind != "node":
            reject.labels("not_a_node").inc()
            raise Forbidden("reports are sent with a node credential")
        if report.node_id != who.id:
            reject.labels("other_node").inc()
            raise Forbidden(f"node_id: this credential belongs to {who.id}, not {report.node_id}", field="node_id")
        node = self.get_node(who.id)
        now = self.clock()
        start = report.window_start
        if start > now + self.settings.report_max_future_s:
            reject.labels("future").inc()
            raise Invalid("window_start: is in the future", field="window_start")
        if start + report.window_s < now - self.settings.report_max_age_s:
            reject.labels("too_old").inc()
            raise Invalid("window_start: older than the controller keeps", field="window_start")
        ids = report.peers.ids
        unique = set(ids)
        if who.id in unique or len(unique) != len(ids) or not all(map(self.nodes.__contains__, unique)):
            self._reject_peers(who.id, ids)
        recent, recent_set = self.recent_seqs.setdefault(node.id, (deque(), set()))
        pending = self.pending_seqs.setdefault(node.id, set())
        if report.seq in recent_set or report.seq in pending:
            reject.labels("duplicate").inc()
            raise Conflict(f"seq: window {report.seq} of {node.id} was already accepted", field="seq")
        pending.add(report.seq)
        try:
            written = await self.writer.submit(
                {"node_id": node.id, "seq": report.seq, "window_start": start, "received_at": now, "body": raw}
            )
        except Exception as exc:
            reject.labels("store").inc()
            raise Unavailable("the database is unreachable; the report was not stored, retry later") from exc
        finally:
            pending.discard(report.seq)
        if not written:
            reject.labels("duplicate").inc()
            raise Conflict(f"seq: window {report.seq} of {node.id} was already accepted", field="seq")
        recent.append(report.seq)
        recent_set.add(report.seq)
        if len(recent) > 4096:
            recent_set.discard(recent.popleft())
        node.last_report_at = max(node.last_report_at or 0, now)
        node.last_seq = max(node.last_seq if node.last_seq is not None else -1, report.seq)
        node.reports_accepted += 1
        self.record_report(node, report.peers, start + report.window_s, now)
        self.metrics.reports_ingested.inc()
        return s.ReportAck(node_id=node.id, seq=report.seq, accepted=True)

    def _reject_peers(self, node_id: str, peer_ids: list[str]) -> None:
        """Raise for the first bad peer: itself, listed twice, or not a node we know."""
        reject = self.metrics.reports_rejected
        seen = set()
        for i, peer in enumerate(peer_ids):
            field = f"peers[{i}].peer_node_id"
            if peer == node_id:
                reject.labels("bad_peer").inc()
                raise Invalid(f"{field}: a node does not probe itself", field=field)
            if peer in seen:
                reject.labels("bad_peer").inc()
                raise Invalid(f"{field}: listed twice", field=field)
            seen.add(peer)
            if peer not in self.nodes:
                reject.labels("bad_peer").inc()
                raise Invalid(f"{field}: unknown node {peer!r}", field=field)

    def record_report(self, node: NodeRow, peers: s.PeerColumns, window_end: float, received: float) -> None:
        """Fold one report into the link book (also used for reports pulled from other replicas).

        Peers that are not (or no longer) known nodes, and those with nothing sent, are skipped.
        """
        at = min(window_end, received)
        self.region_last_report[node.region] = max(self.region_last_report.get(node.region, 0), received)
        if not peers.ids:
            return
        sent, got = peers.sent, peers.received
        keep = sent > 0
        loss = np.divide(100.0 * (sent - np.minimum(got, sent)), sent, out=np.zeros_like(sent), where=keep)
        self.linkbook.record_report(
            node.id, node.region, peers.ids, self._region_of, peers.p50, peers.p90, peers.jitter, loss, at, keep
        )

    def _region_of(self, node_id: str) -> str | None:
        node = self.nodes.get(node_id)
        return None if node is None else node.region

    def record_stored_report(self, node: NodeRow, body: str, window_start: float, received: float) -> None:
        """A report another replica accepted (JSON text from the store)."""
        try:
            report = s.parse_report(body)
        except ValueError:  # accepted by an older replica under other rules: read what is there
            data = json.loads(body)
            keys = ("rtt_p50_ms", "rtt_p90_ms", "jitter_ms")
            peers = s.PeerColumns.from_rows(
                [p["peer_node_id"] for p in data["peers"]],
                [(p["sent"], p["received"], *map(p.get, keys)) for p in data["peers"]],
            )
            self.record_report(node, peers, window_start + float(data["window_s"]), received)
            return
        self.record_report(node, report.peers, window_start + report.window_s, received)

    async def _write_reports(self, rows: list[dict[str, Any]]) -> list[bool]:
        return await self.db(self.store.insert_reports, rows, self.settings.replica_id)

    # --- routes, links, placement --------------------------------------------------------

    def links_out(self) -> s.LinksOut:
        now = self.clock()
        snap = self.snapshot
        out = []
        for (src, dst), link in sorted(snap.links.items()):
            age = max(0.0, now - link.updated_at)
            out.append(
                s.LinkOut(
                    src=src,
                    dst=dst,
                    rtt_p50_ms=_num(link.rtt_p50_ms),
                    rtt_p90_ms=_num(link.rtt_p90_ms),
                    jitter_ms=_num(link.jitter_ms),
                    loss_percent=link.loss_percent,
                    age_s=round(age, 3),
                    samples=link.samples,
                    fresh=age <= self.weights.stale_after_s,
                )
            )
        return s.LinksOut(
            generated_at=ts(now),
            stale_after_s=self.weights.stale_after_s,
            links=out,
        )

    def weights_out(self) -> s.RoutingWeightsOut:
        w = self.weights
        return s.RoutingWeightsOut(
            loss_weight=w.loss_weight,
            jitter_weight=w.jitter_weight,
            relay_penalty_ms=w.relay_penalty_ms,
            hysteresis_ratio=w.hysteresis_ratio,
            max_relays=w.max_relays,
            stale_after_s=w.stale_after_s,
        )

    def route_out(self, src: str, dst: str) -> s.RouteOut:
        snap = self.snapshot
        table = snap.table
        if table is None or src not in table.index or dst not in table.index:
            self._check_route_ends(src, dst)
            return s.RouteOut(
                src=src,
                dst=dst,
                path=[],
                rtt_ms=None,
                cost=None,
                via_relay=False,
                reachable=False,
                generation=snap.generation,
            )
        r = table.route(src, dst)
        return s.RouteOut(
            src=src,
            dst=dst,
            path=list(r.path or []),
            rtt_ms=_opt(r.rtt_ms),
            cost=_opt(r.cost),
            via_relay=r.via_relay,
            reachable=r.reachable,
            generation=snap.generation,
        )

    def route_json(self, src: str, dst: str) -> bytes:
        """The hot path: cached bytes per pair and generation."""
        snap = self.snapshot
        cached = snap.route_cache.get((src, dst))
        if cached is None:
            cached = self.route_out(src, dst).model_dump_json().encode()
            if snap.table is not None and src in snap.table.index and dst in snap.table.index:
                snap.route_cache[(src, dst)] = cached
        return cached

    def _check_route_ends(self, src: str, dst: str) -> None:
        for name, rid in (("src", src), ("dst", dst)):
            self.check_region_id(rid, name)
            if rid not in self.regions:
                raise Missing(f"{name}: unknown region {rid!r}", field=name)

    def explain(self, src: str, dst: str) -> s.RouteExplained:
        base = self.route_out(src, dst)
        snap = self.snapshot
        candidates: list[s.RouteCandidate] = []
        if snap.table is not None and snap.cost is not None and snap.rtt is not None:
            for c in explain_route(
                snap.table.regions, snap.cost, snap.rtt, snap.drained, self.weights, src, dst, table=snap.table
            ):
                candidates.append(
                    s.RouteCandidate(
                        path=list(c.path),
                        rtt_ms=_opt(c.rtt_ms),
                        cost=_opt(c.cost),
                        usable=c.usable,
                        chosen=c.chosen,
                        note=c.note,
                    )
                )
        reason = _reason(base, candidates)
        return s.RouteExplained(**base.model_dump(), reason=reason, weights=self.weights_out(), candidates=candidates)

    def route_table_out(self) -> s.RouteTableOut:
        snap = self.snapshot
        routes: list[s.RouteOut] = []
        if snap.table is not None:
            for r in snap.table.all_routes():
                routes.append(
                    s.RouteOut(
                        src=r.src,
                        dst=r.dst,
                        path=list(r.path or []),
                        rtt_ms=_opt(r.rtt_ms),
                        cost=_opt(r.cost),
                        via_relay=r.via_relay,
                        reachable=r.reachable,
                        generation=snap.generation,
                    )
                )
        return s.RouteTableOut(
            generation=snap.generation, computed_at=ts(snap.computed_at), weights=self.weights_out(), routes=routes
        )

    def placement(self, near: str | None, lat: float | None, lon: float | None) -> s.PlacementOut:
        if near is None and (lat is None or lon is None):
            raise Invalid("give near=<region id> or both lat and lon", field="near")
        if near is not None:
            self.get_region(near)
        states = {rid: self.region_state(rid) for rid in self.regions}
        try:
            p = place(self.regions, states, self.snapshot.table, near=near, lat=lat, lon=lon)
        except NoHealthyRegion as exc:
            raise Unavailable(f"no healthy region to place in: {exc}") from exc
        except UnknownRegion as exc:
            raise Missing(f"near: unknown region {near!r}", field="near") from exc
        return s.PlacementOut(
            region=p.region,
            reason=p.reason,
            rtt_ms=_opt(p.rtt_ms),
            distance_km=_opt(p.distance_km),
            alternatives=[
                s.PlacementCandidate(
                    region=a.region,
                    state=cast(s.RegionState, a.state),
                    rtt_ms=_opt(a.rtt_ms),
                    distance_km=_opt(a.distance_km),
                    note=a.note,
                )
                for a in p.alternatives
            ],
        )

    # --- events and status ---------------------------------------------------------------

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
            rows = await self.db(self.store.events, since_id, since_ts, limit, region, kind)
            if rows or wait <= 0 or self.clock() >= deadline:
                break
            await self.wait_changed(lambda: False, min(0.5, max(0.0, deadline - self.clock())))
        return [
            s.EventOut(
                id=r.id,
                ts=ts(r.ts),
                kind=cast(s.EventKind, r.kind),
                region=r.region,
                node_id=r.node_id,
                reason=r.reason,
                data=r.data or {},
            )
            for r in rows
        ]

    def status(self) -> s.StatusOut:
        now = self.clock()
        snap = self.snapshot
        regions = [self.region_out(r) for r in self.regions.values()]
        order = {"drained": 0, "degraded": 1, "active": 2}
        regions.sort(key=lambda r: (order[r.state], r.id))
        by_state = {k: 0 for k in order}
        for r in regions:
            by_state[r.state] += 1
        up = sum(1 for n in self.nodes.values() if self._node_up(n, now))
        alerts = list(snap.alerts)
        if not self.store_ok:
            alerts.append("database unreachable: serving the last known routes read-only")
        return s.StatusOut(
            generation=snap.generation,
            computed_at=ts(snap.computed_at),
            recompute_age_s=None if snap.computed_at is None else round(now - snap.computed_at, 3),
            regions_by_state=by_state,
            regions=regions,
            nodes_up=up,
            nodes_down=len(self.nodes) - up,
            frozen=snap.frozen,
            alerts=alerts,
            leader=self.leader,
            leader_since=ts(self.leader_since),
            replica_id=self.settings.replica_id,
            replicas=self.replicas,
            degraded_store=not self.store_ok,
        )

    # --- the control loop's entry points (see loop.py) -----------------------------------

    def kick(self) -> None:
        self._kick.set()

    async def recompute_now(self, timeout: float = 3.0) -> None:
        """Ask the loop for a recompute and wait for it (on the leader), so a drain shows at once."""
        if not self.is_leader:
            return
        want = self.ticks_started + 1  # a tick that starts after this change
        self._kick.set()
        await self.wait_changed(lambda: self.ticks_done >= want, timeout)

    def load_published(self, generation: int, computed_at: float, body: dict[str, Any]) -> None:
        """Adopt a route table published by the leader (followers, and every start-up)."""
        regions = tuple(body["regions"])
        r = len(regions)
        cost = _matrix(body["cost"], r)
        rtt = _matrix(body["rtt"], r)
        relays = np.asarray(body["relays"], dtype=np.int32).reshape(r, r, 2) if r else np.zeros((0, 0, 2), np.int32)
        table = RouteTable(
            regions=regions,
            index={x: i for i, x in enumerate(regions)},
            cost=_matrix(body["best_cost"], r),
            rtt=_matrix(body["best_rtt"], r),
            relays=relays,
        )
        links = {(lk["src"], lk["dst"]): RegionLink(**lk) for lk in body.get("links", [])}
        self.snapshot = Snapshot(
            generation=generation,
            computed_at=computed_at,
            table=table,
            cost=cost,
            rtt=rtt,
            drained=frozenset(body.get("drained", [])),
            links=links,
            states=dict(body.get("states", {})),
            health=dict(body.get("health", {})),
            frozen=bool(body.get("frozen", False)),
            alerts=tuple(body.get("alerts", [])),
        )
        self.metrics.route_generation.set(generation)


def snapshot_body(snap: Snapshot) -> dict[str, Any]:
    """Serialise a snapshot for publication (JSON: inf becomes null)."""
    assert snap.table is not None and snap.cost is not None and snap.rtt is not None
    t = snap.table
    return {
        "regions": list(t.regions),
        "cost": _flat(snap.cost),
        "rtt": _flat(snap.rtt),
        "best_cost": _flat(t.cost),
        "best_rtt": _flat(t.rtt),
        "relays": t.relays.astype(int).ravel().tolist(),
        "drained": sorted(snap.drained),
        "links": [
            {
                "src": lk.src,
                "dst": lk.dst,
                "rtt_p50_ms": _opt(lk.rtt_p50_ms),
                "rtt_p90_ms": _opt(lk.rtt_p90_ms),
                "jitter_ms": _opt(lk.jitter_ms),
                "loss_percent": lk.loss_percent,
                "updated_at": lk.updated_at,
                "samples": lk.samples,
            }
            for lk in snap.links.values()
        ],
        "states": snap.states,
        "health": snap.health,
        "frozen": snap.frozen,
        "alerts": list(snap.alerts),
    }


def _flat(m: np.ndarray) -> list[float | None]:
    """Row-major values rounded to 0.1 µs; None where infinite or NaN (JSON has neither)."""
    vals = np.round(m.ravel().astype(float), 4)
    out: list[float | None] = vals.tolist()
    for k in np.flatnonzero(~np.isfinite(vals)).tolist():
        out[k] = None
    return out


def _matrix(values: list[float | None], r: int) -> np.ndarray:
    arr = np.array([math.inf if v is None else v for v in values], dtype=np.float64)
    return arr.reshape(r, r) if r else np.zeros((0, 0))


def _opt(x: float | None) -> float | None:
    if x is None or not math.isfinite(x):
        return None
    return round(float(x), 3)


def _num(x: float | None) -> float:
    return -1.0 if x is None or not math.isfinite(x) else round(float(x), 3)


def _reason(route: s.RouteOut, candidates: list[s.RouteCandidate]) -> str:
    if not route.reachable:
        return f"no usable path from {route.src} to {route.dst}: links missing, stale or lossy"
    direct = next((c for c in candidates if len(c.path) == 2), None)
    chosen = next((c for c in candidates if c.chosen), None)
    note = f" ({chosen.note})" if chosen is not None and chosen.note else ""
    if not route.via_relay:
        return f"direct link {route.src} -> {route.dst} is the cheapest usable path{note}"
    relays = ", ".join(route.path[1:-1])
    if direct is None or not direct.usable or direct.cost is None:
        return f"via {relays}: the direct link is unusable (missing, stale or lossy){note}"
    saving = 100.0 * (1 - (route.cost or 0) / direct.cost) if direct.cost else 0.0
    return f"via {relays}: {saving:.0f}% cheaper than the direct link (cost {direct.cost:.1f}){note}"
