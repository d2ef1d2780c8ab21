"""Request and response bodies of the REST API (the contract the agent and the CLI rely on).

Field names here are a public contract: add freely, rename nothing. The module runs to ~780
lines on purpose: it is the whole contract (bodies, the problem format, the ETags) in one place
a client author reads top to bottom, and the bodies share their field types (region ids, keys,
endpoints, scopes); split it by resource (regions, nodes, reports, routes, attestation) if it
grows much further.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)

from meshctl.core.regions import REGION_ID_PATTERN
from meshctl.core.wgconf import ENDPOINT_PATTERN, KEY_PATTERN, check_endpoint, check_key

RegionId = Annotated[str, StringConstraints(pattern=REGION_ID_PATTERN, max_length=64)]
# Checked by core's one check (a readable message); the schema shows the same pattern.
PublicKey = Annotated[
    str,
    AfterValidator(lambda v: check_key(v, "public_key")),
    Field(
        description="WireGuard public key: 32 bytes in canonical base64 (44 characters)",
        json_schema_extra={"pattern": KEY_PATTERN, "minLength": 44, "maxLength": 44},
        examples=["AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="],
    ),
]
Endpoint = Annotated[
    str,
    AfterValidator(lambda v: check_endpoint(v, "endpoint")),
    Field(
        description="WireGuard endpoint: IPv4:port or [IPv6]:port, a literal address and a port 1..65535",
        json_schema_extra={"pattern": ENDPOINT_PATTERN, "minLength": 9, "maxLength": 47},
        examples=["192.0.2.1:51820", "[2001:db8::1]:51820"],
    ),
]
Scope = Literal["admin", "operator", "reader"]
Cloud = Literal["aws", "gcp", "azure"]  # the clouds an attested join knows (meshctl.attest)
RegionState = Literal["active", "degraded", "drained"]
DrainKind = Literal["manual", "auto"]
DrainScope = Literal["node", "region"]  # what drained a node: its own drain or its region's


_NUMBERS = (int, float, int | None, float | None)


class Wire(BaseModel):
    """Base of every body here: a model's validator is built on its first use (`defer_build`), so
    a CLI command pays for the few bodies it reads, not for the whole contract at import."""

    model_config = ConfigDict(defer_build=True)


class Strict(Wire):
    """Base for request bodies: unknown fields are an error, not silently dropped, and a number
    field takes a JSON number only (no "5" for 5, no false for 0; 1.0 is an integer, as in JSON
    Schema): what the schema says is what is accepted."""

    model_config = ConfigDict(extra="forbid")

    @field_validator("*", mode="before")
    @classmethod
    def _json_number(cls, value: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields.get(info.field_name or "")
        if field is not None and field.annotation in _NUMBERS and isinstance(value, bool | str | bytes):
            raise ValueError("must be a JSON number")
        return value


class Lenient(Wire):
    """Base for probe reports: unknown fields are an error, but numbers may come as strings (agents
    of every version send them; the hot path's decoder is held to exactly these rules)."""

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


class DrainInfo(Wire):
    kind: DrainKind
    reason: str
    since: datetime
    by: str | None = None


class RegionHealth(Wire):
    observers_bad: int = 0
    observers_total: int = 0
    bad_windows: int = 0
    good_windows: int = 0
    reporting_nodes: int = 0
    reason: str | None = None


class RegionOut(Wire):
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


class TokenOut(Wire):
    id: str
    name: str
    scope: Scope
    created_at: datetime
    expires_at: datetime | None


class TokenCreated(TokenOut):
    token: str = Field(description="Shown once; only its hash is stored")


class JoinTokenCreate(Strict):
    region: RegionId
    ttl_s: int = Field(default=3600, ge=60, le=7 * 86400)
    uses: int = Field(default=1, ge=1, le=10_000)


class JoinTokenOut(Wire):
    id: str
    region: RegionId
    expires_at: datetime
    uses: int
    uses_left: int
    token: str | None = Field(default=None, description="Shown once, at creation")


# --- join policies (attested join) ---------------------------------------------------------

PolicyId = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9._-]{0,62}$")]
Claim = Annotated[str, StringConstraints(min_length=1, max_length=256)]


