"""The Store: every durable read and write of the controller, behind one small class.

Synchronous SQLAlchemy 2 on purpose: the async service calls it through a worker thread, so
one code path serves SQLite (embedded default) and PostgreSQL (psycopg 3, several replicas).
Writes that a client is told about (drains, registrations, tokens, reports) are committed
before the call returns.

Some 1,200 lines on purpose: one class, because many writes span tables in one transaction (a
join spends a token or a nonce, takes an instance identity, allocates an address, adds the node,
bumps a counter and records an event; a drain checks the lease fence, writes the drain and its
event; both notify followers in the same transaction). Split by table, each of those
transactions would be spread over several modules. What stands apart already lives apart
(`history.py`: link rollups; `reports.py`: the packed report windows); the next candidates are the lease,
route-table and heartbeat methods (the leader's side), which share only `_tx` and `_notify`.
"""

from __future__ import annotations

import fcntl
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import msgspec
from alembic import command
from alembic.config import Config
from sqlalchemy import (
    CursorResult,
    Engine,
    Result,
    Table,
    bindparam,
    create_engine,
    delete,
    event,
    exists,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from meshctl.core.ipam import SubnetExhausted, free_addresses, next_address, region_subnet
from meshctl.store.history import LinkHistory
from meshctl.store.models import (
    AddressRow,
    CounterRow,
    DrainRow,
    EventRow,
    JoinPolicyRow,
    JoinTokenRow,
    LeaseRow,
    NodeDrainRow,
    NodeIdentityRow,
    NodeRow,
    RegionRow,
    ReplicaRow,
    RouteTableRow,
    ServiceSecretRow,
    TokenRow,
    UsedNonceRow,
)
from meshctl.store.reports import ReportStore, Window
from meshctl.store.values import (
    Drain,
    Event,
    Fence,
    JoinPolicyRecord,
    JoinToken,
    Lease,
    Node,
    NodeDrain,
    PublishedTable,
    Region,
    Replica,
    ReportCursor,
    StoredReport,
    Token,
)

MIGRATIONS = Path(__file__).parent / "migrations"
LEADER_LEASE = "controller"
COUNTERS = ("peer_generation", "config_version")
# PostgreSQL: the channel every writer NOTIFYs (in the writing transaction, so delivered at commit)
# with what changed: "config", "peers", "event" or "table"
CHANGES_CHANNEL = "meshctl_changes"
MIGRATION_LOCK_KEY = 0x6D657368  # "mesh": pg_advisory_xact_lock key held while migrating
# how long an event id missing below a committed one may still be a transaction in flight
# (PostgreSQL): readers wait for it that long, then take it as rolled back (`Store.events`)
EVENT_GAP_WAIT_S = 10.0

log = logging.getLogger("meshctl.store")


class StoreError(Exception):
    """Base of the store's own errors."""


class JoinRefused(StoreError):
    """The join token is unknown, expired, used up, or for another region."""


class NotFound(StoreError):
    """No such row."""


class Exists(StoreError):
    """A row with this key exists already."""


class AttestedJoinRefused(StoreError):
    """An attested join refused by what only the store knows: `rule` 'nonce' (spent), 'instance' (the
    instance is a live node already: `node_id`) or 'cap' (the region is full)."""

    def __init__(self, rule: str, message: str, node_id: str | None = None) -> None:
        super().__init__(message)
        self.rule, self.node_id = rule, node_id


@dataclass(frozen=True, slots=True)
class JoinRequest:
    """One node to register (`Store.join_batch`): with a join token (`join_hash`), or with a
    verified cloud `identity` (cloud, account, instance id), its policy, nonce and cap."""

    node_id: str
    region: str
    name: str
    public_key: str
    endpoint: str
    token_hash: str
    now: float
    overlay_cidr: str
    region_prefix: int
    join_hash: str | None = None
    identity: tuple[str, str, str] | None = None
    policy_id: str | None = None
    nonce: tuple[str, float] | None = None  # (value, expiry)
    max_nodes: int | None = None


SQLITE_PAGE_SIZE = 1024


def _json_text(value: Any) -> str:
    """JSON columns are written by msgspec (a route table body at 150 regions: ~8x json.dumps)."""
    return msgspec.json.encode(value).decode()


def _json_value(text: str | bytes) -> Any:
    try:
        return msgspec.json.decode(text)
    except msgspec.DecodeError:  # written by json.dumps before: NaN and Infinity were allowed
        return json.loads(text)


def make_engine(url: str) -> Engine:
    """An engine tuned for the backend: SQLite gets WAL and a busy timeout.

    SQLite syncs the WAL on every commit (synchronous=FULL): an acknowledged report survives a
    power cut, not only a crash of the controller. Group commit makes that one fsync per batch.
    """
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 30},
            json_serializer=_json_text,
            json_deserializer=_json_value,
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            # a new database gets 1 KiB pages (an existing one keeps its own): each report window
            # dirties two pages at random (its seq row, its node's counters), and the WAL writes
            # whole pages, then the checkpoint again: 26.5 -> 11.1 KB written per window at
            # 3,000 nodes, at the same speed (bench.bench_report_store)
            cur.execute(f"PRAGMA page_size={SQLITE_PAGE_SIZE}")
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            # pages freed by a delete go to the free list without being zeroed (Debian's SQLite
            # zeroes them by default: every pruned window would be written a second time)
            cur.execute("PRAGMA secure_delete=FAST")
            cur.close()

        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    return create_engine(
        url,
        pool_size=8,
        max_overflow=8,
        pool_pre_ping=True,
        connect_args={"connect_timeout": 3},
        json_serializer=_json_text,
        json_deserializer=_json_value,
    )


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest Alembic revision, one process at a time.

    Replicas starting together on an empty database take turns: on PostgreSQL under an advisory
    lock held by the migrating transaction (released at its commit); on SQLite under a file lock
    beside the database file. Whoever comes second finds the schema at head and does nothing.
    """
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with _file_lock(engine), engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK_KEY})
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


def _file_lock(engine: Engine) -> AbstractContextManager[Any]:
    """An exclusive lock on `<database file>.lock` (SQLite files only; otherwise nothing)."""
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:":
        return nullcontext()

    @contextmanager
    def held() -> Iterator[None]:
        with open(f"{database}.lock", "a+b") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    return held()


class Store:
    """Durable state of the mesh. Every method is one transaction; what it returns are frozen
    values (`meshctl.store.values`), never ORM rows."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self._session = sessionmaker(self.engine, expire_on_commit=False)
        self.history = LinkHistory(self)  # link_history rows (store/history.py)
        self.reports = ReportStore(self)  # stored reports (store/reports.py)

    @property
    def backend(self) -> str:
        return self.engine.dialect.name

    def open(self) -> None:
        """Migrate (under a database lock) and make sure the fixed rows exist.

        Any number of replicas may do this at once on an empty database: the fixed rows are
        inserted with ON CONFLICT DO NOTHING, so whoever comes second finds them there.
        """
        migrate(self.engine)
        ins = _dialect_insert(self.backend)
        with self._tx() as s:
            s.execute(ins(CounterRow).values([{"name": n, "value": 0} for n in COUNTERS]).on_conflict_do_nothing())
            s.execute(
                ins(LeaseRow)
                .values(name=LEADER_LEASE, holder=None, instance=None, epoch=0, acquired_at=0, expires_at=0)
                .on_conflict_do_nothing()
            )

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _tx(self) -> Iterator[Session]:
        with self._session() as session, session.begin():
            yield session

    # --- counters and events -------------------------------------------------------------

    @staticmethod
    def _notify(s: Session, what: str) -> None:
        """PostgreSQL: tell the listening replicas at commit that `what` changed (no-op elsewhere)."""
        if s.get_bind().dialect.name == "postgresql":
            s.execute(text("SELECT pg_notify(:channel, :what)"), {"channel": CHANGES_CHANNEL, "what": what})

    @classmethod
    def _bump(cls, s: Session, name: str) -> int:
        s.execute(update(CounterRow).where(CounterRow.name == name).values(value=CounterRow.value + 1))
        cls._notify(s, "peers" if name == "peer_generation" else "config")
        return int(s.execute(select(CounterRow.value).where(CounterRow.name == name)).scalar_one())

    def counters(self) -> dict[str, int]:
        with self._tx() as s:
            return {r.name: int(r.value) for r in s.scalars(select(CounterRow))}

    @classmethod
    def _event(
        cls,
        s: Session,
        ts: float,
        kind: str,
        reason: str,
        region: str | None = None,
        node_id: str | None = None,
        data: dict[str, Any] | None = None,
    ) -> EventRow:
        row = EventRow(ts=ts, kind=kind, reason=reason, region=region, node_id=node_id, data=data or {})
        s.add(row)
        cls._notify(s, "event")
        return row

    def add_event(
        self,
        ts: float,
        kind: str,
        reason: str,
        region: str | None = None,
        node_id: str | None = None,
        data: dict[str, Any] | None = None,
    ) -> None:
        with self._tx() as s:
            self._event(s, ts, kind, reason, region, node_id, data)

    def events(
        self,
        since_id: int | None = None,
        since_ts: float | None = None,
        limit: int = 100,
        region: str | None = None,
        kind: str | None = None,
        now: float | None = None,
    ) -> list[Event]:
        """Events after `since_id` (or from `since_ts`) in id order; without either, the newest.

        On PostgreSQL an event takes its id when inserted and shows when its transaction commits,
        which can be after an event with a higher id: a reader that moved past the higher one would
        never see it (a drain missed by `GET /v1/events?since=` and the event stream). So past
        `since_id` nothing is answered beyond an id that is missing while the event after it is
        younger than `EVENT_GAP_WAIT_S`: the missing one may still commit. A gap older than that
        is taken as a transaction that rolled back (its id is never used)."""
        with self._tx() as s:
            q = select(EventRow)
            if since_id is not None:
                q = q.where(EventRow.id > since_id)
                if self.backend == "postgresql":
                    gap = self._first_fresh_gap(s, since_id, time.time() if now is None else now)
                    if gap is not None:
                        q = q.where(EventRow.id < gap)
            if since_ts is not None:
                q = q.where(EventRow.ts >= since_ts)
            if region is not None:
                q = q.where(EventRow.region == region)
            if kind is not None:
                q = q.where(EventRow.kind == kind)
            if since_id is None and since_ts is None:
                rows = list(s.scalars(q.order_by(EventRow.id.desc()).limit(limit)))[::-1]
            else:
                rows = list(s.scalars(q.order_by(EventRow.id).limit(limit)))
            return [Event.of(r) for r in rows]

    @staticmethod
    def _first_fresh_gap(s: Session, since_id: int, now: float, scan: int = 1000) -> int | None:
        """The first id after `since_id` not (yet) in the table while a later event is younger
        than EVENT_GAP_WAIT_S; None when there is none in the next `scan` events."""
        expect = since_id + 1
        for event_id, ts in s.execute(
            select(EventRow.id, EventRow.ts).where(EventRow.id > since_id).order_by(EventRow.id).limit(scan)
        ):
            if event_id != expect and now - ts < EVENT_GAP_WAIT_S:
                return expect
            expect = event_id + 1
        return None

    # --- regions and drains --------------------------------------------------------------

    def regions(self) -> list[Region]:
        with self._tx() as s:
            return [Region.of(r) for r in s.scalars(select(RegionRow).order_by(RegionRow.id))]

    def drains(self) -> list[Drain]:
        with self._tx() as s:
            return [Drain.of(r) for r in s.scalars(select(DrainRow))]

    def upsert_region(
        self, region_id: str, cloud: str, name: str | None, lat: float, lon: float, metro: str | None, now: float
    ) -> tuple[Region, bool]:
        for attempt in range(_RETRIES):
            try:
                with self._tx() as s:
                    # the counter's row lock first: concurrent registrations queue here instead of
                    # reading the same max(ordinal) and colliding (150 at once on PostgreSQL ran
                    # out of retries and answered 500)
                    self._bump(s, "config_version")
                    row = s.get(RegionRow, region_id)
                    created = row is None
                    if row is None:
                        ordinal = s.execute(select(func.coalesce(func.max(RegionRow.ordinal), -1))).scalar_one() + 1
                        row = RegionRow(
                            id=region_id,
                            ordinal=ordinal,
                            created_at=now,
                            cloud=cloud,
                            name=name,
                            lat=lat,
                            lon=lon,
                            metro=metro,
                        )
                        s.add(row)
                        self._event(s, now, "region_added", f"region {region_id} added", region=region_id)
                    else:
                        row.cloud, row.name, row.lat, row.lon, row.metro = cloud, name, lat, lon, metro
                    s.flush()
                    return Region.of(row), created
            except IntegrityError:
                _pause(attempt)
        raise StoreError(f"could not register region {region_id}: concurrent updates")

    def set_drain(
        self, region: str, kind: str, reason: str, by: str | None, now: float, fence: Fence | None = None
    ) -> tuple[Drain, int]:
        """Drain a region (manual, or automatic under the leader's fence) and record why: the drain
        and the peer generation it moved to (its nodes' peer lists say drained)."""
        with self._tx() as s:
            if fence is not None and not self._holds(s, fence, now):
                raise StoreError("lease lost: automatic drain refused")
            row = s.get(DrainRow, region)
            if row is None:
                row = DrainRow(region=region, kind=kind, reason=reason, since=now, by=by)
                s.add(row)
            else:
                row.kind, row.reason, row.by = kind, reason, by
            self._event(s, now, "drain", reason, region=region, data={"kind": kind, "by": by})
            self._bump(s, "config_version")
            gen = self._bump(s, "peer_generation")  # the region's nodes' peer lists say drained: long polls wake
            return Drain.of(row), gen

    def remove_drain(
        self,
        region: str,
        reason: str,
        by: str | None,
        now: float,
        fence: Fence | None = None,
        only_kind: str | None = None,
    ) -> int | None:
        """Lift a region's drain (only one of `only_kind`, if given): the peer generation it moved
        to, or None when there was none to lift."""
        with self._tx() as s:
            if fence is not None and not self._holds(s, fence, now):
                raise StoreError("lease lost: automatic undrain refused")
            row = s.get(DrainRow, region)
            if row is None or (only_kind is not None and row.kind != only_kind):
                return None
            s.delete(row)
            self._event(s, now, "undrain", reason, region=region, data={"kind": row.kind, "by": by})
            self._bump(s, "config_version")
            return self._bump(s, "peer_generation")

    # --- node drains ---------------------------------------------------------------------

    def node_drains(self) -> list[NodeDrain]:
        """Drains of live nodes (a removed node's drain is history)."""
        with self._tx() as s:
            q = (
                select(NodeDrainRow)
                .join(NodeRow, NodeRow.id == NodeDrainRow.node_id)
                .where(NodeRow.removed_at.is_(None))
            )
            return [NodeDrain.of(r) for r in s.scalars(q)]

    def set_node_drain(self, node_id: str, reason: str, by: str | None, now: float) -> tuple[NodeDrain, int]:
        """Drain a node (manual) and record why; the peer generation moves (its agent's long poll wakes)."""
        with self._tx() as s:
            node = s.get(NodeRow, node_id)
            if node is None or node.removed_at is not None:
                raise NotFound(node_id)
            row = s.get(NodeDrainRow, node_id)
            if row is None:
                row = NodeDrainRow(node_id=node_id, kind="manual", reason=reason, since=now, by=by)
                s.add(row)
            else:
                row.reason, row.by = reason, by
            self._event(
                s, now, "node_drain", reason, region=node.region, node_id=node_id, data={"kind": "manual", "by": by}
            )
            gen = self._bump(s, "peer_generation")
            s.flush()
            return NodeDrain.of(row), gen

    def remove_node_drain(self, node_id: str, reason: str, by: str | None, now: float) -> int | None:
        """Lift a node's drain: the new peer generation, or None when it was not drained."""
        with self._tx() as s:
            node = s.get(NodeRow, node_id)
            row = s.get(NodeDrainRow, node_id)
            if node is None or row is None:
                return None
            s.delete(row)
            self._event(
                s, now, "node_undrain", reason, region=node.region, node_id=node_id, data={"kind": row.kind, "by": by}
            )
            return self._bump(s, "peer_generation")

    # --- API tokens ----------------------------------------------------------------------

    def create_token(
        self, token_id: str, name: str, scope: str, token_hash: str, now: float, expires_at: float | None
    ) -> Token:
        with self._tx() as s:
            row = TokenRow(
                id=token_id,
                name=name,
                scope=scope,
                token_hash=token_hash,
                created_at=now,
                expires_at=expires_at,
                revoked_at=None,
            )
            s.add(row)
            return Token.of(row)

    def ensure_token(self, token_id: str, name: str, scope: str, token_hash: str, now: float) -> bool:
        """Create a token with this hash unless one exists (replicas starting together with the
        same MESH_ADMIN_TOKEN): True when this call created it."""
        values = {
            "id": token_id,
            "name": name,
            "scope": scope,
            "token_hash": token_hash,
            "created_at": now,
            "expires_at": None,
            "revoked_at": None,
        }
        stmt = _dialect_insert(self.backend)(TokenRow).values(**values).on_conflict_do_nothing()
        with self._tx() as s:
            return _count(s.execute(stmt)) == 1

    def credential(self, token_hash: str) -> Node | Token | None:
        """Whose secret hashes to this: a node (removed ones too: see `Node.removed_at`), an API
        token (revoked and expired ones too), or nobody."""
        with self._tx() as s:
            node = s.scalars(select(NodeRow).where(NodeRow.token_hash == token_hash)).first()
            if node is not None:
                return Node.of(node)
            token = s.scalars(select(TokenRow).where(TokenRow.token_hash == token_hash)).first()
            return None if token is None else Token.of(token)

    def tokens(self, include_revoked: bool = False) -> list[Token]:
        with self._tx() as s:
            q = select(TokenRow).order_by(TokenRow.created_at)
            if not include_revoked:
                q = q.where(TokenRow.revoked_at.is_(None))
            return [Token.of(r) for r in s.scalars(q)]

    def token_by_hash(self, token_hash: str) -> Token | None:
        with self._tx() as s:
            row = s.scalars(select(TokenRow).where(TokenRow.token_hash == token_hash)).first()
            return None if row is None else Token.of(row)

    def revoke_token(self, token_id: str, now: float) -> Token:
        with self._tx() as s:
            row = s.get(TokenRow, token_id)
            if row is None or row.revoked_at is not None:
                raise NotFound(token_id)
            row.revoked_at = now
            self._bump(s, "config_version")
            return Token.of(row)

    def has_admin_token(self) -> bool:
        with self._tx() as s:
            q = select(exists().where(TokenRow.scope == "admin", TokenRow.revoked_at.is_(None)))
            return bool(s.execute(q).scalar())

    # --- join tokens and nodes -----------------------------------------------------------

    def create_join_token(
        self, token_id: str, region: str, token_hash: str, now: float, ttl_s: int, uses: int
    ) -> JoinToken:
        with self._tx() as s:
            row = JoinTokenRow(
                id=token_id,
                region=region,
                token_hash=token_hash,
                created_at=now,
                expires_at=now + ttl_s,
                uses=uses,
                uses_left=uses,
            )
            s.add(row)
            return JoinToken.of(row)

    def nodes(self) -> list[Node]:
        with self._tx() as s:
            q = select(NodeRow).where(NodeRow.removed_at.is_(None)).order_by(NodeRow.id)
            return [Node.of(r) for r in s.scalars(q)]

    def all_nodes(self) -> tuple[int, list[Node], list[NodeDrain]]:
        """(the peer generation, every live node, every node drain), in one transaction."""
        with self._tx() as s:
            gen = int(s.execute(select(CounterRow.value).where(CounterRow.name == "peer_generation")).scalar_one())
            q = select(NodeRow).where(NodeRow.removed_at.is_(None)).order_by(NodeRow.id)
            nodes = [Node.of(r) for r in s.scalars(q)]
            live = select(NodeDrainRow).join(NodeRow, NodeRow.id == NodeDrainRow.node_id)
            drains = [NodeDrain.of(r) for r in s.scalars(live.where(NodeRow.removed_at.is_(None)))]
            return gen, nodes, drains

    def nodes_since(self, generation: int) -> tuple[int, list[Node], list[NodeDrain]]:
        """(the peer generation, the nodes changed after `generation` (removed ones too, with their
        `removed_at`), every node drain): what a replica at `generation` needs to catch up.

        The counter is read first: a change is committed with its bump (which takes the counter's
        row lock), so every change up to the counter read is among the nodes read next; a change
        committed in between may show too, and is read again next time (the newest version wins)."""
        with self._tx() as s:
            gen = int(s.execute(select(CounterRow.value).where(CounterRow.name == "peer_generation")).scalar_one())
            changed = [Node.of(r) for r in s.scalars(select(NodeRow).where(NodeRow.peer_gen > generation))]
            live = select(NodeDrainRow).join(NodeRow, NodeRow.id == NodeDrainRow.node_id)
            drains = [NodeDrain.of(r) for r in s.scalars(live.where(NodeRow.removed_at.is_(None)))]
            return gen, changed, drains

    def join_node(
        self,
        *,
        node_id: str,
        join_hash: str,
        region: str,
        name: str,
        public_key: str,
        endpoint: str,
        token_hash: str,
        now: float,
        overlay_cidr: str,
        region_prefix: int,
    ) -> tuple[Node, int]:
        """Spend one use of the join token, allocate an address, register the node (see `join_batch`)."""
        return self._join_one(
            JoinRequest(
                node_id, region, name, public_key, endpoint, token_hash, now, overlay_cidr, region_prefix, join_hash
            )
        )

    # --- attested join (join policies, spent nonces, node identities) ---------------------

    def join_attested(
        self,
        *,
        node_id: str,
        identity: tuple[str, str, str],
        policy_id: str,
        nonce: tuple[str, float] | None,
        max_nodes: int | None,
        region: str,
        name: str,
        public_key: str,
        endpoint: str,
        token_hash: str,
        now: float,
        overlay_cidr: str,
        region_prefix: int,
    ) -> tuple[Node, int]:
        """Register a node whose cloud `identity` (cloud, account, instance id) was verified, in one
        transaction: spend its `nonce` (value, expiry; refused if spent), take the identity (refused
        while another live node holds it), check the region's cap, allocate, add.

        Raises AttestedJoinRefused with rule 'nonce', 'instance' or 'cap'. A collision with a
        concurrent join retries, and the retry sees what the other one committed.
        """
        return self._join_one(
            JoinRequest(
                node_id,
                region,
                name,
                public_key,
                endpoint,
                token_hash,
                now,
                overlay_cidr,
                region_prefix,
                identity=identity,
                policy_id=policy_id,
                nonce=nonce,
                max_nodes=max_nodes,
            )
        )

    def join_batch(self, requests: Sequence[JoinRequest]) -> list[tuple[Node, int] | Exception]:
        """Register several nodes in one transaction (group commit: one fsync for the batch): for each
        request, in order, (the node, its peer generation) or why it was refused (JoinRefused,
        AttestedJoinRefused, SubnetExhausted), as `join_node` and `join_attested` would answer it.

        A refused request writes nothing: every check comes before its first write. The regions'
        rows are locked first, in id order, so two replicas' batches never wait on each other in a
        circle. Should anything still collide (another replica took the same address or key), the
        batch is rolled back and each request is registered alone, with its own retries.
        """
        out: dict[int, tuple[Node, int] | Exception] = {}
        try:
            with self._tx() as s:
                ids = sorted({r.region for r in requests})
                q = select(RegionRow).where(RegionRow.id.in_(ids)).order_by(RegionRow.id).with_for_update()
                regions = {r.id: Region.of(r) for r in s.scalars(q)}
                with_tokens: list[tuple[int, JoinRequest]] = []
                for i, req in enumerate(requests):
                    if req.join_hash is not None and req.identity is None:
                        with_tokens.append((i, req))
                        continue
                    try:
                        out[i] = self._join_in(s, req)
                    except (StoreError, SubnetExhausted) as exc:
                        out[i] = exc
                if with_tokens:
                    out.update(self._join_with_tokens(s, with_tokens, regions))
            return [out[i] for i in range(len(requests))]
        except IntegrityError as exc:
            log.info("a batch of %d joins collided: registering them one by one (%s)", len(requests), exc.orig)
        alone: list[tuple[Node, int] | Exception] = []
        for req in requests:
            try:
                alone.append(self._join_one(req))
            except (StoreError, SubnetExhausted) as exc:
                alone.append(exc)
        return alone

    @classmethod
    def _join_with_tokens(
        cls, s: Session, items: list[tuple[int, JoinRequest]], regions: dict[str, Region]
    ) -> dict[int, tuple[Node, int] | Exception]:
        """Token joins of a batch in a few statements, whatever their number: the tokens' rows read
        (and locked) once, each region's addresses read once, every row inserted in one statement
        per table. Refused ones write nothing; each answer is what `_join_in` would give alone."""
        tokens = cast(Table, JoinTokenRow.__table__)
        hashes = sorted({req.join_hash for _, req in items if req.join_hash is not None})
        q = (
            select(tokens.c.token_hash, tokens.c.region, tokens.c.uses_left, tokens.c.expires_at)
            .where(tokens.c.token_hash.in_(hashes))
            .order_by(tokens.c.token_hash)
            .with_for_update()
        )
        found = {row.token_hash: row for row in s.execute(q)}
        left = {h: int(row.uses_left) for h, row in found.items()}
        wanted = sorted({req.region for _, req in items})
        used: dict[str, set[str]] = {}
        for region, address in s.execute(
            select(AddressRow.region, AddressRow.address).where(AddressRow.region.in_(wanted))
        ):
            used.setdefault(region, set()).add(address)
        free: dict[str, tuple[str, Iterator[str]]] = {}  # region -> (its subnet, its free addresses)
        peeked: dict[str, str | None] = {}  # region -> its lowest free address, not taken yet
        out: dict[int, tuple[Node, int] | Exception] = {}
        taken: list[tuple[int, JoinRequest, str]] = []
        for i, req in items:
            h = req.join_hash or ""
            token = found.get(h)
            reg = regions.get(req.region)
            if reg is None:
                out[i] = JoinRefused(f"unknown region {req.region}")
                continue
            if req.region not in free:  # the address is looked for before the token, as in `_join_in`
                subnet = region_subnet(req.overlay_cidr, reg.ordinal, req.region_prefix)
                free[req.region] = (str(subnet), free_addresses(subnet, used.get(req.region, set())))
            subnet_text, addresses = free[req.region]
            got = peeked.pop(req.region, None) or next(addresses, None)
            if got is None:
                out[i] = SubnetExhausted(f"no address left in {subnet_text}")
                continue
            if token is None or left[h] <= 0 or token.expires_at <= req.now or token.region != req.region:
                peeked[req.region] = got  # still free for the next one
                out[i] = JoinRefused("join token unknown, expired, used up, or for another region")
                continue
            left[h] -= 1
            taken.append((i, req, got))
        if not taken:
            return out
        # --- writes: one statement per table
        spent = sorted({req.join_hash or "" for _, req, _ in taken})
        s.execute(
            update(tokens).where(tokens.c.token_hash == bindparam("b_hash")).values(uses_left=bindparam("b_left")),
            [{"b_hash": h, "b_left": left[h]} for h in spent],
        )
        counters = cast(Table, CounterRow.__table__)
        bump = update(counters).where(counters.c.name == "peer_generation")
        s.execute(bump.values(value=counters.c.value + len(taken)))
        last = int(s.execute(select(counters.c.value).where(counters.c.name == "peer_generation")).scalar_one())
        cls._notify(s, "peers")
        nodes: list[Node] = []
        for k, (_, req, address) in enumerate(taken):
            gen = last - len(taken) + 1 + k
            nodes.append(
                Node(
                    id=req.node_id,
                    name=req.name,
                    region=req.region,
                    public_key=req.public_key,
                    endpoint=req.endpoint,
                    overlay_ip=address,
                    token_hash=req.token_hash,
                    joined_at=req.now,
                    removed_at=None,
                    last_report_at=None,
                    last_seq=None,
                    reports_accepted=0,
                    peer_gen=gen,
                )
            )
        s.execute(
            insert(cast(Table, AddressRow.__table__)),
            [
                {"address": n.overlay_ip, "region": n.region, "node_id": n.id, "allocated_at": n.joined_at}
                for n in nodes
            ],
        )
        node_table = cast(Table, NodeRow.__table__)
        s.execute(insert(node_table), [{c.name: getattr(n, c.name) for c in node_table.columns} for n in nodes])
        s.execute(
            insert(cast(Table, EventRow.__table__)),
            [
                {
                    "ts": n.joined_at,
                    "kind": "join",
                    "reason": f"node {n.name} joined {n.region} as {n.overlay_ip}",
                    "region": n.region,
                    "node_id": n.id,
                    "data": {},
                }
                for n in nodes
            ],
        )
        cls._notify(s, "event")
        for (i, _, _), n in zip(taken, nodes, strict=True):
            out[i] = (n, n.peer_gen)
        return out

    def _join_one(self, req: JoinRequest) -> tuple[Node, int]:
        """One join in its own transaction, retried after a short random pause on a collision.

        Joins into one region take turns on the region's row (PostgreSQL: SELECT ... FOR UPDATE),
        so two replicas never pick the same address; should anything still collide (a unique
        address or key), the whole transaction is retried and sees what the other one committed.
        """
        for attempt in range(_RETRIES):
            try:
                with self._tx() as s:
                    s.scalars(select(RegionRow).where(RegionRow.id == req.region).with_for_update()).first()
                    return self._join_in(s, req)
            except IntegrityError as exc:
                log.info("join into %s collided (attempt %d): %s", req.region, attempt + 1, exc.orig)
                _pause(attempt)
        raise StoreError("could not register the node: concurrent joins")

    @classmethod
    def _join_in(cls, s: Session, req: JoinRequest) -> tuple[Node, int]:
        """Check, then write, one join in `s` (the region's row locked already): spend the token or
        the nonce, take the instance identity, allocate the address, add the node, bump the peer
        generation, record the event. Every refusal is raised before the first write."""
        now, node_id, region = req.now, req.node_id, req.region
        reg = s.get(RegionRow, region)
        if reg is None:
            raise JoinRefused(f"unknown region {region}")
        held: NodeIdentityRow | None = None
        if req.identity is not None:
            cloud, account, instance_id = req.identity
            if req.nonce is not None:
                used = s.get(UsedNonceRow, req.nonce[0])
                if used is not None and used.expires_at >= now:
                    raise AttestedJoinRefused("nonce", "this join nonce was used already: ask for a new one")
            held = s.scalars(
                select(NodeIdentityRow).where(
                    NodeIdentityRow.cloud == cloud,
                    NodeIdentityRow.account == account,
                    NodeIdentityRow.instance_id == instance_id,
                )
            ).first()
            if held is not None:
                holder = s.get(NodeRow, held.node_id)
                if holder is not None and holder.removed_at is None:
                    same = "with this key" if holder.public_key == req.public_key else "with another key"
                    raise AttestedJoinRefused(
                        "instance",
                        f"{cloud} instance {instance_id} already joined {same} as node {holder.id}:"
                        " remove that node to join again",
                        holder.id,
                    )
        if req.max_nodes is not None:
            live = s.execute(
                select(func.count(NodeRow.id)).where(NodeRow.region == region, NodeRow.removed_at.is_(None))
            ).scalar_one()
            if live >= req.max_nodes:
                raise AttestedJoinRefused("cap", f"{region} has {live} nodes, the most its join policy allows")
        subnet = region_subnet(req.overlay_cidr, reg.ordinal, req.region_prefix)
        used_addresses = s.scalars(select(AddressRow.address).where(AddressRow.region == region)).all()
        address = next_address(subnet, set(used_addresses))
        if req.join_hash is not None:  # spending the token is its check: no row changes when refused
            spent = _count(
                s.execute(
                    update(JoinTokenRow)
                    .where(
                        JoinTokenRow.token_hash == req.join_hash,
                        JoinTokenRow.uses_left > 0,
                        JoinTokenRow.expires_at > now,
                        JoinTokenRow.region == region,
                    )
                    .values(uses_left=JoinTokenRow.uses_left - 1)
                )
            )
            if spent != 1:
                raise JoinRefused("join token unknown, expired, used up, or for another region")
        # --- writes from here on
        if req.identity is not None:
            cloud, account, instance_id = req.identity
            if req.nonce is not None:
                s.execute(delete(UsedNonceRow).where(UsedNonceRow.expires_at < now))
                s.add(UsedNonceRow(nonce=req.nonce[0], expires_at=req.nonce[1]))
            if held is None:
                s.add(
                    NodeIdentityRow(
                        cloud=cloud,
                        account=account,
                        instance_id=instance_id,
                        node_id=node_id,
                        policy_id=req.policy_id or "",
                        joined_at=now,
                    )
                )
            else:
                held.node_id, held.policy_id, held.joined_at = node_id, req.policy_id or "", now
        s.add(AddressRow(address=address, region=region, node_id=node_id, allocated_at=now))
        row = NodeRow(
            id=node_id,
            name=req.name,
            region=region,
            public_key=req.public_key,
            endpoint=req.endpoint,
            overlay_ip=address,
            token_hash=req.token_hash,
            joined_at=now,
            removed_at=None,
            last_report_at=None,
            last_seq=None,
            reports_accepted=0,
        )
        gen = row.peer_gen = cls._bump(s, "peer_generation")
        s.add(row)
        cls._event(s, now, "join", f"node {req.name} joined {region} as {address}", region=region, node_id=node_id)
        return Node.of(row), gen

    def join_policies(self) -> list[JoinPolicyRecord]:
        with self._tx() as s:
            return [JoinPolicyRecord.of(r) for r in s.scalars(select(JoinPolicyRow).order_by(JoinPolicyRow.id))]

    def add_join_policy(self, policy_id: str, cloud: str, spec: dict[str, Any], now: float) -> JoinPolicyRecord:
        """Add a policy; Exists when the id is taken."""
        try:
            with self._tx() as s:
                row = JoinPolicyRow(id=policy_id, cloud=cloud, spec=spec, created_at=now)
                s.add(row)
                s.flush()
                return JoinPolicyRecord.of(row)
        except IntegrityError as exc:
            raise Exists(policy_id) from exc

    def delete_join_policy(self, policy_id: str) -> JoinPolicyRecord:
        with self._tx() as s:
            row = s.get(JoinPolicyRow, policy_id)
            if row is None:
                raise NotFound(policy_id)
            s.delete(row)
            return JoinPolicyRecord.of(row)

    def shared_secret(self, name: str, make: Callable[[], str], now: float) -> str:
        """The secret `name` every replica shares: made by `make()` by whoever asks first (ON CONFLICT)."""
        stmt = _dialect_insert(self.backend)(ServiceSecretRow).values(name=name, value=make(), created_at=now)
        with self._tx() as s:
            s.execute(stmt.on_conflict_do_nothing())
            return str(s.execute(select(ServiceSecretRow.value).where(ServiceSecretRow.name == name)).scalar_one())

    def remove_node(self, node_id: str, now: float) -> tuple[Node, int]:
        with self._tx() as s:
            row = s.get(NodeRow, node_id)
            if row is None or row.removed_at is not None:
                raise NotFound(node_id)
            row.removed_at = now
            gen = row.peer_gen = self._bump(s, "peer_generation")
            self._event(s, now, "leave", f"node {row.name} removed", region=row.region, node_id=node_id)
            return Node.of(row), gen

    def update_node(
        self, node_id: str, now: float, public_key: str | None = None, endpoint: str | None = None
    ) -> tuple[Node, int]:
        with self._tx() as s:
            row = s.get(NodeRow, node_id)
            if row is None or row.removed_at is not None:
                raise NotFound(node_id)
            if public_key is not None and public_key != row.public_key:
                row.public_key = public_key
                self._event(
                    s, now, "key_rotated", f"node {row.name} rotated its key", region=row.region, node_id=node_id
                )
            if endpoint is not None:
                row.endpoint = endpoint
            gen = row.peer_gen = self._bump(s, "peer_generation")
            return Node.of(row), gen

    # --- reports (store/reports.py) -------------------------------------------------------

    def insert_reports(self, windows: Sequence[Window], replica_id: str) -> list[bool]:
        """Write a batch of windows in one transaction; False marks a duplicate (node_id, seq)."""
        return self.reports.insert(windows, replica_id)

    def reports_after(
        self, cursor: int | ReportCursor, exclude_replica: str | None, limit: int = 2048
    ) -> tuple[list[StoredReport], ReportCursor]:
        """Windows past a cursor (from other replicas), and the new cursor."""
        return self.reports.after(cursor, exclude_replica, limit)

    def max_report_id(self) -> int:
        """The report cursor now (reports_after from here reads what comes next)."""
        return self.reports.cursor()

    def recent_reports(self, since: float) -> list[StoredReport]:
        return self.reports.recent(since)

    def prune_reports(self, windows_before: float, seen_before: float) -> tuple[int, int]:
        """Drop windows received before `windows_before` and the (node, seq) rows that refuse a
        window twice received before `seen_before`: (batches, rows) deleted, in short transactions."""
        return self.reports.prune(windows_before, seen_before)

    # --- leadership and published route tables ------------------------------------------

    @staticmethod
    def _holds(s: Session, fence: Fence, now: float) -> bool:
        row = s.execute(select(LeaseRow).where(LeaseRow.name == LEADER_LEASE).with_for_update()).scalar_one()
        return (
            row.holder == fence.holder
            and row.instance == fence.instance
            and row.epoch == fence.epoch
            and row.expires_at > now
        )

    def acquire_or_renew(self, holder: str, instance: str, now: float, lease_s: float) -> Lease:
        """Renew our lease, or take it when it has lapsed; one conditional UPDATE each.

        Renewal needs the same replica id AND process instance; every acquisition (even by the
        previous holder, after a lapse) takes the next epoch, so no two holders share an epoch.
        """
        with self._tx() as s:
            renewed = _count(
                s.execute(
                    update(LeaseRow)
                    .where(
                        LeaseRow.name == LEADER_LEASE,
                        LeaseRow.holder == holder,
                        LeaseRow.instance == instance,
                        LeaseRow.expires_at > now,
                    )
                    .values(expires_at=now + lease_s)
                )
            )
            if not renewed:
                s.execute(
                    update(LeaseRow)
                    .where(LeaseRow.name == LEADER_LEASE, LeaseRow.expires_at <= now)
                    .values(
                        holder=holder,
                        instance=instance,
                        epoch=LeaseRow.epoch + 1,
                        acquired_at=now,
                        expires_at=now + lease_s,
                    )
                )
            row = s.get(LeaseRow, LEADER_LEASE)
            assert row is not None
            s.refresh(row)
            return Lease(row.holder, row.instance, int(row.epoch), row.acquired_at, row.expires_at)

    def release(self, fence: Fence) -> None:
        with self._tx() as s:
            s.execute(
                update(LeaseRow)
                .where(
                    LeaseRow.name == LEADER_LEASE,
                    LeaseRow.holder == fence.holder,
                    LeaseRow.instance == fence.instance,
                    LeaseRow.epoch == fence.epoch,
                )
                .values(expires_at=0)
            )

    def publish_route_table(self, generation: int, fence: Fence, now: float, body: dict[str, Any]) -> bool:
        """Insert the table only if we still hold the lease: replica id, process instance and
        epoch, unexpired, checked in the same statement. Followers are told at commit (NOTIFY)."""
        lease_ok = select(LeaseRow.name).where(
            LeaseRow.name == LEADER_LEASE,
            LeaseRow.holder == fence.holder,
            LeaseRow.instance == fence.instance,
            LeaseRow.epoch == fence.epoch,
            LeaseRow.expires_at > now,
        )
        try:
            with self._tx() as s:
                s.execute(select(LeaseRow).where(LeaseRow.name == LEADER_LEASE).with_for_update())
                stmt = (
                    insert(RouteTableRow)
                    .from_select(
                        ["generation", "epoch", "holder", "instance", "computed_at", "body"],
                        select(
                            _literal(generation),
                            _literal(fence.epoch),
                            _literal(fence.holder),
                            _literal(fence.instance),
                            _literal(now),
                            _json_literal(body),
                        ).where(exists(lease_ok)),
                    )
                    .returning(RouteTableRow.generation)
                )
                published = s.execute(stmt).first() is not None
                if published:
                    self._notify(s, "table")
                return published
        except IntegrityError:
            return False

    def latest_route_table(self, newer_than: int = -1) -> PublishedTable | None:
        with self._tx() as s:
            row = s.scalars(
                select(RouteTableRow)
                .where(RouteTableRow.generation > newer_than)
                .order_by(RouteTableRow.generation.desc())
                .limit(1)
            ).first()
            return None if row is None else PublishedTable.of(row)

    def max_generation(self) -> int:
        with self._tx() as s:
            return int(s.execute(select(func.coalesce(func.max(RouteTableRow.generation), 0))).scalar_one())

    def prune_route_tables(self, keep: int = 50) -> None:
        with self._tx() as s:
            top = s.execute(select(func.max(RouteTableRow.generation))).scalar()
            if top is not None:
                s.execute(delete(RouteTableRow).where(RouteTableRow.generation <= top - keep))

    def heartbeat(self, replica_id: str, generation: int, now: float) -> list[Replica]:
        with self._tx() as s:
            s.execute(
                _dialect_insert(self.backend)(ReplicaRow)
                .values(replica_id=replica_id, generation=generation, seen_at=now)
                .on_conflict_do_update(index_elements=["replica_id"], set_={"generation": generation, "seen_at": now})
            )
            return [Replica.of(r) for r in s.scalars(select(ReplicaRow).order_by(ReplicaRow.replica_id))]

    def replica_seen(self, replica_id: str) -> float | None:
        """When a replica with this id last sent a heartbeat (None: never, or it said goodbye)."""
        with self._tx() as s:
            row = s.get(ReplicaRow, replica_id)
            return None if row is None else row.seen_at

    def forget_replica(self, replica_id: str) -> None:
        """A replica stops cleanly: its heartbeat row goes, so its id is free at once."""
        with self._tx() as s:
            s.execute(delete(ReplicaRow).where(ReplicaRow.replica_id == replica_id))

    def prune_replicas(self, before: float) -> int:
        """Heartbeat rows of replicas gone since `before` (default ids are new at every start)."""
        with self._tx() as s:
            return _count(s.execute(delete(ReplicaRow).where(ReplicaRow.seen_at < before)))

    # --- PostgreSQL LISTEN ---------------------------------------------------------------

    def listen(self, on_change: Callable[[str], None], stop: threading.Event, on_up: Callable[[bool], None]) -> None:
        """Block until `stop` is set, calling `on_change(what)` for every NOTIFY on the changes
        channel, on a dedicated connection (PostgreSQL only); reconnects after a failure.

        `on_up(True)` when listening (and after every reconnect: changes may have been missed),
        `on_up(False)` when the connection is lost. Runs in its own thread.
        """
        import psycopg

        url = self.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        pause = 0.5
        while not stop.is_set():
            try:
                with psycopg.connect(url, autocommit=True, connect_timeout=3) as conn:
                    conn.execute(f"LISTEN {CHANGES_CHANNEL}")
                    on_up(True)
                    pause = 0.5
                    while not stop.is_set():
                        for n in conn.notifies(timeout=1.0):
                            on_change(n.payload)
                        conn.execute("SELECT 1")  # notice a dead connection between notifications
            except Exception as exc:
                log.debug("listen: %s", exc)
            on_up(False)
            stop.wait(pause)
            pause = min(5.0, pause * 2)


def _literal(value: Any) -> Any:
    from sqlalchemy import literal

    return literal(value)


def _json_literal(body: dict[str, Any]) -> Any:
    from sqlalchemy import JSON, literal

    return literal(body, type_=JSON)


_RETRIES = 20


def _pause(attempt: int) -> None:
    """A short random pause before retrying a transaction that collided with another."""
    time.sleep(random.uniform(0, 0.005 * (attempt + 1)))


def _dialect_insert(backend: str) -> Any:
    """INSERT with ON CONFLICT for the backend in use (both SQLite and PostgreSQL have it)."""
    if backend == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert


def _count(result: Result[Any]) -> int:
    """Rows an UPDATE or DELETE touched."""
    return int(cast(CursorResult[Any], result).rowcount)
