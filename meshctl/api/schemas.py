"""Request and response bodies of the REST API (the contract the agent and the CLI rely on).

Field names here are a public contract: add freely, rename nothing.
"""

from __future__ import annotations

import base64
import ipaddress
import math
from dataclasses import dataclass
from datetime import datetime
from operator import attrgetter
from typing import Annotated, Any, Literal

import msgspec
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter, field_validator, model_validator

REGION_ID_PATTERN = r"^[a-z][a-z0-9]*:[a-z0-9][a-z0-9-]*$"
RegionId = Annotated[str, StringConstraints(pattern=REGION_ID_PATTERN, max_length=64)]
Scope = Literal["admin", "operator", "reader"]
RegionState = Literal["active", "degraded", "drained"]
DrainKind = Literal["manual", "auto"]


class Strict(BaseModel):
    """Base for request bodies: unknown fields are an error, not silently dropped."""

    model_config = ConfigDict(extra="forbid")


def _finite(value: float | None, field: str) -> float | None:
    if value is not None and not math.isfinite(value):
        raise ValueError(f"{field} must be a finite number")
    return value


# --- regions -------------------------------------------------------------------------------


class RegionIn(Strict):
    cloud: str | None = Field(default=None, description="Defaults to the id's prefix; must match it")
    name: str | None = Field(default=None, max_length=128, description="Human name, e.g. 'N. Virginia'")
    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)
    metro: str | None = Field(default=None, max_length=64, description="Metro key shared across clouds")


class DrainInfo(BaseModel):
    kind: DrainKind
    reason: str
    since: datetime
    by: str | None = None


class RegionHealth(BaseModel):
    observers_bad: int = 0
    observers_total: int = 0
    bad_windows: int = 0
    good_windows: int = 0
    reporting_nodes: int = 0
    reason: str | None = None


class RegionOut(BaseModel):
    id: RegionId
    cloud: str
    name: str | None
    lat: float
    lon: float
    metro: str | None
    state: RegionState
    drain: DrainInfo | None = None
    nodes_total: int = 0
    nodes_up: int = 0
    health: RegionHealth = Field(default_factory=RegionHealth)


class DrainRequest(Strict):
    reason: str = Field(min_length=1, max_length=500)


# --- tokens --------------------------------------------------------------------------------


class TokenCreate(Strict):
    name: str = Field(min_length=1, max_length=64)
    scope: Scope
    ttl_s: int | None = Field(default=None, ge=60, le=10 * 365 * 86400)


class TokenOut(BaseModel):
    id: str
    name: str
    scope: Scope
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None = None


class TokenCreated(TokenOut):
    token: str = Field(description="Shown once; only its hash is stored")


class JoinTokenCreate(Strict):
    region: RegionId
    ttl_s: int = Field(default=3600, ge=60, le=7 * 86400)
    uses: int = Field(default=1, ge=1, le=10_000)


class JoinTokenOut(BaseModel):
    id: str
    region: RegionId
    expires_at: datetime
    uses: int
    uses_left: int
    token: str | None = Field(default=None, description="Shown once, at creation")


# --- nodes and peers -----------------------------------------------------------------------


def _check_public_key(value: str) -> str:
    try:
        raw = base64.b64decode(value, validate=True)
    except ValueError as exc:
        raise ValueError("public_key must be base64") from exc
    if len(raw) != 32:
        raise ValueError("public_key must be a 32-byte X25519 key in base64")
    return value


