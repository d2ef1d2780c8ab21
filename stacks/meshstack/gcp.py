"""GCP: one global VPC network with its firewall rules on the node tag (VPCs and firewalls are
global), a subnetwork per region, and per region a regional managed instance group over the
region's zones that are UP (looked up: not every region has a zone `-a`) from an instance
template (Ubuntu 24.04 LTS through its image family, the firewall's target tag), stateful
external IPs when the stack wants static addresses, a second group of SPOT VMs for the spot
share, and proactive rolling replacement when the template changes. With mesh.networkStack the
network and subnetworks are a network stack's (`network`: what one makes), the firewall stays here."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any, Literal

import pulumi
import pulumi_gcp as gcp

from meshstack.base import CloudProvider, from_network_stack, network_outputs
from meshstack.model import (
    CONFIG_NAMESPACE,
    NetworkRegion,
    NetworkSettings,
    RegionSpec,
    StackConfigError,
    StackSettings,
    capacity_split,
    firewall_rules,
    label_safe,
    pool_bounds,
    pool_name,
    tags,
)

IMAGE_FAMILY = "projects/ubuntu-os-cloud/global/images/family/ubuntu-2404-lts-{arch}"
ARM_FAMILIES = frozenset({"t2a", "c4a", "n4a"})  # Ampere Altra and Google Axion machine families
MIN_ZONES, MAX_ZONES = 2, 3
MAX_TEMPLATE_PREFIX = 37  # instance template names: 63 characters, of which Pulumi's name_prefix suffix takes 26
SUBNET_SPACE = ipaddress.ip_network("10.64.0.0/10")
# A region's subnetwork range is its position here (/20 each): append new regions, never reorder.
REGION_ORDER = (
    "us-central1",
    "us-east1",
    "us-east4",
    "us-east5",
    "us-south1",
    "us-west1",
    "us-west2",
    "us-west3",
    "us-west4",
    "northamerica-northeast1",
    "northamerica-northeast2",
    "southamerica-east1",
    "southamerica-west1",
    "europe-west1",
    "europe-west2",
    "europe-west3",
    "europe-west4",
    "europe-west6",
    "europe-west8",
    "europe-west9",
    "europe-north1",
    "europe-central2",
    "europe-southwest1",
    "me-west1",
    "me-central1",
    "africa-south1",
    "asia-east1",
    "asia-east2",
    "asia-northeast1",
    "asia-northeast2",
    "asia-northeast3",
    "asia-south1",
    "asia-south2",
    "asia-southeast1",
    "asia-southeast2",
    "australia-southeast1",
    "australia-southeast2",
)
REGIONS = frozenset(REGION_ORDER)


def architecture(machine_type: str) -> Literal["amd64", "arm64"]:
    return "arm64" if machine_type.split("-", 1)[0] in ARM_FAMILIES else "amd64"


def subnet_range(region: str) -> str:
    return str(list(SUBNET_SPACE.subnets(new_prefix=20))[REGION_ORDER.index(region)])


def zones(region: str) -> list[str]:
    """Up to three of the region's zones that are UP, sorted; at least two or an error."""
    names = sorted(gcp.compute.get_zones(region=region, status="UP").names)
    if len(names) < MIN_ZONES:
        raise StackConfigError(f"{CONFIG_NAMESPACE}:mesh.regions: gcp:{region} has fewer than {MIN_ZONES} zones UP")
    return names[:MAX_ZONES]


def global_network(name: str, described: str, parent: pulumi.Resource) -> gcp.compute.Network:
    """The mesh's one global VPC network (custom mode: a subnetwork per region), protected
    (`pulumi state unprotect` to delete it)."""
    return gcp.compute.Network(
        f"{name}-net",
        auto_create_subnetworks=False,
        description=described,
        opts=pulumi.ResourceOptions(parent=parent, protect=True),
    )


def subnetwork(
    name: str, region: str, network_id: pulumi.Input[str], described: str, opts: pulumi.ResourceOptions
) -> gcp.compute.Subnetwork:
    """A region's subnetwork of the global network: its fixed /20 (`REGION_ORDER`)."""
    return gcp.compute.Subnetwork(
        f"{name}-subnet",
        network=network_id,
        region=region,
        ip_cidr_range=subnet_range(region),
        description=described,
        opts=opts,
    )


