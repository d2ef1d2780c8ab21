"""The cloud-neutral description of a stack: its media regions, ports, and who may SSH in.

Everything is validated before any resource is created; an error names the setting.
"""

from __future__ import annotations

import ipaddress
import math
import re
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

CONFIG_NAMESPACE = "meshctl-stacks"
WIREGUARD_PORT = 51820
MAX_NODE_NAME = 63
# what node stacks read from the shared stack (mesh.sharedStack) through a StackReference: its outputs
# of these names, which the node stack's own config must then leave unset
SHARED_OUTPUTS = ("controllerUrl", "agentWheelUrl", "agentWheelSha256", "agentWheelhouseUrl", "agentWheelhouseSha256")
STACK_NAME = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+){0,2}$")
POOL_SUFFIX = 4  # a GCP managed instance group names its VMs <base_instance_name>-<4 characters>
REGION_ID = re.compile(r"^([a-z][a-z0-9]*):([a-z0-9][a-z0-9-]*)$")


class StackConfigError(ValueError):
    """A setting is wrong; the message names it (e.g. meshctl-stacks:mesh.regions[2].region)."""


class PortRange(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    protocol: Literal["udp", "tcp"]
    from_port: int = Field(alias="from", ge=1, le=65535)
    to_port: int = Field(alias="to", ge=1, le=65535)


class RegionSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    region: str
    nodes: int  # the pool's desired size
    min_nodes: int | None = Field(default=None, alias="minNodes")  # default: nodes
    max_nodes: int | None = Field(default=None, alias="maxNodes")  # default: nodes
    # spot (AWS, Azure) / SPOT provisioning (GCP) share above an on-demand base; 0 = all on demand
    spot_percent: int = Field(default=0, alias="spotPercent", ge=0, le=100)
    on_demand_base: int = Field(default=1, alias="onDemandBase", ge=0)
    instance_type: str | None = Field(default=None, alias="instanceType")
    image: str | None = None
    zone: str | None = None


class StackSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = Field(min_length=1, max_length=32, pattern=r"^[a-z][a-z0-9-]*$")
    environment: str = Field(min_length=1, max_length=16, pattern=r"^[a-z][a-z0-9-]*$")
    cloud: str
    controller_url: str | None = Field(default=None, alias="controllerUrl")
    instance_type: str = Field(alias="instanceType")
    # an explicit image overrides the per-region lookup (GCP, Azure only: AMI ids are regional)
    image: str | None = None
    admin_cidrs: list[str] = Field(default_factory=list, alias="adminCidrs")
    admin_ssh_public_key: str | None = Field(default=None, alias="adminSshPublicKey")
    media_ports: list[PortRange] = Field(
        default_factory=lambda: [PortRange(protocol="udp", **{"from": 10000, "to": 20000})], alias="mediaPorts"
    )
    # the agent wheel the nodes install, verified by its sha256 (never a bare name on a public index)
    agent_wheel_url: str | None = Field(default=None, alias="agentWheelUrl")
    agent_wheel_sha256: str | None = Field(default=None, alias="agentWheelSha256")
    # its dependencies: the wheelhouse tarball `make agent-wheel` builds (pinned, --hash lines)
    agent_wheelhouse_url: str | None = Field(default=None, alias="agentWheelhouseUrl")
    agent_wheelhouse_sha256: str | None = Field(default=None, alias="agentWheelhouseSha256")
    # a public address per node that survives its replacement (README: how, per cloud)
    static_addresses: bool = Field(default=True, alias="staticAddresses")
    # the environment's shared stack (org/project/stack): controller URL and agent artifacts come from it
    shared_stack: str | None = Field(default=None, alias="sharedStack")
    # the environment's network stack of this cloud (a stack of stacks/shared with a `network` config):
    # the regions' networks and address pools come from it
    network_stack: str | None = Field(default=None, alias="networkStack")
    regions: list[RegionSpec]

    @field_validator("controller_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^https?://[^\s/]+", v):
            raise ValueError("must be an http(s) URL")
        return v


class NetworkRegion(BaseModel):
    model_config = ConfigDict(extra="forbid")

    region: str
    addresses: int = Field(default=0, ge=0, le=100)  # the address pool's size (AWS Elastic IPs)


class NetworkSettings(BaseModel):
    """A network stack's config (`meshctl-shared:network`): one cloud's regions, their networks and
    address pools, named as the node stacks of the same mesh name and environment name theirs."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=32, pattern=r"^[a-z][a-z0-9-]*$")
    environment: str = Field(min_length=1, max_length=16, pattern=r"^[a-z][a-z0-9-]*$")
    cloud: str
    regions: list[NetworkRegion] = Field(min_length=1)


def validate_network(raw: Any, known_regions: dict[str, frozenset[str]]) -> NetworkSettings:
    """Parse and check a network stack's config; StackConfigError naming the first bad setting."""
    where = "meshctl-shared:network"
    try:
        net = NetworkSettings.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"])
        raise StackConfigError(f"{where}{loc}: {err['msg']}") from None
    if net.cloud not in known_regions:
        raise StackConfigError(f"{where}.cloud: unknown cloud {net.cloud!r}; one of {', '.join(sorted(known_regions))}")
    seen: set[str] = set()
    for i, r in enumerate(net.regions):
        m = REGION_ID.match(r.region)
        if m is None or m.group(1) != net.cloud or m.group(2) not in known_regions[net.cloud]:
            raise StackConfigError(f"{where}.regions[{i}].region: {r.region!r} is not a known region of {net.cloud}")
        if r.region in seen:
            raise StackConfigError(f"{where}.regions[{i}].region: {r.region!r} is listed twice")
        seen.add(r.region)
    return net


@dataclass(frozen=True)
class FirewallRule:
    """One inbound allowance from one address family (clouds refuse rules mixing IPv4 and IPv6)."""

    name: str
    protocol: Literal["udp", "tcp"]
    from_port: int
    to_port: int
    sources: tuple[str, ...]
    description: str
    family: Literal[4, 6] = 4


def _setting(loc: tuple[Any, ...]) -> str:
    path = "mesh"
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return f"{CONFIG_NAMESPACE}:{path}"


def validate(raw: Any, known_regions: dict[str, frozenset[str]]) -> StackSettings:
    """Parse and check the stack config; raise StackConfigError naming the first bad setting."""
    if not isinstance(raw, dict):
        raise StackConfigError(f"{CONFIG_NAMESPACE}:mesh: missing; set the stack's structured 'mesh' config")
    try:
        settings = StackSettings.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise StackConfigError(f"{_setting(tuple(err['loc']))}: {err['msg']}") from None
    if settings.cloud not in known_regions:
        raise StackConfigError(
            f"{CONFIG_NAMESPACE}:mesh.cloud: unknown cloud {settings.cloud!r}; "
            f"one of {', '.join(sorted(known_regions))}"
        )
    if settings.network_stack is not None and not STACK_NAME.match(settings.network_stack):
        raise StackConfigError(
            f"{CONFIG_NAMESPACE}:mesh.networkStack: {settings.network_stack!r} is not a stack name "
            "(organization/project/stack, e.g. organization/meshctl-shared/dev-aws)"
        )
    if settings.shared_stack is not None:
        if not STACK_NAME.match(settings.shared_stack):
            raise StackConfigError(
                f"{CONFIG_NAMESPACE}:mesh.sharedStack: {settings.shared_stack!r} is not a stack name "
                "(organization/project/stack, e.g. organization/meshctl-shared/dev)"
            )
        for key in SHARED_OUTPUTS:
            if raw.get(key) is not None:
                raise StackConfigError(
                    f"{CONFIG_NAMESPACE}:mesh.{key}: comes from the shared stack {settings.shared_stack} "
                    "(mesh.sharedStack); remove it here"
                )
        return _check_rest(settings, known_regions)
    if not settings.controller_url:
        raise StackConfigError(f"{CONFIG_NAMESPACE}:mesh.controllerUrl: missing; the agents must know the controller")
    return _check_rest(settings, known_regions)


def with_shared(
    raw: dict[str, Any], outputs: dict[str, Any], known_regions: dict[str, frozenset[str]]
) -> StackSettings:
    """The settings with the shared stack's outputs in place of the keys it provides.

    A missing controllerUrl, or a value the node stack's own validation refuses, is an error that
    names the shared stack and its output.
    """
    name = raw.get("sharedStack")
    if not outputs.get("controllerUrl"):
        raise StackConfigError(
            f"{CONFIG_NAMESPACE}:mesh.sharedStack: the shared stack {name} has no output controllerUrl "
            "(run `pulumi up` on it first: stacks/shared; or check the stack name)"
        )
    merged = {k: v for k, v in raw.items() if k != "sharedStack"}
    merged.update({k: outputs[k] for k in SHARED_OUTPUTS if outputs.get(k) is not None})
    try:
        return validate(merged, known_regions)
    except StackConfigError as exc:
        raise StackConfigError(f"output of the shared stack {name}: {exc}") from None


def _check_rest(settings: StackSettings, known_regions: dict[str, frozenset[str]]) -> StackSettings:
    """Regions, pool bounds, admin CIDRs, agent artifacts, node names and ports."""
    if not settings.regions:
        raise StackConfigError(f"{CONFIG_NAMESPACE}:mesh.regions: at least one region")
    seen = set()
    for i, r in enumerate(settings.regions):
        where = f"{CONFIG_NAMESPACE}:mesh.regions[{i}]"
        m = REGION_ID.match(r.region)
        if m is None:
            raise StackConfigError(f"{where}.region: {r.region!r} is not a region id like aws:us-east-1")
        if m.group(1) != settings.cloud or m.group(2) not in known_regions[settings.cloud]:
            raise StackConfigError(f"{where}.region: {r.region!r} is not a known region of {settings.cloud}")
        if r.region in seen:
            raise StackConfigError(f"{where}.region: {r.region!r} is listed twice")
        seen.add(r.region)
        if r.nodes < 1:
            raise StackConfigError(f"{where}.nodes: must be at least 1, got {r.nodes}")
        if r.nodes > 100:
            raise StackConfigError(f"{where}.nodes: more than 100 nodes in one region; split the stack")
        low, high = pool_bounds(r)
        if not 0 <= low <= r.nodes:
            raise StackConfigError(f"{where}.minNodes: must be between 0 and nodes ({r.nodes}), got {low}")
        if not r.nodes <= high <= 100:
            raise StackConfigError(f"{where}.maxNodes: must be between nodes ({r.nodes}) and 100, got {high}")
        if r.on_demand_base > high:
            raise StackConfigError(f"{where}.onDemandBase: {r.on_demand_base} is above maxNodes ({high})")
    _check_admin_cidrs(settings.admin_cidrs)
    _check_agent_wheel(settings)
    _check_node_names(settings)
    for i, p in enumerate(settings.media_ports):
        where = f"{CONFIG_NAMESPACE}:mesh.mediaPorts[{i}]"
        if p.from_port > p.to_port:
            raise StackConfigError(f"{where}: from {p.from_port} is above to {p.to_port}")
        if p.protocol == "tcp" and p.from_port <= 22 <= p.to_port:
            raise StackConfigError(f"{where}: media ports must not include SSH (22)")
        if p.protocol == "udp" and p.from_port <= WIREGUARD_PORT <= p.to_port:
            raise StackConfigError(f"{where}: media ports overlap WireGuard's {WIREGUARD_PORT}")
    return settings


def pool_bounds(spec: RegionSpec) -> tuple[int, int]:
    """(minNodes, maxNodes) with their defaults: a pool of exactly `nodes` that heals."""
    low = spec.nodes if spec.min_nodes is None else spec.min_nodes
    high = spec.nodes if spec.max_nodes is None else spec.max_nodes
    return low, high


def capacity_split(spec: RegionSpec, size: int | None = None) -> tuple[int, int]:
    """(on demand, spot) of a pool of `size` (default: nodes): the base, then spotPercent of the rest.

    Rounded as AWS does (on-demand share rounded up): AWS and Azure apply the same rule to the
    live size themselves; GCP, which has no mixed pool, gets two pools of these sizes.
    """
    n = spec.nodes if size is None else size
    base = min(spec.on_demand_base, n)
    on_demand = base + math.ceil((n - base) * (100 - spec.spot_percent) / 100)
    return on_demand, n - on_demand


def _check_admin_cidrs(cidrs: list[str]) -> None:
    """Each a valid network; not the whole internet, alone or together (0.0.0.0/1 + 128.0.0.0/1)."""
    nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for i, cidr in enumerate(cidrs):
        where = f"{CONFIG_NAMESPACE}:mesh.adminCidrs[{i}]"
        try:
            net = ipaddress.ip_network(cidr, strict=True)
        except ValueError as exc:
            raise StackConfigError(f"{where}: {exc}") from None
        if net.prefixlen == 0:
            raise StackConfigError(f"{where}: SSH open to the whole internet ({cidr}) is not allowed")
        nets.append(net)
    for family, everything in ((4, "0.0.0.0/0"), (6, "::/0")):
        same = [n for n in nets if n.version == family]
        if any(n.prefixlen == 0 for n in ipaddress.collapse_addresses(same)):  # type: ignore[type-var]
            raise StackConfigError(
                f"{CONFIG_NAMESPACE}:mesh.adminCidrs: together they cover the whole IPv{family} internet "
                f"({everything}); SSH open to the world is not allowed"
            )


def _check_agent_wheel(settings: StackSettings) -> None:
    """The wheel and its wheelhouse: each an https URL with its sha256; all four or none."""
    where = f"{CONFIG_NAMESPACE}:mesh"
    pairs = (
        ("agentWheelUrl", settings.agent_wheel_url, "agentWheelSha256", settings.agent_wheel_sha256, r"\.whl"),
        (
            "agentWheelhouseUrl",
            settings.agent_wheelhouse_url,
            "agentWheelhouseSha256",
            settings.agent_wheelhouse_sha256,
            r"\.tar\.gz",
        ),
    )
    for url_key, url, digest_key, digest, suffix in pairs:
        if (url is None) != (digest is None):
            missing = digest_key if digest is None else url_key
            raise StackConfigError(f"{where}.{missing}: missing; {url_key} needs both its URL and its sha256")
        kind = "a .whl file" if suffix == r"\.whl" else "a .tar.gz wheelhouse"
        if url is not None and not re.match(rf"^https://[^\s/]+/\S+{suffix}$", url):
            raise StackConfigError(f"{where}.{url_key}: must be an https:// URL of {kind}, got {url!r}")
        if digest is not None and not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise StackConfigError(f"{where}.{digest_key}: must be 64 lower-case hex digits (sha256)")
    if (settings.agent_wheel_url is None) != (settings.agent_wheelhouse_url is None):
        missing = "agentWheelhouseUrl" if settings.agent_wheelhouse_url is None else "agentWheelUrl"
        raise StackConfigError(
            f"{where}.{missing}: missing; the agent wheel and its wheelhouse (make agent-wheel) go together"
        )


def _check_node_names(settings: StackSettings) -> None:
    """Instance names: a pool names its nodes <base>-<suffix> (GCP: 4 characters, 63 at most)."""
    for i, r in enumerate(settings.regions):
        longest = pool_name(settings, r.region) + "-" + "x" * POOL_SUFFIX
        if len(longest) > MAX_NODE_NAME:
            raise StackConfigError(
                f"{CONFIG_NAMESPACE}:mesh.name: node names would be {len(longest)} characters "
                f"({longest!r}, regions[{i}]); at most {MAX_NODE_NAME}: shorten mesh.name or mesh.environment"
            )


def firewall_rules(settings: StackSettings) -> list[FirewallRule]:
    """WireGuard and the media ports from anywhere; SSH only from the admin CIDRs; nothing else.

    One rule per address family: Azure and GCP refuse a rule that mixes IPv4 and IPv6, and a GCP
    ingress rule with no source at all applies to 0.0.0.0/0, so a family without CIDRs gets no rule.
    """
    rules = []
    families: tuple[tuple[Literal[4, 6], str, str], ...] = ((4, "0.0.0.0/0", "v4"), (6, "::/0", "v6"))
    for family, anywhere, suffix in families:
        rules.append(
            FirewallRule(
                f"wireguard-{suffix}", "udp", WIREGUARD_PORT, WIREGUARD_PORT, (anywhere,), "WireGuard overlay", family
            )
        )
        for i, p in enumerate(settings.media_ports):
            rules.append(
                FirewallRule(f"media-{i}-{suffix}", p.protocol, p.from_port, p.to_port, (anywhere,), "media", family)
            )
        admins = tuple(c for c in settings.admin_cidrs if ipaddress.ip_network(c).version == family)
        if admins:
            rules.append(FirewallRule(f"ssh-admin-{suffix}", "tcp", 22, 22, admins, "SSH from admin networks", family))
    return rules


def tags(settings: StackSettings | NetworkSettings, region_id: str) -> dict[str, str]:
    """Required on every resource: mesh name, region id, environment."""
    return {
        "mesh": settings.name,
        "mesh-region": region_id,
        "environment": settings.environment,
        "managed-by": "meshctl-stacks",
    }


def label_safe(value: str) -> str:
    """GCP labels: lower case letters, digits, '-' and '_' only."""
    return re.sub(r"[^a-z0-9_-]", "_", value.lower())[:63]


def pool_name(settings: StackSettings | NetworkSettings, region_id: str) -> str:
    """<mesh>-<env>-<cloud-region>: the region's node pool and the base of its nodes' names."""
    return f"{settings.name}-{settings.environment}-{region_id.split(':', 1)[1]}"


def node_name(settings: StackSettings, region_id: str, index: int) -> str:
    """<pool>-<n> (fixed names, e.g. an address pool's members)."""
    return f"{pool_name(settings, region_id)}-{index}"
