"""What the store hands out: plain frozen values, never ORM rows (which a caller could mutate).

Times are UTC epoch seconds, as in the tables. Each value is built from its row by `of`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Self

import numpy as np


class _FromRow:
    """`of(row)`: copy the fields of this value from an ORM row with the same attribute names."""

    __slots__ = ()

    @classmethod
    def of(cls, row: Any) -> Self:
        return cls(**{f.name: getattr(row, f.name) for f in fields(cls)})  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class Region(_FromRow):
    id: str
    cloud: str
    name: str | None
    lat: float
    lon: float
    metro: str | None
    ordinal: int
    created_at: float


@dataclass(frozen=True, slots=True)
class Drain(_FromRow):
    region: str
    kind: str  # "manual" or "auto"
    reason: str
    since: float
    by: str | None


@dataclass(frozen=True, slots=True)
class NodeDrain(_FromRow):
    node_id: str
    kind: str  # "manual"
    reason: str
    since: float
    by: str | None


@dataclass(frozen=True, slots=True)
class Token(_FromRow):
    """An API token (its hash; the secret is shown once and never stored)."""

    id: str
    name: str
    scope: str
    token_hash: str
    created_at: float
    expires_at: float | None
    revoked_at: float | None


@dataclass(frozen=True, slots=True)
class JoinToken(_FromRow):
    id: str
    region: str
    token_hash: str
    created_at: float
    expires_at: float
    uses: int
    uses_left: int


@dataclass(frozen=True, slots=True)
class Node(_FromRow):
    """A registered node. The report counters are as durably written when this was read;
    the service keeps the live ones."""

    id: str
    name: str
    region: str
    public_key: str
    endpoint: str
    overlay_ip: str
    token_hash: str
    joined_at: float
    removed_at: float | None
    last_report_at: float | None
    last_seq: int | None
    reports_accepted: int
    peer_gen: int = 0  # the peer generation of its last change (join, key, endpoint, removal)


@dataclass(frozen=True, slots=True, eq=False)
class StoredReport:
    """A window as some replica accepted it (its numbers as stored: store/reports.py).

    `window_start` is in the controller's time (moved by the node's clock offset when it ran
    beyond tolerance); `columns` is 5 x len(peer_ids) float64, read-only, rows sent, received,
    p50, p90, jitter (ms), NaN where the report left a figure out. Compared by identity (it
    holds an array): compare fields.
    """

    node_id: str
    seq: int
    window_start: float
    window_s: float
    received_at: float
    replica_id: str
    peer_ids: tuple[str, ...]
    columns: np.ndarray


@dataclass(frozen=True, slots=True)
class ReportCursor:
    """How far a reader of stored report batches has read: every batch id up to `after`, but for
    `gaps`, ids below it not seen yet with when they were first missed (monotonic seconds). On
    PostgreSQL a transaction can take its id before another and commit after it: its batch
    appears below a cursor that has moved on."""

    after: int = 0
    gaps: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True, slots=True)
class Event(_FromRow):
    id: int
    ts: float
    kind: str
    region: str | None
    node_id: str | None
    reason: str
    data: dict[str, Any]


@dataclass(frozen=True, slots=True)
class PublishedTable(_FromRow):
    """A route table the leader published (`body`: see `meshctl.service.snapshot`)."""

    generation: int
    epoch: int
    holder: str
    instance: str | None
    computed_at: float
    body: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Replica(_FromRow):
    replica_id: str
    generation: int
    seen_at: float


@dataclass(frozen=True, slots=True)
class Lease:
    """The leader lease: its holder (replica id and process instance), epoch (grows on every
    acquisition) and times."""

    holder: str | None
    instance: str | None
    epoch: int
    acquired_at: float
    expires_at: float


@dataclass(frozen=True, slots=True)
class Fence:
    """What the store checks, in the same statement, before a write the leader makes on its own
    authority: the lease is still held by this replica id, process instance and epoch, unexpired.

    The epoch grows on every acquisition, so no two holders ever share one; the instance makes
    two processes started with the same replica id tell their leases apart.
    """

    holder: str
    instance: str
    epoch: int


@dataclass(frozen=True, slots=True)
class LinkRollup:
    """One bucket of a region pair's link history (`step` seconds from `bucket_start`)."""

    src: str
    dst: str
    step: int
    bucket_start: int
    rtt_min_ms: float | None
    rtt_p50_ms: float | None
    rtt_p90_ms: float | None
    rtt_max_ms: float | None
    loss_percent: float
    jitter_ms: float | None
    samples: int


@dataclass(frozen=True, slots=True)
class JoinPolicyRecord(_FromRow):
    """A stored join policy: `spec` holds meshctl.attest.JoinPolicy's fields."""

    id: str
    cloud: str
    spec: dict[str, Any]
    created_at: float


@dataclass(frozen=True, slots=True)
class NodeIdentity(_FromRow):
    """The cloud identity (cloud, account, instance id) a node joined with, and the policy that admitted it."""

    cloud: str
    account: str
    instance_id: str
    node_id: str
    policy_id: str
    joined_at: float