@dataclass(frozen=True)
class GcpNetwork:
    """What the regions of a node stack share: the network (its id), the firewall's node tag and,
    with mesh.networkStack, the network stack's `networks` output (the regions' subnetworks)."""

    network_id: pulumi.Input[str]
    node_tag: str
    networks: pulumi.Output[Any] | None = None
    stack: str | None = None


def network_entry(networks: Any, region_id: str, pool: str, stack: str) -> dict[str, Any]:
    """The network stack's entry for a region, checked as every cloud's (`from_network_stack`), and
    in this stack's project: a subnetwork and the firewall rules of a network live in the network's
    project (another project's network would need Shared VPC, which this program does not set up)."""
    entry = from_network_stack(networks, region_id, pool, stack)
    mine, theirs = pulumi.Config("gcp").get("project"), entry.get("project")
    if mine and theirs and mine != theirs:
        raise pulumi.RunError(
            f"{CONFIG_NAMESPACE}:mesh.networkStack: the network of {region_id} in {stack} is in project "
            f"{theirs!r}, this stack's gcp:project is {mine!r} (the same project, or no networkStack)"
        )
    return entry


class GcpSharedNetwork(pulumi.ComponentResource):
    """The stack's one global VPC network and its ingress firewall rules (on the node tag). With
    mesh.networkStack the network is the network stack's (`network_id`): only the rules are made here."""

    def __init__(
        self,
        settings: StackSettings,
        opts: pulumi.ResourceOptions | None = None,
        network_id: pulumi.Input[str] | None = None,
    ) -> None:
        name = f"{settings.name}-{settings.environment}"
        super().__init__("meshctl:gcp:Network", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        described = f"meshctl {settings.name}/{settings.environment}"
        self.node_tag = f"{name}-node"
        self.network_id = global_network(name, described, self).id if network_id is None else network_id
        for rule in firewall_rules(settings):
            # one address family per rule, never an empty source list (GCP would apply 0.0.0.0/0)
            assert rule.sources, rule
            ports = [str(rule.from_port) if rule.from_port == rule.to_port else f"{rule.from_port}-{rule.to_port}"]
            gcp.compute.Firewall(
                f"{name}-in-{rule.name}",
                network=self.network_id,
                direction="INGRESS",
                priority=1000,
                allows=[gcp.compute.FirewallAllowArgs(protocol=rule.protocol, ports=ports)],
                source_ranges=list(rule.sources),
                target_tags=[self.node_tag],
                description=f"{described}: {rule.description}",
                opts=child,
            )
        self.register_outputs({"network": self.network_id})


def shared(settings: StackSettings) -> GcpNetwork:
    """The stack's network and firewall; with mesh.networkStack the network stack's network (read
    through a StackReference: every region's entry names the same one) and its subnetworks."""
    networks = network_outputs(settings)
    if networks is None:
        net = GcpSharedNetwork(settings)
        return GcpNetwork(network_id=net.network_id, node_tag=net.node_tag)
    stack = str(settings.network_stack)
    first = settings.regions[0].region
    network_id = networks.apply(lambda n: str(network_entry(n, first, pool_name(settings, first), stack)["networkId"]))
    net = GcpSharedNetwork(settings, network_id=network_id)
    return GcpNetwork(network_id=net.network_id, node_tag=net.node_tag, networks=networks, stack=stack)


class GcpMediaRegion(pulumi.ComponentResource):
    """One GCP region's media nodes: its subnetwork of the shared network, addresses, instances."""

    def __init__(
        self,
        name: str,
        settings: StackSettings,
        spec: RegionSpec,
        user_data: pulumi.Output[str],
        opts: pulumi.ResourceOptions | None = None,
        shared: Any = None,
    ) -> None:
        super().__init__("meshctl:gcp:MediaRegion", name, None, opts)
        assert isinstance(shared, GcpNetwork), "the GCP regions need the stack's shared network"
        region = spec.region.split(":", 1)[1]
        labels = {k: label_safe(v) for k, v in tags(settings, spec.region).items()}
        # the region's provider carries the required labels as default_labels: every resource below
        # that takes labels gets them (effective_labels) without threading them by hand
        provider = gcp.Provider(
            f"{name}-gcp",
            project=pulumi.Config("gcp").get("project"),
            default_labels=labels,
            opts=pulumi.ResourceOptions(parent=self),
        )
        child = pulumi.ResourceOptions(parent=self, provider=provider)
        described = f"meshctl {settings.name}/{settings.environment} {spec.region}"
        region_zones = zones(region)
        pool = pool_name(settings, spec.region)
        subnet_id: pulumi.Input[str]
        if shared.networks is not None:  # the network stack's subnetwork of this region
            stack = str(shared.stack)
            entry = shared.networks.apply(lambda n: network_entry(n, spec.region, pool, stack))
            subnet_id = entry.apply(lambda e: str(e["subnetworkId"]))
        else:
            subnet_id = subnetwork(name, region, shared.network_id, described, child).id
        machine_type = spec.instance_type or settings.instance_type
        image = spec.image or settings.image or IMAGE_FAMILY.format(arch=architecture(machine_type))
        low, high = pool_bounds(spec)
        on_demand, spot = capacity_split(spec)
        self.pools = []
        for kind, size in (("on-demand", on_demand), ("spot", spot)):
            if kind == "spot" and spec.spot_percent == 0:
                continue
            is_spot = kind == "spot"
            template = gcp.compute.InstanceTemplate(
                f"{name}-{kind}-tmpl",
                name_prefix=f"{pool[:MAX_TEMPLATE_PREFIX]}-",  # a new template per change (they are immutable)
                machine_type=machine_type,
                disks=[gcp.compute.InstanceTemplateDiskArgs(source_image=image, boot=True, auto_delete=True)],
                network_interfaces=[
                    gcp.compute.InstanceTemplateNetworkInterfaceArgs(
                        subnetwork=subnet_id,
                        access_configs=[
                            gcp.compute.InstanceTemplateNetworkInterfaceAccessConfigArgs(network_tier="PREMIUM")
                        ],
                    )
                ],
                metadata={"user-data": user_data, "block-project-ssh-keys": "true"},
                tags=[shared.node_tag],
                shielded_instance_config=gcp.compute.InstanceTemplateShieldedInstanceConfigArgs(
                    enable_secure_boot=True
                ),
                scheduling=gcp.compute.InstanceTemplateSchedulingArgs(
                    provisioning_model="SPOT",
                    preemptible=True,
                    automatic_restart=False,
                    instance_termination_action="DELETE",
                )
                if is_spot
                else None,
                region=region,
                opts=child,
            )
            # stateful external IPs keep each node's address through autohealing and updates; GCP does
            # not autoscale a stateful group, so then the pool is fixed (check() refuses min != max)
            stateful = settings.static_addresses and not is_spot
            zone_count = len(region_zones)
            mig = gcp.compute.RegionInstanceGroupManager(
                f"{name}-{kind}-mig",
                name=f"{pool}-{'od' if not is_spot else 'spot'}"[:63],
                base_instance_name=pool,
                region=region,
                distribution_policy_zones=region_zones,
                distribution_policy_target_shape="EVEN",
                versions=[
                    gcp.compute.RegionInstanceGroupManagerVersionArgs(
                        name=kind, instance_template=template.self_link_unique
                    )
                ],
                target_size=size,
                # rolling replacement when the template changes; regional fixed values are 0 or >= zones
                update_policy=gcp.compute.RegionInstanceGroupManagerUpdatePolicyArgs(
                    type="PROACTIVE",
                    minimal_action="REPLACE",
                    replacement_method="RECREATE" if stateful else "SUBSTITUTE",
                    max_surge_fixed=0 if stateful else zone_count,
                    max_unavailable_fixed=zone_count if stateful else 0,
                    instance_redistribution_type="NONE" if stateful else "PROACTIVE",
                ),
                stateful_external_ips=[
                    gcp.compute.RegionInstanceGroupManagerStatefulExternalIpArgs(
                        interface_name="nic0", delete_rule="ON_PERMANENT_INSTANCE_DELETION"
                    )
                ]
                if stateful
                else None,
                wait_for_instances=False,
                opts=child,
            )
            if not stateful and (low, high) != (spec.nodes, spec.nodes):
                share_low, share_high = (capacity_split(spec, n)[1 if is_spot else 0] for n in (low, high))
                gcp.compute.RegionAutoscaler(
                    f"{name}-{kind}-autoscaler",
                    region=region,
                    target=mig.id,
                    autoscaling_policy=gcp.compute.RegionAutoscalerAutoscalingPolicyArgs(
                        min_replicas=share_low,
                        max_replicas=max(share_high, 1),
                        cooldown_period=300,
                        cpu_utilization=gcp.compute.RegionAutoscalerAutoscalingPolicyCpuUtilizationArgs(target=0.6),
                    ),
                    opts=child,
                )
            self.pools.append(
                {
                    "region": spec.region,
                    "pool": mig.name,
                    "kind": kind,
                    "minNodes": low,
                    "maxNodes": high,
                    "nodes": size,
                    "spotPercent": spec.spot_percent,
                    "zones": region_zones,
                }
            )
        self.register_outputs({"pools": self.pools})


def check(settings: StackSettings) -> None:
    """GCP does not autoscale a group with stateful IPs (staticAddresses): its size is then fixed."""
    for i, spec in enumerate(settings.regions):
        if spec.zone is not None:
            raise StackConfigError(
                f"{CONFIG_NAMESPACE}:mesh.regions[{i}].zone: a node pool spreads over the region's zones; remove it"
            )
        if not settings.static_addresses:
            continue
        if pool_bounds(spec) != (spec.nodes, spec.nodes):
            raise StackConfigError(
                f"{CONFIG_NAMESPACE}:mesh.regions[{i}].maxNodes: GCP cannot autoscale a pool whose nodes keep "
                "their addresses (stateful IPs): leave minNodes/maxNodes unset, or set mesh.staticAddresses: false"
            )


class GcpGlobalNetwork(pulumi.ComponentResource):
    """In a network stack: the mesh's global network, named as a node stack of the same mesh name and
    environment names its own (no firewall: its rules follow the node stack's ports and admins)."""

    def __init__(self, net: NetworkSettings, opts: pulumi.ResourceOptions | None = None) -> None:
        name = f"{net.name}-{net.environment}"
        super().__init__("meshctl:gcp:Network", name, None, opts)
        self.network = global_network(name, f"meshctl {net.name}/{net.environment}", self)
        self.register_outputs({"network": self.network.id})


class GcpNetworkRegion(pulumi.ComponentResource):
    """In a network stack: one region's subnetwork of the global network, named and labelled as the
    node stack's."""

    def __init__(
        self,
        net: NetworkSettings,
        spec: NetworkRegion,
        network: gcp.compute.Network,
        project: str | None,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        region = spec.region.split(":", 1)[1]
        name = f"gcp-{region}"
        super().__init__("meshctl:gcp:NetworkRegion", name, None, opts)
        labels = {k: label_safe(v) for k, v in tags(net, spec.region).items()}
        provider = gcp.Provider(
            f"{name}-gcp", project=project, default_labels=labels, opts=pulumi.ResourceOptions(parent=self)
        )
        described = f"meshctl {net.name}/{net.environment} {spec.region}"
        subnet = subnetwork(name, region, network.id, described, pulumi.ResourceOptions(parent=self, provider=provider))
        self.outputs = {
            "networkId": network.id,
            "subnetworkId": subnet.id,
            "region": region,
            "project": project,
            "pool": pool_name(net, spec.region),
        }
        self.register_outputs(self.outputs)


def network(net: NetworkSettings) -> dict[str, Any]:
    """A network stack's `networks` output: region id -> networkId (the one global network),
    subnetworkId, region, project, pool (the node stacks' pool name: mesh name and environment).

    No address pool: a node keeps its address through the group's stateful external IPs, which
    belong to the group (stacks/README.md), so `addresses` is refused here."""
    for i, spec in enumerate(net.regions):
        if spec.addresses:
            raise StackConfigError(
                f"meshctl-shared:network.regions[{i}].addresses: GCP has no address pool to share (a node "
                "keeps its address as a stateful external IP of its group); leave it unset"
            )
    project = pulumi.Config("gcp").get("project")
    kept = pulumi.ResourceOptions(protect=True)  # every resource of a network stack (children inherit it)
    global_net = GcpGlobalNetwork(net, kept)
    return {spec.region: GcpNetworkRegion(net, spec, global_net.network, project, kept).outputs for spec in net.regions}


PROVIDER = CloudProvider(
    name="gcp", regions=REGIONS, component=GcpMediaRegion, check=check, shared=shared, network=network
)
