"""The policies' checks as plain functions over a resource's type and properties (camelCase).

Each returns a list of violation messages (empty when the resource is fine), so they can be
tested without starting a policy pack.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

WORLD = {"0.0.0.0/0", "::/0", "*", "Internet", "Any"}
ADMIN_PORTS = {22: "SSH", 3389: "RDP"}
WIREGUARD_PORT = 51820
REQUIRED_TAGS = ("mesh", "mesh-region", "environment")
ALLOWED_INSTANCE_TYPES = frozenset(
    {
        # AWS
        "c6i.large",
        "c6i.xlarge",
        "c6i.2xlarge",
        "c7i.large",
        "c7i.xlarge",
        "c7g.large",
        "c7g.xlarge",
        "c6gn.large",
        "c6gn.xlarge",
        "t3.medium",
        # GCP
        "c2d-standard-4",
        "c2d-standard-8",
        "c3-standard-4",
        "c3-standard-8",
        "n2-standard-4",
        "e2-standard-4",
        # Azure
        "Standard_F4s_v2",
        "Standard_F8s_v2",
        "Standard_D4s_v5",
        "Standard_D8s_v5",
    }
)
TAGGABLE = {
    "aws:ec2/instance:Instance": "tags",
    "aws:ec2/launchTemplate:LaunchTemplate": "tags",
    "aws:autoscaling/group:Group": "tags",  # a list of {key, value, propagateAtLaunch}
    "aws:ec2/eip:Eip": "tags",
    "aws:iam/role:Role": "tags",  # the nodes' role (claims a pool address), global: tags from the provider
    "aws:iam/instanceProfile:InstanceProfile": "tags",
    "gcp:compute/instanceTemplate:InstanceTemplate": "labels",
    "azure-native:compute:VirtualMachineScaleSet": "tags",
    "azure-native:network:PublicIPPrefix": "tags",
    "aws:ec2/vpc:Vpc": "tags",
    "aws:ec2/securityGroup:SecurityGroup": "tags",
    "aws:ec2/subnet:Subnet": "tags",
    "gcp:compute/instance:Instance": "labels",
    "gcp:compute/address:Address": "labels",
    "azure-native:compute:VirtualMachine": "tags",
    "azure-native:network:NetworkSecurityGroup": "tags",
    "azure-native:network:PublicIPAddress": "tags",
    "azure-native:resources:ResourceGroup": "tags",
}
INSTANCES = {
    "aws:ec2/instance:Instance": lambda p: p.get("instanceType"),
    "aws:ec2/launchTemplate:LaunchTemplate": lambda p: p.get("instanceType"),
    "gcp:compute/instanceTemplate:InstanceTemplate": lambda p: p.get("machineType"),
    "azure-native:compute:VirtualMachineScaleSet": lambda p: (p.get("sku") or {}).get("name"),
    "gcp:compute/instance:Instance": lambda p: p.get("machineType"),
    "azure-native:compute:VirtualMachine": lambda p: (p.get("hardwareProfile") or {}).get("vmSize"),
}


def _covers(lo: Any, hi: Any, port: int) -> bool:
    try:
        return int(lo) <= port <= int(hi)
    except (TypeError, ValueError):
        return False


def _port_ranges(spec: str) -> list[tuple[int, int]]:
    out = []
    for part in str(spec).split(","):
        part = part.strip()
        if part == "*":
            out.append((0, 65535))
        elif "-" in part:
            a, b = part.split("-", 1)
            out.append((int(a), int(b)))
        elif part.isdigit():
            out.append((int(part), int(part)))
    return out


def open_to_world(typ: str, props: Mapping[str, Any]) -> list[tuple[str, int, int, str]]:
    """(protocol, from, to, source) for every inbound allowance from the whole internet."""
    found = []
    if typ == "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule":
        src = props.get("cidrIpv4") or props.get("cidrIpv6")
        if src in WORLD:
            proto = str(props.get("ipProtocol"))
            lo, hi = (0, 65535) if proto == "-1" else (props.get("fromPort", 0), props.get("toPort", 65535))
            found.append((proto, int(lo or 0), int(hi if hi is not None else 65535), str(src)))
    elif typ == "aws:ec2/securityGroup:SecurityGroup":
        for rule in props.get("ingress") or []:
            for src in (rule.get("cidrBlocks") or []) + (rule.get("ipv6CidrBlocks") or []):
                if src in WORLD:
                    found.append(
                        (str(rule.get("protocol")), int(rule.get("fromPort", 0)), int(rule.get("toPort", 65535)), src)
                    )
    elif typ == "gcp:compute/firewall:Firewall":
        if (props.get("direction") or "INGRESS") == "INGRESS":
            world = [s for s in props.get("sourceRanges") or [] if s in WORLD]
            if gcp_applies_to_world(props):
                world.append("0.0.0.0/0 (no source given: GCP applies the rule to every address)")
            for allow in props.get("allows") or []:
                ports = allow.get("ports") or ["0-65535"]
                for spec in ports:
                    for lo, hi in _port_ranges(spec):
                        found += [(str(allow.get("protocol")), lo, hi, s) for s in world]
    elif typ == "azure-native:network:NetworkSecurityGroup":
        for rule in props.get("securityRules") or []:
            if rule.get("direction") != "Inbound" or rule.get("access") != "Allow":
                continue
            sources = [*list(rule.get("sourceAddressPrefixes") or []), rule.get("sourceAddressPrefix")]
            world = [s for s in sources if s in WORLD]
            ranges = [*list(rule.get("destinationPortRanges") or []), rule.get("destinationPortRange")]
            for spec in [r for r in ranges if r]:
                for lo, hi in _port_ranges(spec):
                    found += [(str(rule.get("protocol")), lo, hi, s) for s in world]
    return found


def gcp_applies_to_world(props: Mapping[str, Any]) -> bool:
    """A GCP ingress rule with no source ranges, tags or service accounts applies to 0.0.0.0/0."""
    if (props.get("direction") or "INGRESS") != "INGRESS":
        return False
    return not any(props.get(k) for k in ("sourceRanges", "sourceTags", "sourceServiceAccounts"))


def gcp_firewall_has_sources(typ: str, props: Mapping[str, Any]) -> list[str]:
    """An ingress firewall must name its sources: an empty list means the whole internet on GCP."""
    if typ != "gcp:compute/firewall:Firewall" or not gcp_applies_to_world(props):
        return []
    return ["ingress firewall without sourceRanges (or source tags/service accounts): GCP applies it to 0.0.0.0/0"]


def no_admin_ports_from_internet(typ: str, props: Mapping[str, Any]) -> list[str]:
    """No SSH or RDP from the whole internet."""
    out = []
    for proto, lo, hi, src in open_to_world(typ, props):
        if proto.lower() in ("tcp", "-1", "all", "*"):
            for port, name in ADMIN_PORTS.items():
                if _covers(lo, hi, port):
                    out.append(f"{name} (tcp/{port}) is open to {src}")
    return out


def wireguard_port_open(
    typ: str, props: Mapping[str, Any], stack_rules: list[tuple[str, Mapping[str, Any]]]
) -> list[str]:
    """Across the stack's firewall resources, UDP 51820 must be open (or the mesh cannot form).

    Checked from each security group, NSG, GCP network and GCP firewall rule: a GCP node stack on a
    network stack (mesh.networkStack) holds firewall rules but no network."""
    if typ not in (
        "aws:ec2/securityGroup:SecurityGroup",
        "gcp:compute/network:Network",
        "gcp:compute/firewall:Firewall",
        "azure-native:network:NetworkSecurityGroup",
    ):
        return []
    for rtype, rprops in [*stack_rules, (typ, props)]:
        for proto, lo, hi, _src in open_to_world(rtype, rprops):
            if proto.lower() in ("udp", "-1", "all", "*") and _covers(lo, hi, WIREGUARD_PORT):
                return []
    return [f"WireGuard (udp/{WIREGUARD_PORT}) is not open inbound: the node cannot join the mesh"]


def provider_defaults(provider_type: str | None, provider_props: Mapping[str, Any] | None) -> dict[str, str]:
    """The tags (AWS `defaultTags`) or labels (GCP `defaultLabels`) a provider adds to its resources.

    A provider's object-valued settings may arrive JSON-encoded (as the engine passes them)."""
    key = {"pulumi:providers:aws": "defaultTags", "pulumi:providers:gcp": "defaultLabels"}.get(provider_type or "")
    value: Any = (provider_props or {}).get(key) if key else None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return {}
    if key == "defaultTags" and isinstance(value, Mapping):
        value = value.get("tags")
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, Mapping) else {}


