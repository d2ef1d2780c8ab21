"""Tables. Times are UTC epoch seconds (float): portable across SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class RegionRow(Base):
    __tablename__ = "regions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    cloud: Mapped[str] = mapped_column(String(32))
    name: Mapped[str | None] = mapped_column(String(128))
    lat: Mapped[float] = mapped_column(Float)
    lon: Mapped[float] = mapped_column(Float)
    metro: Mapped[str | None] = mapped_column(String(64))
    ordinal: Mapped[int] = mapped_column(Integer, unique=True)
    created_at: Mapped[float] = mapped_column(Float)


class DrainRow(Base):
    __tablename__ = "drains"

    region: Mapped[str] = mapped_column(ForeignKey("regions.id"), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text)
    since: Mapped[float] = mapped_column(Float)
    by: Mapped[str | None] = mapped_column(String(64))


class NodeDrainRow(Base):
    """A drained node: takes no new sessions and relays nothing (its region may be active)."""

    __tablename__ = "node_drains"

    node_id: Mapped[str] = mapped_column(ForeignKey("nodes.id"), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text)
    since: Mapped[float] = mapped_column(Float)
    by: Mapped[str | None] = mapped_column(String(64))


class TokenRow(Base):
    __tablename__ = "api_tokens"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    scope: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float | None] = mapped_column(Float)
    revoked_at: Mapped[float | None] = mapped_column(Float)


class JoinTokenRow(Base):
    __tablename__ = "join_tokens"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    region: Mapped[str] = mapped_column(ForeignKey("regions.id"))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float] = mapped_column(Float)
    uses: Mapped[int] = mapped_column(Integer)
    uses_left: Mapped[int] = mapped_column(Integer)


class NodeRow(Base):
    __tablename__ = "nodes"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(63))
    region: Mapped[str] = mapped_column(ForeignKey("regions.id"), index=True)
    public_key: Mapped[str] = mapped_column(String(64))
    endpoint: Mapped[str] = mapped_column(String(64))
    overlay_ip: Mapped[str] = mapped_column(String(45), unique=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    joined_at: Mapped[float] = mapped_column(Float)
    removed_at: Mapped[float | None] = mapped_column(Float)
    last_report_at: Mapped[float | None] = mapped_column(Float)
    last_seq: Mapped[int | None] = mapped_column(BigInteger)
    reports_accepted: Mapped[int] = mapped_column(BigInteger, default=0)
    peer_gen: Mapped[int] = mapped_column(
        BigInteger, default=0, server_default="0", index=True, doc="the peer generation of its last change"
    )


class AddressRow(Base):
    """Every overlay address ever handed out; never deleted, so never handed out twice."""

    __tablename__ = "overlay_addresses"

    address: Mapped[str] = mapped_column(String(45), primary_key=True)
    region: Mapped[str] = mapped_column(String(64), index=True)
    node_id: Mapped[str] = mapped_column(String(32))
    allocated_at: Mapped[float] = mapped_column(Float)


class ReportRow(Base):
    """An accepted window, kept to refuse it a second time (409) for as long as it could still be
    accepted (`report_max_age_s` and `report_max_future_s`); its numbers are in `report_batches`.

    Keyed by (node_id, seq) and nothing else: one B-tree on SQLite (WITHOUT ROWID), some 60 bytes
    a window (see store/reports.py)."""

    __tablename__ = "reports"
    __table_args__ = (Index("ix_reports_received_at", "received_at"), {"sqlite_with_rowid": False})

    node_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    received_at: Mapped[float] = mapped_column(Float)


class ReportBatchRow(Base):
    """The windows one replica committed together, packed (store/reports.py: `pack_batch`): what
    other replicas fold and a new leader rebuilds link state from. Kept
    `report_window_retention_s` after the newest of them was received."""

    __tablename__ = "report_batches"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    replica_id: Mapped[str] = mapped_column(String(64))
    received_at: Mapped[float] = mapped_column(Float, index=True, doc="the newest report's")
    reports: Mapped[int] = mapped_column(Integer)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class ReportNodeRow(Base):
    """A number per node id named in stored windows (never reused, never deleted): packed
    windows name nodes by number."""

    __tablename__ = "report_nodes"

    num: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    node_id: Mapped[str] = mapped_column(String(64), unique=True)


class EventRow(Base):
    __tablename__ = "events"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    ts: Mapped[float] = mapped_column(Float, index=True)
    kind: Mapped[str] = mapped_column(String(32))
    region: Mapped[str | None] = mapped_column(String(64))
    node_id: Mapped[str | None] = mapped_column(String(32))
    reason: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class CounterRow(Base):
    """Named monotonic counters: peer_generation, config_version."""

    __tablename__ = "counters"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger)


class LeaseRow(Base):
    """Leadership: one row per lease; epoch grows on every acquisition (fencing)."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    holder: Mapped[str | None] = mapped_column(String(64))
    instance: Mapped[str | None] = mapped_column(String(32), doc="the holder's process instance (fencing)")
    epoch: Mapped[int] = mapped_column(BigInteger)
    acquired_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float] = mapped_column(Float)