class JoinPolicyIn(Strict):
    """Who may join by cloud identity and where they land (meshctl.attest.JoinPolicy checks the rest:
    region targets in the policy's cloud; Azure needs `fixed_region`; `fixed_region` excludes the others)."""

    id: PolicyId = Field(description="A name, e.g. prod-aws; policies are tried in id order")
    cloud: Cloud
    accounts: list[Claim] = Field(
        min_length=1, max_length=1000, description="AWS account ids, GCP project ids or Azure subscription ids"
    )
    service_accounts: list[Claim] = Field(default_factory=list, max_length=1000, description="GCP: emails")
    resource_groups: list[Claim] = Field(default_factory=list, max_length=1000)
    tags: dict[str, str] = Field(default_factory=dict, max_length=50, description="Signed tags required")
    regions: dict[str, RegionId] = Field(
        default_factory=dict, max_length=500, description="Cloud region -> mesh region, e.g. us-east-1: aws:us-east-1"
    )
    any_region: bool = Field(default=False, description="Unlisted cloud regions land in <cloud>:<cloud-region>")
    fixed_region: RegionId | None = Field(default=None, description="Every node lands here (required for Azure)")
    max_nodes_per_region: int | None = Field(default=None, ge=1, le=100_000)


class JoinPolicyOut(JoinPolicyIn):
    created_at: datetime


class JoinNonceOut(Wire):
    nonce: str = Field(description="For Azure's attested document; single use")
    expires_at: datetime


# --- nodes and peers -----------------------------------------------------------------------


MAX_ATTESTATION_CHARS = 16_384


class Attestation(Strict):
    """A node's cloud identity document, as its metadata service gave it (see meshctl.attest)."""

    kind: Cloud = Field(description="Which cloud signed it")
    document: str = Field(
        min_length=1,
        max_length=MAX_ATTESTATION_CHARS,
        description="AWS: the instance identity document; GCP: the identity token (format=full, audience: this "
        "controller's public URL); Azure: the attested document (its PKCS#7 `signature`, or the whole JSON)",
    )
    signature: str | None = Field(
        default=None, max_length=MAX_ATTESTATION_CHARS, description="AWS: the `/rsa2048` PKCS#7 signature; else null"
    )


def _one_way_to_join(schema: dict[str, Any]) -> None:
    """The schema says what the validator does: exactly one of join_token and attestation, never null."""
    props = schema.get("properties", {})
    for name in ("join_token", "attestation"):
        prop = props.get(name, {})
        choices = [c for c in prop.pop("anyOf", []) if c.get("type") != "null"]
        if choices:
            prop.update(choices[0])
        prop.pop("default", None)
    schema["oneOf"] = [{"required": ["join_token"]}, {"required": ["attestation"]}]


class NodeJoin(Strict):
    """Join with a join token (labs, on-prem) or by cloud identity (`attestation`): exactly one of the two."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_one_way_to_join)

    join_token: str | None = Field(default=None, min_length=8, max_length=256)
    attestation: Attestation | None = None
    region: RegionId
    name: str = Field(min_length=1, max_length=63, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    public_key: PublicKey
    endpoint: Endpoint

    @model_validator(mode="before")
    @classmethod
    def _exactly_one_way(cls, data: Any) -> Any:
        if isinstance(data, dict):
            given = [k for k in ("join_token", "attestation") if data.get(k) is not None]
            nulls = [k for k in ("join_token", "attestation") if k in data and data[k] is None]
            if nulls:
                raise ValueError(
                    f"{nulls[0]} is null: give exactly one of join_token and attestation, leave out the other"
                )
            if len(given) != 1:
                raise ValueError(
                    "give exactly one of join_token (labs, on-prem) and attestation (a cloud identity document)"
                    + (", not both" if given else "")
                )
        return data


class NodeKeyUpdate(Strict):
    public_key: PublicKey


class NodeEndpointUpdate(Strict):
    endpoint: Endpoint


class Peer(Wire):
    node_id: str
    name: str
    region: RegionId
    public_key: str
    endpoint: str
    overlay_ip: str
    allowed_ips: list[str]
    drained: bool = Field(
        default=False, description="The peer or its region is drained: it takes no new sessions and relays nothing"
    )
    probe_ip: str | None = Field(
        default=None, description="The peer's probe address: probes go to it, never relayed (on its own entry)"
    )


class NodeSelfState(Wire):
    """The asking node's own state, in its peer list: a drain moves the peer generation, so the
    agent's long poll learns it at once (and answers 503 on its /healthz, runs its hooks)."""

    drained: bool = False
    scope: DrainScope | None = Field(default=None, description="node: its own drain (first); region: its region's")
    reason: str | None = None
    since: datetime | None = None
    node_drain: DrainInfo | None = None
    region_drained: bool = False
    region_drain: DrainInfo | None = None