def required_tags(typ: str, props: Mapping[str, Any], defaults: Mapping[str, str] | None = None) -> list[str]:
    """The required tags on a resource: its own, with its provider's default tags/labels under them."""
    field = TAGGABLE.get(typ)
    if field is None:
        return []
    own = props.get(field) or {}
    present: dict[Any, Any]
    if isinstance(own, list):  # an autoscaling group's tags (propagated to its instances): no default reaches them
        present = {t.get("key"): t.get("value") for t in own if isinstance(t, Mapping) and t.get("propagateAtLaunch")}
    else:
        computed = props.get("tagsAll") or props.get("effectiveLabels") or {}
        present = {**(defaults or {}), **computed, **own}
    missing = [t for t in REQUIRED_TAGS if not present.get(t)]
    return [f"missing {field}: {', '.join(missing)}"] if missing else []


def allowed_instance_type(typ: str, props: Mapping[str, Any]) -> list[str]:
    get = INSTANCES.get(typ)
    if get is None:
        return []
    value = get(props)
    if value is None:
        return []
    short = str(value).rsplit("/", 1)[-1]  # GCP may give a machine type URL
    if short not in ALLOWED_INSTANCE_TYPES:
        return [f"instance type {short!r} is not on the allow list ({', '.join(sorted(ALLOWED_INSTANCE_TYPES))})"]
    return []


