"""The cloud-neutral description of a stack: its media regions, ports, and who may SSH in.

Everything is validated before any resource is created; an error names the setting.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

CONFIG_NAMESPACE = "meshctl-stacks"
WIREGUARD_PORT = 51820
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
    nodes: int
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
    image: str
    admin_cidrs: list[str] = Field(default_factory=list, alias="adminCidrs")
    admin_ssh_key: str | None = Field(default=None, alias="adminSshKey")
    media_ports: list[PortRange] = Field(
        default_factory=lambda: [PortRange(protocol="udp", **{"from": 10000, "to": 20000})], alias="mediaPorts"
    )
    agent_package: str = Field(default="meshctl", alias="agentPackage")
    regions: list[RegionSpec]

    @field_validator("controller_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^https?://[^\s/]+", v):
            raise ValueError("must be an http(s) URL")
        return v


@dataclass(frozen=True)
class FirewallRule:
    """One inbound allowance; everything not listed is closed."""

    name: str
    protocol: Literal["udp", "tcp"]
    from_port: int
    to_port: int
    sources: tuple[str, ...]
    description: str


def _setting(loc: tuple[Any, ...]) -> str:
    path = "mesh"
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return f"{CONFIG_NAMESPACE}:{path}"


def validate(raw: Any, known_regions: dict[str, frozenset[str]], join_token_set: bool = True) -> StackSettings:
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
    if not settings.controller_url:
        raise StackConfigError(f"{CONFIG_NAMESPACE}:mesh.controllerUrl: missing; the agents must know the controller")
    if not join_token_set:
        raise StackConfigError(f"{CONFIG_NAMESPACE}:joinToken: missing; set it with `pulumi config set --secret`")
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
    for i, cidr in enumerate(settings.admin_cidrs):
        where = f"{CONFIG_NAMESPACE}:mesh.adminCidrs[{i}]"
        try:
            net = ipaddress.ip_network(cidr, strict=True)
        except ValueError as exc:
            raise StackConfigError(f"{where}: {exc}") from None
        if net.prefixlen == 0:
            raise StackConfigError(f"{where}: SSH open to the whole internet ({cidr}) is not allowed")
    for i, p in enumerate(settings.media_ports):
        where = f"{CONFIG_NAMESPACE}:mesh.mediaPorts[{i}]"
        if p.from_port > p.to_port:
            raise StackConfigError(f"{where}: from {p.from_port} is above to {p.to_port}")
        if p.protocol == "tcp" and p.from_port <= 22 <= p.to_port:
            raise StackConfigError(f"{where}: media ports must not include SSH (22)")
        if p.protocol == "udp" and p.from_port <= WIREGUARD_PORT <= p.to_port:
            raise StackConfigError(f"{where}: media ports overlap WireGuard's {WIREGUARD_PORT}")
    return settings


def firewall_rules(settings: StackSettings) -> list[FirewallRule]:
    """WireGuard and the media ports from anywhere; SSH only from the admin CIDRs; nothing else."""
    anywhere = ("0.0.0.0/0", "::/0")
    rules = [FirewallRule("wireguard", "udp", WIREGUARD_PORT, WIREGUARD_PORT, anywhere, "WireGuard overlay")]
    for i, p in enumerate(settings.media_ports):
        rules.append(FirewallRule(f"media-{i}", p.protocol, p.from_port, p.to_port, anywhere, "media"))
    if settings.admin_cidrs:
        rules.append(FirewallRule("ssh-admin", "tcp", 22, 22, tuple(settings.admin_cidrs), "SSH from admin networks"))
    return rules


def tags(settings: StackSettings, region_id: str) -> dict[str, str]:
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


def node_name(settings: StackSettings, region_id: str, index: int) -> str:
    cloud_region = region_id.split(":", 1)[1]
    return f"{settings.name}-{settings.environment}-{cloud_region}-{index}"
