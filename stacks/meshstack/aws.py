"""AWS: a VPC, subnets in two or more zones, a security group (WireGuard, media, SSH from admins
only), instances on Canonical's current Ubuntu 24.04 image for their architecture, an Elastic IP each."""

from __future__ import annotations

import base64
import re
from typing import Any, Literal

import pulumi
import pulumi_aws as aws

from meshstack.base import CloudProvider
from meshstack.model import (
    CONFIG_NAMESPACE,
    RegionSpec,
    StackConfigError,
    StackSettings,
    firewall_rules,
    node_name,
    pool_bounds,
    pool_name,
    tags,
)

# Canonical's public SSM parameter: the current Ubuntu 24.04 LTS (Python 3.12) AMI id, per region
UBUNTU_AMI_PARAMETER = "/aws/service/canonical/ubuntu/server/24.04/stable/current/{arch}/hvm/ebs-gp3/ami-id"
POOL_TAG = "meshctl-pool"  # on each Elastic IP of a region's address pool: the pool's name
MIN_ZONES = 2
MAX_ZONES = 3

REGIONS = frozenset(
    {
        "us-east-1",
        "us-east-2",
        "us-west-1",
        "us-west-2",
        "ca-central-1",
        "sa-east-1",
        "eu-west-1",
        "eu-west-2",
        "eu-west-3",
        "eu-central-1",
        "eu-central-2",
        "eu-north-1",
        "eu-south-1",
        "eu-south-2",
        "me-south-1",
        "me-central-1",
        "il-central-1",
        "af-south-1",
        "ap-east-1",
        "ap-south-1",
        "ap-south-2",
        "ap-northeast-1",
        "ap-northeast-2",
        "ap-northeast-3",
        "ap-southeast-1",
        "ap-southeast-2",
        "ap-southeast-3",
        "ap-southeast-4",
    }
)


def architecture(instance_type: str) -> Literal["amd64", "arm64"]:
    """Graviton families (a1, t4g, c7g, c7gn, m6gd, x2gd, im4gn, is4gen, hpc7g, ...) are arm64."""
    family = instance_type.split(".", 1)[0]
    return "arm64" if family == "a1" or re.match(r"^[a-z]+\d+g", family) else "amd64"


def ami_for(region: str, instance_type: str) -> pulumi.Output[str]:
    """The region's current Ubuntu 24.04 AMI for the instance type's architecture (no fallback)."""
    name = UBUNTU_AMI_PARAMETER.format(arch=architecture(instance_type))
    return aws.ssm.get_parameter_output(name=name, region=region).value


def zones(region: str) -> list[str]:
    """Up to three available AZs of the region (no opt-in Local Zones); at least two or an error."""
    found = aws.get_availability_zones(
        region=region,
        state="available",
        filters=[aws.GetAvailabilityZonesFilterArgs(name="opt-in-status", values=["opt-in-not-required"])],
    )
    names = sorted(found.names)
    if len(names) < MIN_ZONES:
        raise StackConfigError(f"{CONFIG_NAMESPACE}:mesh.regions: aws:{region} has fewer than {MIN_ZONES} zones")
    return names[:MAX_ZONES]


def check(settings: StackSettings) -> None:
    if settings.image is not None:
        raise StackConfigError(
            f"{CONFIG_NAMESPACE}:mesh.image: AMI ids are regional; leave it unset (the current Ubuntu 24.04 "
            "AMI is looked up per region) or set regions[i].image"
        )