POOLS = {
    "aws:autoscaling/group:Group": ("vpcZoneIdentifiers", "subnets (one per zone)"),
    "gcp:compute/regionInstanceGroupManager:RegionInstanceGroupManager": ("distributionPolicyZones", "zones"),
    "azure-native:compute:VirtualMachineScaleSet": ("zones", "zones"),
}


def pool_spans_zones(typ: str, props: Mapping[str, Any]) -> list[str]:
    """A node pool spans at least two zones (one zone's outage must not take a region's nodes)."""
    if typ not in POOLS:
        return []
    field, what = POOLS[typ]
    found = props.get(field) or []
    if len(set(found)) < 2:
        return [f"node pool spans {len(set(found))} {what}; at least 2 (set {field})"]
    return []


READ_ONLY = ("Describe", "Get", "List")


def role_policy_scoped(typ: str, props: Mapping[str, Any]) -> list[str]:
    """A node role's inline policy: no wildcard action, and every action that changes something is
    scoped by resource ARN and a condition (e.g. the address pool's tag), never on `*` unconditioned."""
    if typ != "aws:iam/rolePolicy:RolePolicy" or not isinstance(props.get("policy"), str):
        return []
    try:
        statements = json.loads(props["policy"]).get("Statement", [])
    except (ValueError, AttributeError):
        return ["the role policy is not a JSON policy document"]
    out = []
    for i, s in enumerate([statements] if isinstance(statements, dict) else statements):
        if s.get("Effect") != "Allow":
            continue
        actions = [s["Action"]] if isinstance(s.get("Action"), str) else list(s.get("Action") or [])
        resources = [s["Resource"]] if isinstance(s.get("Resource"), str) else list(s.get("Resource") or [])
        name = s.get("Sid", f"#{i}")
        for action in actions:
            if "*" in action:
                out.append(f"statement {name}: wildcard action {action!r}")
            elif not action.split(":", 1)[-1].startswith(READ_ONLY) and ("*" in resources or not s.get("Condition")):
                out.append(f"statement {name}: {action} on {resources} without a condition; scope it by ARN and tag")
    return out
