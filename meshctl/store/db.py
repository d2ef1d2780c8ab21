"""The Store: every durable read and write of the controller, behind one small class.

Synchronous SQLAlchemy 2 on purpose: the async service calls it through a worker thread, so
one code path serves SQLite (embedded default) and PostgreSQL (psycopg 3, several replicas).
Writes that a client is told about (drains, registrations, tokens, reports) are committed
before the call returns.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from alembic import command
from alembic.config import Config
from sqlalchemy import (
    BigInteger,
    CursorResult,
    Engine,
    Result,
    Table,
    bindparam,
    case,
    create_engine,
    event,
    exists,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from meshctl.core.ipam import next_address, region_subnet
from meshctl.store.models import (
    AddressRow,
    CounterRow,
    DrainRow,
    EventRow,
    JoinTokenRow,
    LeaseRow,
    NodeRow,
    RegionRow,
    ReplicaRow,
    ReportRow,
    RouteTableRow,
    TokenRow,
)

MIGRATIONS = Path(__file__).parent / "migrations"
LEADER_LEASE = "controller"
COUNTERS = ("peer_generation", "config_version")


class StoreError(Exception):
    """Base of the store's own errors."""


class JoinRefused(StoreError):
    """The join token is unknown, expired, used up, or for another region."""


class NotFound(StoreError):
    """No such row."""


@dataclass(frozen=True)
class Lease:
    holder: str | None
    epoch: int
    acquired_at: float
    expires_at: float


def make_engine(url: str) -> Engine:
    """An engine tuned for the backend: SQLite gets WAL and a busy timeout.

    SQLite syncs the WAL on every commit (synchronous=FULL): an acknowledged report survives a
    power cut, not only a crash of the controller. Group commit makes that one fsync per batch.
    """
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    return create_engine(url, pool_size=8, max_overflow=8, pool_pre_ping=True, connect_args={"connect_timeout": 3})


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest Alembic revision."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


