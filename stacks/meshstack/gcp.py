"""GCP: a network, a subnetwork, firewall rules on the node tag, and instances."""

from __future__ import annotations

import pulumi
import pulumi_gcp as gcp

from meshstack.base import CloudProvider
from meshstack.model import RegionSpec, StackSettings, firewall_rules, label_safe, node_name, tags

REGIONS = frozenset(
    {
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
    }
)


class GcpMediaRegion(pulumi.ComponentResource):
    """One GCP region's media nodes with their network and firewall."""

    def __init__(
        self,
        name: str,
        settings: StackSettings,
        spec: RegionSpec,
        user_data: pulumi.Output[str],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("meshctl:gcp:MediaRegion", name, None, opts)
        region = spec.region.split(":", 1)[1]
        labels = {k: label_safe(v) for k, v in tags(settings, spec.region).items()}
        child = pulumi.ResourceOptions(parent=self)
        node_tag = f"{settings.name}-{settings.environment}-node"
        described = f"meshctl {settings.name}/{settings.environment} {spec.region}"
        net = gcp.compute.Network(f"{name}-net", auto_create_subnetworks=False, description=described, opts=child)
        subnet = gcp.compute.Subnetwork(
            f"{name}-subnet",
            network=net.id,
            region=region,
            ip_cidr_range="10.64.1.0/24",
            description=described,
            opts=child,
        )
        for rule in firewall_rules(settings):
            v4 = [s for s in rule.sources if ":" not in s]  # a GCP rule takes one address family
            ports = [str(rule.from_port) if rule.from_port == rule.to_port else f"{rule.from_port}-{rule.to_port}"]
            gcp.compute.Firewall(
                f"{name}-in-{rule.name}",
                network=net.id,
                direction="INGRESS",
                priority=1000,
                allows=[gcp.compute.FirewallAllowArgs(protocol=rule.protocol, ports=ports)],
                source_ranges=v4,
                target_tags=[node_tag],
                description=f"{described}: {rule.description}",
                opts=child,
            )
        self.nodes = []
        zone = spec.zone or f"{region}-a"
        for i in range(spec.nodes):
            node = node_name(settings, spec.region, i)
            address = gcp.compute.Address(
                f"{node}-ip", region=region, address_type="EXTERNAL", network_tier="PREMIUM", labels=labels, opts=child
            )
            gcp.compute.Instance(
                node,
                name=node,
                machine_type=spec.instance_type or settings.instance_type,
                zone=zone,
                boot_disk=gcp.compute.InstanceBootDiskArgs(
                    initialize_params=gcp.compute.InstanceBootDiskInitializeParamsArgs(
                        image=spec.image or settings.image
                    )
                ),
                network_interfaces=[
                    gcp.compute.InstanceNetworkInterfaceArgs(
                        subnetwork=subnet.id,
                        access_configs=[gcp.compute.InstanceNetworkInterfaceAccessConfigArgs(nat_ip=address.address)],
                    )
                ],
                metadata={"user-data": user_data, "block-project-ssh-keys": "true"},
                tags=[node_tag],
                labels=labels,
                shielded_instance_config=gcp.compute.InstanceShieldedInstanceConfigArgs(enable_secure_boot=True),
                opts=child,
            )
            self.nodes.append({"name": node, "region": spec.region, "public_ip": address.address})
        self.register_outputs({"nodes": self.nodes})


PROVIDER = CloudProvider(name="gcp", regions=REGIONS, component=GcpMediaRegion)