class DataHop(Wire):
    """A data-plane path to a region: direct (no relay) or through one node of a relay region."""

    relay_region: RegionId | None = None
    relay_node: str | None = None


class DataPath(Wire):
    """The path overlay traffic to `region` takes (the same both ways), and the precomputed backup
    (no relay or link in common with the primary) the agent switches to when the primary's next hop
    stops answering."""

    region: RegionId
    subnet: str = Field(description="The region's overlay subnet, carried by a relay node's entry")
    primary: DataHop
    backup: DataHop | None = None
    note: str | None = None


class PeerList(Wire):
    node_id: str
    generation: int
    overlay_cidr: str
    peers: list[Peer]
    self_state: NodeSelfState | None = None
    probe_ip: str | None = Field(default=None, description="This node's own probe address (on its interface)")
    probe_cidr: str | None = None
    relay_data_plane: bool = Field(
        default=False, description="allowed_ips follow the route table (relayed pairs), with `paths` below"
    )
    paths: list[DataPath] = Field(
        default_factory=list, description="Per other region: the data-plane path in use and its backup"
    )
    since: int | None = Field(
        default=None,
        description="Set (asked with ?since=): `peers` holds only the peers added or changed after this generation "
        "and `removed` the ones that left; null: `peers` is the whole list",
    )
    removed: list[str] = Field(default_factory=list, description="Node ids of peers that left after `since`")


class NodeOut(Wire):
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
    clock_offset_s: float | None = Field(
        default=None, description="How far the node's clock is ahead (+) or behind (-) the controller's"
    )
    drain: DrainInfo | None = Field(default=None, description="The node's own drain (its region's is on the region)")
    drained: bool = Field(default=False, description="Drained, by its own drain or its region's")
    drained_by: DrainScope | None = None


class NodeJoined(Wire):
    node_id: str
    node_token: str = Field(description="The node credential, shown once")
    overlay_ip: str
    overlay_cidr: str
    region: RegionId
    peers: PeerList


# --- reports -------------------------------------------------------------------------------


Ms = Annotated[float, Field(ge=0, le=60_000, allow_inf_nan=False)]


class PeerStats(Lenient):
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


def peer_rows(columns: dict[str, Any]) -> list[dict[str, Any]]:
    """`peers` sent as columns, as the rows they stand for (a column element that is null is a
    field left out of that row). Raises ValueError unless every column is a list of one length."""
    if missing := [k for k in ("peer_node_id", "sent", "received") if k not in columns]:
        raise ValueError(f"peers as columns: {', '.join(map(repr, missing))} required (or peers as a list of objects)")
    if not all(isinstance(v, list) for v in columns.values()):
        bad = next(k for k, v in columns.items() if not isinstance(v, list))
        raise ValueError(f"peers as columns: {bad!r} must be a list with one element per peer")
    lengths = {len(v) for v in columns.values()}
    if len(lengths) > 1:
        raise ValueError(f"peers as columns: every column must be as long as the others (lengths {sorted(lengths)})")
    count = lengths.pop() if lengths else 0
    if count > 2000:
        raise ValueError("peers as columns: at most 2000 peers")
    return [{k: v[i] for k, v in columns.items() if v[i] is not None} for i in range(count)]


class RerouteIn(Lenient):
    """A local fast reroute the agent made since its last report: a region's traffic moved to its
    backup path (or back to the primary) because the primary's next hop stopped answering."""

    at: float = Field(ge=0, le=1e11, allow_inf_nan=False, description="When, in the node's epoch seconds")
    region: RegionId
    to: str = Field(min_length=1, max_length=200, description='"direct", "via REGION (NODE)" or "primary"')
    reason: str = Field(max_length=500)