class AwsMediaRegion(pulumi.ComponentResource):
    """One AWS region's media nodes with their network and firewall."""

    def __init__(
        self,
        name: str,
        settings: StackSettings,
        spec: RegionSpec,
        user_data: pulumi.Output[str],
        opts: pulumi.ResourceOptions | None = None,
        shared: Any = None,
    ) -> None:
        super().__init__("meshctl:aws:MediaRegion", name, None, opts)
        region = spec.region.split(":", 1)[1]
        t = tags(settings, spec.region)
        # the region's provider carries the required tags as default_tags: every resource below that
        # takes tags gets them (tags_all) without threading them by hand. Two exceptions stay explicit:
        # the launch template's tag_specifications (the instances, volumes, NICs it launches) and the
        # autoscaling group's own tag list (propagate_at_launch): default_tags reach neither.
        provider = aws.Provider(
            f"{name}-aws",
            region=region,
            default_tags=aws.ProviderDefaultTagsArgs(tags=t),
            opts=pulumi.ResourceOptions(parent=self),
        )
        child = pulumi.ResourceOptions(parent=self, provider=provider)
        azs = zones(region)
        vpc = aws.ec2.Vpc(
            f"{name}-vpc",
            cidr_block="10.64.0.0/16",
            enable_dns_hostnames=True,
            region=region,
            tags={"Name": f"{name}-vpc"},
            opts=pulumi.ResourceOptions(
                parent=self, provider=provider, protect=True
            ),  # `pulumi state unprotect` to delete it
        )
        igw = aws.ec2.InternetGateway(f"{name}-igw", vpc_id=vpc.id, region=region, opts=child)
        rt = aws.ec2.RouteTable(
            f"{name}-rt",
            vpc_id=vpc.id,
            region=region,
            routes=[aws.ec2.RouteTableRouteArgs(cidr_block="0.0.0.0/0", gateway_id=igw.id)],
            opts=child,
        )
        subnets = []
        for z, zone in enumerate(azs):
            subnet = aws.ec2.Subnet(
                f"{name}-subnet-{zone}",
                vpc_id=vpc.id,
                cidr_block=f"10.64.{z + 1}.0/24",
                availability_zone=zone,
                map_public_ip_on_launch=True,
                region=region,
                tags={"Name": f"{name}-{zone}"},
                opts=child,
            )
            aws.ec2.RouteTableAssociation(
                f"{name}-rta-{zone}", subnet_id=subnet.id, route_table_id=rt.id, region=region, opts=child
            )
            subnets.append(subnet)
        sg = aws.ec2.SecurityGroup(
            f"{name}-sg", vpc_id=vpc.id, description="meshctl media node", region=region, opts=child
        )
        for rule in firewall_rules(settings):
            for n, source in enumerate(rule.sources):
                family = {"cidr_ipv6": source} if rule.family == 6 else {"cidr_ipv4": source}
                aws.vpc.SecurityGroupIngressRule(
                    f"{name}-in-{rule.name}-{n}",
                    security_group_id=sg.id,
                    ip_protocol=rule.protocol,
                    from_port=rule.from_port,
                    to_port=rule.to_port,
                    description=rule.description,
                    region=region,
                    opts=child,
                    **family,
                )
        aws.vpc.SecurityGroupEgressRule(
            f"{name}-out-v4",
            security_group_id=sg.id,
            ip_protocol="-1",
            cidr_ipv4="0.0.0.0/0",
            region=region,
            opts=child,
        )
        instance_type = spec.instance_type or settings.instance_type
        ami: pulumi.Input[str] = spec.image or ami_for(region, instance_type)
        pool = pool_name(settings, spec.region)
        low, high = pool_bounds(spec)
        template = aws.ec2.LaunchTemplate(
            f"{name}-lt",
            name_prefix=f"{pool}-",
            image_id=ami,
            instance_type=instance_type,
            user_data=user_data.apply(lambda text: base64.b64encode(text.encode()).decode()),  # stays a secret
            network_interfaces=[
                aws.ec2.LaunchTemplateNetworkInterfaceArgs(
                    device_index=0,
                    associate_public_ip_address="true",  # cloud-init needs the internet before anything else
                    delete_on_termination="true",
                    security_groups=[sg.id],
                )
            ],
            metadata_options=aws.ec2.LaunchTemplateMetadataOptionsArgs(
                http_endpoint="enabled", http_tokens="required", http_put_response_hop_limit=1
            ),
            tag_specifications=[
                aws.ec2.LaunchTemplateTagSpecificationArgs(resource_type=kind, tags={**t, "Name": pool})
                for kind in ("instance", "volume", "network-interface")
            ],
            update_default_version=True,
            region=region,
            opts=child,
        )
        on_demand_pct = 100 - spec.spot_percent
        group = aws.autoscaling.Group(
            f"{name}-asg",
            name_prefix=f"{pool}-",
            min_size=low,
            max_size=high,
            desired_capacity=spec.nodes,
            vpc_zone_identifiers=[s.id for s in subnets],  # the pool spans every subnet's AZ
            health_check_type="EC2",
            health_check_grace_period=300,
            capacity_rebalance=spec.spot_percent > 0,  # replace a spot node before its interruption
            mixed_instances_policy=aws.autoscaling.GroupMixedInstancesPolicyArgs(
                launch_template=aws.autoscaling.GroupMixedInstancesPolicyLaunchTemplateArgs(
                    launch_template_specification=aws.autoscaling.GroupMixedInstancesPolicyLaunchTemplateLaunchTemplateSpecificationArgs(
                        launch_template_id=template.id,
                        version=template.latest_version.apply(str),  # a new version starts the instance refresh
                    ),
                    overrides=[
                        aws.autoscaling.GroupMixedInstancesPolicyLaunchTemplateOverrideArgs(instance_type=instance_type)
                    ],
                ),
                instances_distribution=aws.autoscaling.GroupMixedInstancesPolicyInstancesDistributionArgs(
                    on_demand_base_capacity=spec.on_demand_base,
                    on_demand_percentage_above_base_capacity=on_demand_pct,
                    spot_allocation_strategy="price-capacity-optimized",
                ),
            ),
            # rolling replacement when the template changes: launch the new node before the old one goes
            instance_refresh=aws.autoscaling.GroupInstanceRefreshArgs(
                strategy="Rolling",
                preferences=aws.autoscaling.GroupInstanceRefreshPreferencesArgs(
                    min_healthy_percentage=100, max_healthy_percentage=200, instance_warmup="300"
                ),
            ),
            tags=[aws.autoscaling.GroupTagArgs(key=k, value=v, propagate_at_launch=True) for k, v in t.items()],
            region=region,
            opts=child,
        )
        addresses: list[pulumi.Output[str]] = []
        if settings.static_addresses:
            # a pool of Elastic IPs per region, one per node the pool may grow to; protected, and tagged
            # so a booting node can claim a free one (README: "Static addresses")
            for i in range(high):
                eip = aws.ec2.Eip(
                    f"{name}-eip-{i}",
                    domain="vpc",
                    region=region,
                    tags={"Name": node_name(settings, spec.region, i), POOL_TAG: pool},
                    opts=pulumi.ResourceOptions(parent=self, provider=provider, protect=True),
                )
                addresses.append(eip.public_ip)
        self.pools = [
            {
                "region": spec.region,
                "pool": group.name,
                "minNodes": low,
                "maxNodes": high,
                "nodes": spec.nodes,
                "spotPercent": spec.spot_percent,
                "addresses": addresses,
            }
        ]
        self.register_outputs({"pools": self.pools})


PROVIDER = CloudProvider(name="aws", regions=REGIONS, component=AwsMediaRegion, check=check)