class Store:
    """Durable state of the mesh. Every method is one transaction."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self._session = sessionmaker(self.engine, expire_on_commit=False)
        self._report_sql: tuple[Any, Any] | None = None

    @property
    def backend(self) -> str:
        return self.engine.dialect.name

    def open(self) -> None:
        """Migrate and make sure the fixed rows exist."""
        migrate(self.engine)
        with self._tx() as s:
            for name in COUNTERS:
                if s.get(CounterRow, name) is None:
                    s.add(CounterRow(name=name, value=0))
            if s.get(LeaseRow, LEADER_LEASE) is None:
                s.add(LeaseRow(name=LEADER_LEASE, holder=None, epoch=0, acquired_at=0, expires_at=0))
        # two replicas starting at once may both try the inserts above: the loser retries
        # inside _tx via IntegrityError below.

    def close(self) -> None:
        self.engine.dispose()

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(select(1))

    @contextmanager
    def _tx(self) -> Iterator[Session]:
        with self._session() as session, session.begin():
            yield session

    # --- counters and events -------------------------------------------------------------

    @staticmethod
    def _bump(s: Session, name: str) -> int:
        s.execute(update(CounterRow).where(CounterRow.name == name).values(value=CounterRow.value + 1))
        return int(s.execute(select(CounterRow.value).where(CounterRow.name == name)).scalar_one())

    def counters(self) -> dict[str, int]:
        with self._tx() as s:
            return {r.name: int(r.value) for r in s.scalars(select(CounterRow))}

    @staticmethod
    def _event(
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
        return row

    def add_event(
        self,
        ts: float,
        kind: str,
        reason: str,
        region: str | None = None,
        node_id: str | None = None,
        data: dict[str, Any] | None = None,
    ) -> EventRow:
        with self._tx() as s:
            row = self._event(s, ts, kind, reason, region, node_id, data)
            s.flush()
            return row

    def events(
        self,
        since_id: int | None = None,
        since_ts: float | None = None,
        limit: int = 100,
        region: str | None = None,
        kind: str | None = None,
    ) -> list[EventRow]:
        with self._tx() as s:
            q = select(EventRow)
            if since_id is not None:
                q = q.where(EventRow.id > since_id)
            if since_ts is not None:
                q = q.where(EventRow.ts >= since_ts)
            if region is not None:
                q = q.where(EventRow.region == region)
            if kind is not None:
                q = q.where(EventRow.kind == kind)
            if since_id is None and since_ts is None:
                rows = list(s.scalars(q.order_by(EventRow.id.desc()).limit(limit)))
                return rows[::-1]
            return list(s.scalars(q.order_by(EventRow.id).limit(limit)))

    def last_event_id(self) -> int:
        with self._tx() as s:
            return int(s.execute(select(func.coalesce(func.max(EventRow.id), 0))).scalar_one())

    # --- regions and drains --------------------------------------------------------------

    def regions(self) -> list[RegionRow]:
        with self._tx() as s:
            return list(s.scalars(select(RegionRow).order_by(RegionRow.id)))

    def drains(self) -> list[DrainRow]:
        with self._tx() as s:
            return list(s.scalars(select(DrainRow)))

    def upsert_region(
        self, region_id: str, cloud: str, name: str | None, lat: float, lon: float, metro: str | None, now: float
    ) -> tuple[RegionRow, bool]:
        for _attempt in range(5):
            try:
                with self._tx() as s:
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
                    self._bump(s, "config_version")
                    return row, created
            except IntegrityError:
                continue
        raise StoreError(f"could not register region {region_id}: concurrent updates")

    def set_drain(
        self, region: str, kind: str, reason: str, by: str | None, now: float, fence: tuple[str, int] | None = None
    ) -> DrainRow:
        """Drain a region (manual, or automatic under the leader's fence) and record why."""
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
            return row

    def remove_drain(
        self,
        region: str,
        reason: str,
        by: str | None,
        now: float,
        fence: tuple[str, int] | None = None,
        only_kind: str | None = None,
    ) -> bool:
        with self._tx() as s:
            if fence is not None and not self._holds(s, fence, now):
                raise StoreError("lease lost: automatic undrain refused")
            row = s.get(DrainRow, region)
            if row is None or (only_kind is not None and row.kind != only_kind):
                return False
            s.delete(row)
            self._event(s, now, "undrain", reason, region=region, data={"kind": row.kind, "by": by})
            self._bump(s, "config_version")
            return True

    # --- API tokens ----------------------------------------------------------------------

    def create_token(
        self, token_id: str, name: str, scope: str, token_hash: str, now: float, expires_at: float | None
    ) -> TokenRow:
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
            return row

    def tokens(self, include_revoked: bool = False) -> list[TokenRow]:
        with self._tx() as s:
            q = select(TokenRow).order_by(TokenRow.created_at)
            if not include_revoked:
                q = q.where(TokenRow.revoked_at.is_(None))
            return list(s.scalars(q))

    def token_by_hash(self, token_hash: str) -> TokenRow | None:
        with self._tx() as s:
            return s.scalars(select(TokenRow).where(TokenRow.token_hash == token_hash)).first()

    def revoke_token(self, token_id: str, now: float) -> TokenRow:
        with self._tx() as s:
            row = s.get(TokenRow, token_id)
            if row is None or row.revoked_at is not None:
                raise NotFound(token_id)
            row.revoked_at = now
            self._bump(s, "config_version")
            return row

    def has_admin_token(self) -> bool:
        with self._tx() as s:
            q = select(exists().where(TokenRow.scope == "admin", TokenRow.revoked_at.is_(None)))
            return bool(s.execute(q).scalar())

    # --- join tokens and nodes -----------------------------------------------------------

    def create_join_token(
        self, token_id: str, region: str, token_hash: str, now: float, ttl_s: int, uses: int
    ) -> JoinTokenRow:
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
            return row

    def nodes(self) -> list[NodeRow]:
        with self._tx() as s:
            return list(s.scalars(select(NodeRow).where(NodeRow.removed_at.is_(None)).order_by(NodeRow.id)))

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
    ) -> tuple[NodeRow, int]:
        """Spend one use of the join token, allocate an address, register the node."""
        for _attempt in range(8):
            try:
                with self._tx() as s:
                    spent = _count(
                        s.execute(
                            update(JoinTokenRow)
                            .where(
                                JoinTokenRow.token_hash == join_hash,
                                JoinTokenRow.uses_left > 0,
                                JoinTokenRow.expires_at > now,
                                JoinTokenRow.region == region,
                            )
                            .values(uses_left=JoinTokenRow.uses_left - 1)
                        )
                    )
                    if spent != 1:
                        raise JoinRefused("join token unknown, expired, used up, or for another region")
                    reg = s.get(RegionRow, region)
                    if reg is None:
                        raise JoinRefused(f"unknown region {region}")
                    subnet = region_subnet(overlay_cidr, reg.ordinal, region_prefix)
                    used = s.scalars(select(AddressRow.address).where(AddressRow.region == region)).all()
                    address = next_address(subnet, set(used))
                    s.add(AddressRow(address=address, region=region, node_id=node_id, allocated_at=now))
                    row = NodeRow(
                        id=node_id,
                        name=name,
                        region=region,
                        public_key=public_key,
                        endpoint=endpoint,
                        overlay_ip=address,
                        token_hash=token_hash,
                        joined_at=now,
                        removed_at=None,
                        last_report_at=None,
                        last_seq=None,
                        reports_accepted=0,
                    )
                    s.add(row)
                    gen = self._bump(s, "peer_generation")
                    self._event(
                        s, now, "join", f"node {name} joined {region} as {address}", region=region, node_id=node_id
                    )
                    return row, gen
            except IntegrityError:
                continue
        raise StoreError("could not allocate an overlay address: concurrent joins")

    def remove_node(self, node_id: str, now: float) -> tuple[NodeRow, int]:
        with self._tx() as s:
            row = s.get(NodeRow, node_id)
            if row is None or row.removed_at is not None:
                raise NotFound(node_id)
            row.removed_at = now
            gen = self._bump(s, "peer_generation")
            self._event(s, now, "leave", f"node {row.name} removed", region=row.region, node_id=node_id)
            return row, gen

    def update_node(
        self, node_id: str, now: float, public_key: str | None = None, endpoint: str | None = None
    ) -> tuple[NodeRow, int]:
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
            gen = self._bump(s, "peer_generation")
            return row, gen

    # --- reports -------------------------------------------------------------------------

    def insert_reports(self, rows: Sequence[dict[str, Any]], replica_id: str) -> list[bool]:
        """Write a batch of reports in one transaction; False marks a duplicate (node_id, seq).

        Core statements built once, on one connection: one multi-row INSERT and one executemany
        UPDATE of the nodes, whatever the batch size (ORM statements cost more than the write).
        """
        if not rows:
            return []
        insert_stmt, update_stmt = self._report_statements()
        values = [
            {
                "node_id": r["node_id"],
                "seq": r["seq"],
                "window_start": r["window_start"],
                "received_at": r["received_at"],
                "replica_id": replica_id,
                "body": r["body"],
            }
            for r in rows
        ]
        with self.engine.begin() as conn:
            inserted = {(n, int(q)) for n, q in conn.execute(insert_stmt, values).all()}
            written = []  # a window sent twice in one batch is written once, the first time
            per_node: dict[str, tuple[int, float, int]] = {}
            for r in rows:
                key = (r["node_id"], r["seq"])
                written.append(key in inserted)
                if written[-1]:
                    inserted.discard(key)
                    seq, at, count = per_node.get(r["node_id"], (-1, 0.0, 0))
                    per_node[r["node_id"]] = (max(seq, r["seq"]), max(at, r["received_at"]), count + 1)
            if per_node:
                params = [{"b_id": n, "b_seq": q, "b_at": at, "b_count": k} for n, (q, at, k) in per_node.items()]
                conn.execute(update_stmt, params)
        return written

    def _report_statements(self) -> tuple[Any, Any]:
        if self._report_sql is None:
            reports, nodes = cast(Table, ReportRow.__table__), cast(Table, NodeRow.__table__)
            ins = _dialect_insert(self.backend)(reports)
            insert_stmt = ins.on_conflict_do_nothing(index_elements=["node_id", "seq"]).returning(
                reports.c.node_id, reports.c.seq
            )
            seq = bindparam("b_seq", type_=BigInteger)
            update_stmt = (
                update(nodes)
                .where(nodes.c.id == bindparam("b_id"))
                .values(
                    last_seq=case(
                        (nodes.c.last_seq.is_(None), seq), (nodes.c.last_seq < seq, seq), else_=nodes.c.last_seq
                    ),
                    last_report_at=bindparam("b_at"),
                    reports_accepted=nodes.c.reports_accepted + bindparam("b_count", type_=BigInteger),
                )
            )
            self._report_sql = (insert_stmt, update_stmt)
        return self._report_sql

    def reports_after(
        self, after_id: int, exclude_replica: str | None, limit: int = 5000
    ) -> tuple[list[ReportRow], int]:
        """Reports newer than a cursor (from other replicas), and the new cursor.

        The cursor moves past our own rows too, so each call reads only what is new.
        """
        with self._tx() as s:
            newest = int(s.execute(select(func.coalesce(func.max(ReportRow.id), 0))).scalar_one())
            upto = min(newest, after_id + limit)
            q = select(ReportRow).where(ReportRow.id > after_id, ReportRow.id <= upto).order_by(ReportRow.id)
            if exclude_replica is not None:
                q = q.where(ReportRow.replica_id != exclude_replica)
            return list(s.scalars(q)), max(after_id, upto)

    def max_report_id(self) -> int:
        with self._tx() as s:
            return int(s.execute(select(func.coalesce(func.max(ReportRow.id), 0))).scalar_one())

    def recent_reports(self, since: float) -> list[ReportRow]:
        with self._tx() as s:
            return list(s.scalars(select(ReportRow).where(ReportRow.received_at >= since).order_by(ReportRow.id)))

    def prune_reports(self, before: float) -> int:
        with self._tx() as s:
            from sqlalchemy import delete

            return _count(s.execute(delete(ReportRow).where(ReportRow.received_at < before)))

    # --- leadership and published route tables ------------------------------------------

    @staticmethod
    def _holds(s: Session, fence: tuple[str, int], now: float) -> bool:
        holder, epoch = fence
        row = s.execute(select(LeaseRow).where(LeaseRow.name == LEADER_LEASE).with_for_update()).scalar_one()
        return row.holder == holder and row.epoch == epoch and row.expires_at > now

    def lease(self) -> Lease:
        with self._tx() as s:
            row = s.get(LeaseRow, LEADER_LEASE)
            assert row is not None
            return Lease(row.holder, int(row.epoch), row.acquired_at, row.expires_at)

    def acquire_or_renew(self, holder: str, now: float, lease_s: float) -> Lease:
        """Renew our lease, or take it when it has lapsed; one conditional UPDATE each."""
        with self._tx() as s:
            renewed = _count(
                s.execute(
                    update(LeaseRow)
                    .where(LeaseRow.name == LEADER_LEASE, LeaseRow.holder == holder, LeaseRow.expires_at > now)
                    .values(expires_at=now + lease_s)
                )
            )
            if not renewed:
                s.execute(
                    update(LeaseRow)
                    .where(LeaseRow.name == LEADER_LEASE, LeaseRow.expires_at <= now)
                    .values(holder=holder, epoch=LeaseRow.epoch + 1, acquired_at=now, expires_at=now + lease_s)
                )
            row = s.get(LeaseRow, LEADER_LEASE)
            assert row is not None
            s.refresh(row)
            return Lease(row.holder, int(row.epoch), row.acquired_at, row.expires_at)

    def release(self, holder: str, epoch: int) -> None:
        with self._tx() as s:
            s.execute(
                update(LeaseRow)
                .where(LeaseRow.name == LEADER_LEASE, LeaseRow.holder == holder, LeaseRow.epoch == epoch)
                .values(expires_at=0)
            )

    def publish_route_table(self, generation: int, holder: str, epoch: int, now: float, body: dict[str, Any]) -> bool:
        """Insert the table only if we still hold the lease (checked in the same statement)."""
        lease_ok = select(LeaseRow.name).where(
            LeaseRow.name == LEADER_LEASE, LeaseRow.holder == holder, LeaseRow.epoch == epoch, LeaseRow.expires_at > now
        )
        try:
            with self._tx() as s:
                s.execute(select(LeaseRow).where(LeaseRow.name == LEADER_LEASE).with_for_update())
                stmt = (
                    insert(RouteTableRow)
                    .from_select(
                        ["generation", "epoch", "holder", "computed_at", "body"],
                        select(
                            _literal(generation),
                            _literal(epoch),
                            _literal(holder),
                            _literal(now),
                            _json_literal(body),
                        ).where(exists(lease_ok)),
                    )
                    .returning(RouteTableRow.generation)
                )
                return s.execute(stmt).first() is not None
        except IntegrityError:
            return False

    def latest_route_table(self, newer_than: int = -1) -> RouteTableRow | None:
        with self._tx() as s:
            return s.scalars(
                select(RouteTableRow)
                .where(RouteTableRow.generation > newer_than)
                .order_by(RouteTableRow.generation.desc())
                .limit(1)
            ).first()

    def max_generation(self) -> int:
        with self._tx() as s:
            return int(s.execute(select(func.coalesce(func.max(RouteTableRow.generation), 0))).scalar_one())

    def generations(self, since: int = 0) -> list[int]:
        with self._tx() as s:
            return [
                int(g)
                for g in s.scalars(
                    select(RouteTableRow.generation)
                    .where(RouteTableRow.generation > since)
                    .order_by(RouteTableRow.generation)
                )
            ]

    def prune_route_tables(self, keep: int = 50) -> None:
        with self._tx() as s:
            from sqlalchemy import delete

            top = s.execute(select(func.max(RouteTableRow.generation))).scalar()
            if top is not None:
                s.execute(delete(RouteTableRow).where(RouteTableRow.generation <= top - keep))

    def heartbeat(self, replica_id: str, generation: int, now: float) -> list[ReplicaRow]:
        with self._tx() as s:
            row = s.get(ReplicaRow, replica_id)
            if row is None:
                s.add(ReplicaRow(replica_id=replica_id, generation=generation, seen_at=now))
            else:
                row.generation, row.seen_at = generation, now
            s.flush()
            return list(s.scalars(select(ReplicaRow).order_by(ReplicaRow.replica_id)))


def _literal(value: Any) -> Any:
    from sqlalchemy import literal

    return literal(value)


def _json_literal(body: dict[str, Any]) -> Any:
    from sqlalchemy import JSON, literal

    return literal(body, type_=JSON)


def addresses_in(subnet: str) -> Iterable[str]:
    """All host addresses of a subnet (for tests and diagnostics)."""
    return (str(a) for a in ipaddress.ip_network(subnet).hosts())


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