class ReportIn(Lenient):
    node_id: str = Field(min_length=1, max_length=64)
    seq: int = Field(ge=0, le=2**62, description="Per-node window counter; a repeated seq is a duplicate")
    window_start: datetime
    window_s: float = Field(gt=0, le=300, allow_inf_nan=False)
    peers: list[PeerStats] = Field(
        max_length=2000,
        description=(
            "One entry per peer probed in the window. May also come as columns: an object whose keys"
            " are these entries' fields, each a list with one element per peer (element i of every"
            " list is peer i; `peer_node_id`, `sent` and `received` required, a missing column is"
            " absent for every peer). The same report, a third of the bytes and of the controller's"
            " decoding; agents send it so."
        ),
    )
    reroutes: list[RerouteIn] = Field(default_factory=list, max_length=100)

    @field_validator("peers", mode="before")
    @classmethod
    def _columns_as_rows(cls, value: Any) -> Any:
        """Peers as columns (an object of lists) become the rows they stand for."""
        return peer_rows(value) if isinstance(value, dict) else value

    @model_validator(mode="after")
    def _consistent(self) -> ReportIn:
        """One pass over the peers (a validator per peer costs more than the parse)."""
        for i, p in enumerate(self.peers):
            if p.received > p.sent + p.duplicates:
                raise ValueError(f"peers[{i}].received must not exceed sent (plus duplicates)")
            if p.received > 0 and p.rtt_p50_ms is None:
                raise ValueError(f"peers[{i}].rtt_p50_ms is required when received > 0")
        return self


class ReportAck(Wire):
    node_id: str
    seq: int
    accepted: bool = Field(description="Always true: a window (seq) already accepted is answered with 409")


# --- links, routes, placement --------------------------------------------------------------


class LinkOut(Wire):
    src: RegionId
    dst: RegionId
    rtt_p50_ms: float
    rtt_p90_ms: float
    jitter_ms: float
    loss_percent: float
    age_s: float
    samples: int
    fresh: bool


class LinksOut(Wire):
    generated_at: datetime
    stale_after_s: float
    links: list[LinkOut]


class RoutingWeightsOut(Wire):
    loss_weight: float
    jitter_weight: float
    relay_penalty_ms: float
    hysteresis_ratio: float
    max_relays: int
    stale_after_s: float


class RouteOut(Wire):
    src: RegionId
    dst: RegionId
    path: list[RegionId]
    rtt_ms: float | None
    cost: float | None
    via_relay: bool
    reachable: bool
    generation: int


class RouteCandidate(Wire):
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


class RouteTableOut(Wire):
    generation: int
    computed_at: datetime | None
    weights: RoutingWeightsOut
    routes: list[RouteOut]


class PlacementCandidate(Wire):
    region: RegionId
    state: RegionState
    rtt_ms: float | None = None
    distance_km: float | None = None
    note: str | None = None


class PlacementOut(Wire):
    region: RegionId
    nodes: list[str] = Field(
        default_factory=list, description="The region's nodes that take new sessions (drained nodes left out)"
    )
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
    "clock_skew",
    "join_refused",
    "node_drain",
    "node_undrain",
    "reroute",
]


class EventOut(Wire):
    id: int
    ts: datetime
    kind: EventKind
    region: str | None = None
    node_id: str | None = None
    reason: str
    data: dict[str, Any] = Field(default_factory=dict)


class HealthOut(Wire):
    ok: bool
    store: Literal["up", "down"]
    leader: bool
    replica_id: str
    generation: int


class ReplicaOut(Wire):
    replica_id: str
    is_leader: bool
    generation: int
    lag_generations: int
    seen_at: datetime | None = None


class StatusOut(Wire):
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


# --- errors: RFC 9457 problem details -------------------------------------------------------

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_TYPE_PREFIX = "urn:meshctl:problem:"
# slug -> (status, title): every error the API answers is one of these.
PROBLEMS: dict[str, tuple[int, str]] = {
    "bad-request": (400, "Bad request"),
    "unauthorized": (401, "Unauthorized"),
    "forbidden": (403, "Forbidden"),
    "not-found": (404, "Not found"),
    "method-not-allowed": (405, "Method not allowed"),
    "conflict": (409, "Conflict"),
    "payload-too-large": (413, "Payload too large"),
    "invalid-input": (422, "Invalid input"),
    "too-many-requests": (429, "Too many requests"),
    "internal": (500, "Internal server error"),
    "unavailable": (503, "Service unavailable"),
    "store-unavailable": (503, "Store unavailable"),
    "node-removed": (410, "Node removed"),
    # attested join (POST /v1/nodes with `attestation`): `attestation-<meshctl.attest error slug>`, 401
    "attestation-refused": (401, "Attestation refused"),
    "attestation-malformed": (401, "Attestation malformed"),
    "attestation-wrong-cloud": (401, "Attestation of another cloud"),
    "attestation-not-configured": (401, "No trust roots for this cloud"),
    "attestation-unknown-key": (401, "Attestation signed by an unknown key"),
    "attestation-untrusted-signer": (401, "Attestation signer not trusted"),
    "attestation-signature-invalid": (401, "Attestation signature invalid"),
    "attestation-wrong-audience": (401, "Attestation for another audience"),
    "attestation-expired": (401, "Attestation expired"),
    "attestation-not-yet-valid": (401, "Attestation not yet valid"),
    "attestation-clock-skew": (401, "Attestation from a skewed clock"),
    "attestation-nonce": (401, "Join nonce refused"),
    "join-policy": (403, "Refused by the join policy"),
}
# the slug answered for a status when nothing more specific is known
SLUG_BY_STATUS: dict[int, str] = {status: slug for slug, (status, _) in reversed(PROBLEMS.items())}