def _check_endpoint(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep:
        raise ValueError("endpoint must be ip:port")
    try:
        ipaddress.ip_address(host.strip("[]"))
        port_no = int(port)
    except ValueError as exc:
        raise ValueError("endpoint must be ip:port with a literal IP address") from exc
    if not 1 <= port_no <= 65535:
        raise ValueError("endpoint port must be 1..65535")
    return value


class NodeJoin(Strict):
    join_token: str = Field(min_length=8, max_length=256)
    region: RegionId
    name: str = Field(min_length=1, max_length=63, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    public_key: str
    endpoint: str

    _pk = field_validator("public_key")(classmethod(lambda cls, v: _check_public_key(v)))
    _ep = field_validator("endpoint")(classmethod(lambda cls, v: _check_endpoint(v)))


class NodeKeyUpdate(Strict):
    public_key: str

    _pk = field_validator("public_key")(classmethod(lambda cls, v: _check_public_key(v)))


class NodeEndpointUpdate(Strict):
    endpoint: str

    _ep = field_validator("endpoint")(classmethod(lambda cls, v: _check_endpoint(v)))


class Peer(BaseModel):
    node_id: str
    name: str
    region: RegionId
    public_key: str
    endpoint: str
    overlay_ip: str
    allowed_ips: list[str]


class PeerList(BaseModel):
    node_id: str
    generation: int
    overlay_cidr: str
    peers: list[Peer]


class NodeOut(BaseModel):
    id: str
    name: str
    region: RegionId
    public_key: str
    endpoint: str
    overlay_ip: str
    joined_at: datetime
    last_report_at: datetime | None = None
    up: bool = False
    last_seq: int | None = None
    reports_accepted: int = 0


class NodeJoined(BaseModel):
    node_id: str
    node_token: str = Field(description="The node credential, shown once")
    overlay_ip: str
    overlay_cidr: str
    region: RegionId
    peers: PeerList


# --- reports -------------------------------------------------------------------------------


Ms = Annotated[float, Field(ge=0, le=60_000, allow_inf_nan=False)]


class PeerStats(Strict):
    peer_node_id: str = Field(min_length=1, max_length=64)
    sent: int = Field(ge=0, le=10_000_000)
    received: int = Field(ge=0, le=10_000_000)
    rtt_min_ms: Ms | None = None
    rtt_p50_ms: Ms | None = None
    rtt_p90_ms: Ms | None = None
    rtt_max_ms: Ms | None = None
    jitter_ms: Ms | None = None
    reorders: int = Field(default=0, ge=0)
    duplicates: int = Field(default=0, ge=0)

    @property
    def loss_percent(self) -> float:
        if self.sent == 0:
            return 0.0
        return max(0.0, 100.0 * (self.sent - min(self.received, self.sent)) / self.sent)


class ReportIn(Strict):
    node_id: str = Field(min_length=1, max_length=64)
    seq: int = Field(ge=0, le=2**62, description="Per-node window counter; a repeated seq is a duplicate")
    window_start: datetime
    window_s: float = Field(gt=0, le=300, allow_inf_nan=False)
    peers: list[PeerStats] = Field(max_length=2000)

    @model_validator(mode="after")
    def _consistent(self) -> ReportIn:
        """One pass over the peers (a validator per peer costs more than the parse)."""
        for i, p in enumerate(self.peers):
            if p.received > p.sent + p.duplicates:
                raise ValueError(f"peers[{i}].received must not exceed sent (plus duplicates)")
            if p.received > 0 and p.rtt_p50_ms is None:
                raise ValueError(f"peers[{i}].rtt_p50_ms is required when received > 0")
        return self


# The same report body for msgspec, the hot path's decoder (a fifth of pydantic's time on a
# 150-peer report). Never laxer than ReportIn: a body msgspec accepts, ReportIn accepts with the
# same values; anything else (bad input, and lax forms such as numbers in strings) goes to
# ReportIn, whose answer (value or errors) stands. tests/api/test_report_fast_path.py guards it.

_WireMs = Annotated[float, msgspec.Meta(ge=0, le=60_000)]
_WireId = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
_WireCount = Annotated[int, msgspec.Meta(ge=0, le=10_000_000)]


class _PeerStatsWire(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    peer_node_id: _WireId
    sent: _WireCount
    received: _WireCount
    rtt_min_ms: _WireMs | None = None
    rtt_p50_ms: _WireMs | None = None
    rtt_p90_ms: _WireMs | None = None
    rtt_max_ms: _WireMs | None = None
    jitter_ms: _WireMs | None = None
    reorders: Annotated[int, msgspec.Meta(ge=0)] = 0
    duplicates: Annotated[int, msgspec.Meta(ge=0)] = 0


class _ReportWire(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    node_id: _WireId
    seq: Annotated[int, msgspec.Meta(ge=0, le=2**62)]
    window_start: str  # read by pydantic's own datetime rules
    window_s: Annotated[float, msgspec.Meta(gt=0, le=300)]
    peers: Annotated[list[_PeerStatsWire], msgspec.Meta(max_length=2000)]


_REPORT_DECODER = msgspec.json.Decoder(_ReportWire)
_DATETIME: TypeAdapter[datetime] = TypeAdapter(datetime)


@dataclass(frozen=True, slots=True)
class PeerColumns:
    """A report's peers as columns: element i of each array belongs to ids[i].

    Counts are float64 (exact below 2**53); NaN marks an RTT or jitter that was null or absent.
    """

    ids: list[str]
    sent: np.ndarray
    received: np.ndarray
    p50: np.ndarray
    p90: np.ndarray
    jitter: np.ndarray

    @classmethod
    def from_rows(cls, ids: list[str], rows: list[tuple[float | None, ...]]) -> PeerColumns:
        """From (sent, received, p50, p90, jitter) per peer; None becomes NaN."""
        cols = np.array(rows, dtype=np.float64).reshape(len(ids), 5).T
        return cls(ids, cols[0], cols[1], cols[2], cols[3], cols[4])


@dataclass(frozen=True, slots=True)
class ReportColumns:
    """A valid report (a ReportIn) as the controller takes it."""

    node_id: str
    seq: int
    window_start: float  # epoch seconds
    window_s: float
    peers: PeerColumns

    @classmethod
    def from_model(cls, report: ReportIn) -> ReportColumns:
        ps = report.peers
        peers = PeerColumns.from_rows(
            [p.peer_node_id for p in ps], [(p.sent, p.received, p.rtt_p50_ms, p.rtt_p90_ms, p.jitter_ms) for p in ps]
        )
        return cls(report.node_id, report.seq, report.window_start.timestamp(), report.window_s, peers)


def parse_report(raw: bytes | str) -> ReportColumns:
    """Decode and check a report body exactly as `ReportIn.model_validate_json` does.

    Raises pydantic's ValidationError, with ReportIn's own errors, for a bad body.
    """
    try:
        report = _from_wire(_REPORT_DECODER.decode(raw))
    except (msgspec.MsgspecError, ValueError, OverflowError):  # pydantic's ValidationError is a ValueError
        report = None
    return report if report is not None else ReportColumns.from_model(ReportIn.model_validate_json(raw))


_GET = {name: attrgetter(name) for name in _PeerStatsWire.__struct_fields__}


def _from_wire(w: _ReportWire) -> ReportColumns | None:
    """Columns of a body msgspec accepted; None when ReportIn's cross-field checks fail."""
    ps, n = w.peers, len(w.peers)

    def ints(name: str) -> np.ndarray:  # fromiter: np.array converts Python ints to float slowly
        return np.fromiter(map(_GET[name], ps), dtype=np.float64, count=n)

    def floats(name: str) -> np.ndarray:  # None becomes NaN
        return np.array(list(map(_GET[name], ps)), dtype=np.float64)

    sent, received, p50 = ints("sent"), ints("received"), floats("rtt_p50_ms")
    over = received > sent
    if (over.any() and (received > sent + ints("duplicates")).any()) or ((received > 0) & np.isnan(p50)).any():
        return None  # ReportIn._consistent says which peer and why
    ids = list(map(_GET["peer_node_id"], ps))
    peers = PeerColumns(ids, sent, received, p50, floats("rtt_p90_ms"), floats("jitter_ms"))
    return ReportColumns(w.node_id, w.seq, _DATETIME.validate_python(w.window_start).timestamp(), w.window_s, peers)


class ReportAck(BaseModel):
    node_id: str
    seq: int
    accepted: bool
    duplicate: bool = False


# --- links, routes, placement --------------------------------------------------------------


class LinkOut(BaseModel):
    src: RegionId
    dst: RegionId
    rtt_p50_ms: float
    rtt_p90_ms: float
    jitter_ms: float
    loss_percent: float
    age_s: float
    samples: int
    fresh: bool


class LinksOut(BaseModel):
    generated_at: datetime
    stale_after_s: float
    links: list[LinkOut]


class RoutingWeightsOut(BaseModel):
    loss_weight: float
    jitter_weight: float
    relay_penalty_ms: float
    hysteresis_ratio: float
    max_relays: int
    stale_after_s: float


class RouteOut(BaseModel):
    src: RegionId
    dst: RegionId
    path: list[RegionId]
    rtt_ms: float | None
    cost: float | None
    via_relay: bool
    reachable: bool
    generation: int


class RouteCandidate(BaseModel):
    path: list[RegionId]
    rtt_ms: float | None
    cost: float | None
    usable: bool
    chosen: bool = False
    note: str | None = None


class RouteExplained(RouteOut):
    reason: str
    weights: RoutingWeightsOut
    candidates: list[RouteCandidate]


class RouteTableOut(BaseModel):
    generation: int
    computed_at: datetime | None
    weights: RoutingWeightsOut
    routes: list[RouteOut]


class PlacementCandidate(BaseModel):
    region: RegionId
    state: RegionState
    rtt_ms: float | None = None
    distance_km: float | None = None
    note: str | None = None


class PlacementOut(BaseModel):
    region: RegionId
    reason: str
    rtt_ms: float | None = None
    distance_km: float | None = None
    alternatives: list[PlacementCandidate] = Field(default_factory=list)


# --- events and status ---------------------------------------------------------------------

EventKind = Literal[
    "drain",
    "undrain",
    "degraded",
    "recovered",
    "freeze",
    "unfreeze",
    "join",
    "leave",
    "key_rotated",
    "route_change",
    "region_added",
    "leader",
    "alert",
]


class EventOut(BaseModel):
    id: int
    ts: datetime
    kind: EventKind
    region: str | None = None
    node_id: str | None = None
    reason: str
    data: dict[str, Any] = Field(default_factory=dict)


class ReplicaOut(BaseModel):
    replica_id: str
    is_leader: bool
    generation: int
    lag_generations: int
    seen_at: datetime | None = None


class StatusOut(BaseModel):
    generation: int
    computed_at: datetime | None
    recompute_age_s: float | None
    regions_by_state: dict[str, int]
    regions: list[RegionOut]
    nodes_up: int
    nodes_down: int
    frozen: bool
    alerts: list[str]
    leader: str | None = None
    leader_since: datetime | None = None
    replica_id: str | None = None
    replicas: list[ReplicaOut] = Field(default_factory=list)
    degraded_store: bool = False


class ErrorOut(BaseModel):
    detail: str | list[dict[str, Any]]


class RouteChange(BaseModel):
    src: RegionId
    dst: RegionId
    before: list[RegionId] | None
    after: list[RegionId] | None


class PlacementChange(BaseModel):
    near: RegionId
    before: RegionId | None
    after: RegionId | None


class DrainPreview(BaseModel):
    region: RegionId
    dry_run: bool = True
    already_drained: bool
    routes_changed: list[RouteChange]
    placements_changed: list[PlacementChange]
    summary: str