class RouteTableRow(Base):
    """A published route table; generation is the primary key, so no generation repeats."""

    __tablename__ = "route_tables"

    generation: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    epoch: Mapped[int] = mapped_column(BigInteger)
    holder: Mapped[str] = mapped_column(String(64))
    instance: Mapped[str | None] = mapped_column(String(32))
    computed_at: Mapped[float] = mapped_column(Float)
    body: Mapped[dict[str, Any]] = mapped_column(JSON)


class ReplicaRow(Base):
    __tablename__ = "replicas"

    replica_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    generation: Mapped[int] = mapped_column(BigInteger)
    seen_at: Mapped[float] = mapped_column(Float)


class LinkHistoryRow(Base):
    """One rollup of a directed region pair over one bucket (`step` seconds from `bucket_start`).

    RTT figures are over the per-window link medians of the bucket (see service/history.py);
    NULL when every window of the bucket was lost. Pruned by age: minutes after a day, hours
    after 30 days.
    """

    __tablename__ = "link_history"
    __table_args__ = (Index("ix_link_history_step_bucket", "step", "bucket_start"),)

    src: Mapped[str] = mapped_column(String(64), primary_key=True)
    dst: Mapped[str] = mapped_column(String(64), primary_key=True)
    step: Mapped[int] = mapped_column(Integer, primary_key=True)
    bucket_start: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    rtt_min_ms: Mapped[float | None] = mapped_column(Float)
    rtt_p50_ms: Mapped[float | None] = mapped_column(Float)
    rtt_p90_ms: Mapped[float | None] = mapped_column(Float)
    rtt_max_ms: Mapped[float | None] = mapped_column(Float)
    loss_percent: Mapped[float] = mapped_column(Float)
    jitter_ms: Mapped[float | None] = mapped_column(Float)
    samples: Mapped[int] = mapped_column(Integer)


# --- attested join (migration 0004) --------------------------------------------------------


class JoinPolicyRow(Base):
    """A join policy: `spec` is its body as given (meshctl.attest.JoinPolicy's fields)."""

    __tablename__ = "join_policies"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    cloud: Mapped[str] = mapped_column(String(32))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[float] = mapped_column(Float)


class UsedNonceRow(Base):
    """A join nonce spent by a successful join, kept until it expires: a replay is refused."""

    __tablename__ = "used_join_nonces"

    nonce: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[float] = mapped_column(Float, index=True)


class NodeIdentityRow(Base):
    """The cloud identity a node joined with: one row per (cloud, account, instance id), pointing at
    the node that holds it; taken over only once that node was removed."""

    __tablename__ = "node_identities"
    __table_args__ = (UniqueConstraint("cloud", "account", "instance_id", name="uq_node_identities_instance"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    cloud: Mapped[str] = mapped_column(String(32))
    account: Mapped[str] = mapped_column(String(128))
    instance_id: Mapped[str] = mapped_column(String(128))
    node_id: Mapped[str] = mapped_column(String(32), index=True)
    policy_id: Mapped[str] = mapped_column(String(64))
    joined_at: Mapped[float] = mapped_column(Float)


class ServiceSecretRow(Base):
    """Secrets every replica shares (the join nonce key), made once by whoever starts first."""

    __tablename__ = "service_secrets"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    value: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[float] = mapped_column(Float)