class FieldError(Wire):
    """One invalid input: where (`peers[0].sent`, a query parameter's name, `body`) and why."""

    field: str
    message: str
    code: str | None = Field(default=None, description="Machine-readable reason, e.g. greater_than_equal")


class Problem(Wire):
    """The body of every error response (RFC 9457), served as application/problem+json."""

    type: str = Field(pattern=r"^urn:meshctl:problem:[a-z-]+$", examples=["urn:meshctl:problem:not-found"])
    title: str = Field(description="Short human title of the type")
    status: int = Field(ge=400, le=599)
    detail: str = Field(description="One line for a human: show this")
    field: str | None = Field(default=None, description="The first bad field, if one is to blame")
    errors: list[FieldError] = Field(default_factory=list, description="Every invalid input (422 only)")


def problem(
    slug: str, detail: str, field: str | None = None, errors: list[FieldError] | None = None, status: int | None = None
) -> Problem:
    """The Problem for `slug` (a key of PROBLEMS); `status` only to override its usual one."""
    usual, title = PROBLEMS[slug]
    return Problem(
        type=PROBLEM_TYPE_PREFIX + slug,
        title=title,
        status=status or usual,
        detail=detail,
        field=field,
        errors=errors or [],
    )


def problem_slug(body: dict[str, Any]) -> str | None:
    """The slug of a problem body (`not-found`), or None if it is not one of ours."""
    kind = body.get("type")
    if isinstance(kind, str) and kind.startswith(PROBLEM_TYPE_PREFIX):
        return kind[len(PROBLEM_TYPE_PREFIX) :]
    return None


# --- entity tags ---------------------------------------------------------------------------


def routes_etag(generation: int) -> str:
    """The ETag of the route table (and of each route) at `generation`."""
    return f'"g{generation}"'


def peers_etag(generation: int) -> str:
    """The ETag of a node's peer list at peer generation `generation`."""
    return f'"p{generation}"'


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """Whether an If-None-Match header names `etag` (a list, weak tags and `*` included)."""
    if not if_none_match:
        return False
    for tag in if_none_match.split(","):
        tag = tag.strip()
        if tag == "*" or tag.removeprefix("W/") == etag:
            return True
    return False


class RouteChange(Wire):
    src: RegionId
    dst: RegionId
    before: list[RegionId] | None
    after: list[RegionId] | None


class PlacementChange(Wire):
    near: RegionId
    before: RegionId | None
    after: RegionId | None


class DrainPreview(Wire):
    region: RegionId
    dry_run: bool = True
    already_drained: bool
    routes_changed: list[RouteChange]
    placements_changed: list[PlacementChange]
    summary: str


class NodeDrainPreview(Wire):
    node_id: str
    region: RegionId
    dry_run: bool = True
    already_drained: bool
    region_nodes_left: list[str] = Field(description="The region's other nodes still taking sessions")
    placements_changed: list[PlacementChange]
    relayed_routes_through_region: int = Field(
        description="Relayed routes through the node's region (it leaves their relays)"
    )
    summary: str


class LinkHistoryPoint(Wire):
    """One bucket of a link's history; RTT figures over the window medians of the bucket (None
    when every window was lost). Hour buckets are rolled up from minutes (approximate)."""

    at: datetime = Field(description="Start of the bucket")
    rtt_min_ms: float | None
    rtt_p50_ms: float | None
    rtt_p90_ms: float | None
    rtt_max_ms: float | None
    loss_percent: float
    jitter_ms: float | None
    samples: int = Field(description="Measurement windows in the bucket")


class LinkHistoryOut(Wire):
    src: RegionId
    dst: RegionId
    step: Literal["1m", "1h"]
    step_s: int
    since: datetime = Field(description="Start of the first bucket asked for")
    until: datetime = Field(description="When the answer was made")
    points: list[LinkHistoryPoint]
