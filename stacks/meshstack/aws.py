"""AWS: a VPC, subnets in two or more zones, a security group (WireGuard, media, SSH from admins
only), an autoscaling group of nodes on Canonical's current Ubuntu 24.04 image for their
architecture, and (staticAddresses) a protected pool of Elastic IPs with an instance role that
lets a booting node claim a free one of its own pool (`claim_address.py`, `claim_policy`)."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import pulumi
import pulumi_aws as aws

from meshstack.base import CloudProvider, from_network_stack, network_outputs
from meshstack.model import (
    CONFIG_NAMESPACE,
    NetworkRegion,
    NetworkSettings,
    RegionSpec,
    StackConfigError,
    StackSettings,
    firewall_rules,
    pool_bounds,
    pool_name,
    tags,
)

# Canonical's public SSM parameter: the current Ubuntu 24.04 LTS (Python 3.12) AMI id, per region
UBUNTU_AMI_PARAMETER = "/aws/service/canonical/ubuntu/server/24.04/stable/current/{arch}/hvm/ebs-gp3/ami-id"
POOL_TAG = "meshctl-pool"  # on each Elastic IP of a region's address pool, and on its nodes: the pool's name
USER_DATA_LIMIT = 16_384  # EC2 takes at most 16 KB of user data, before base64
ROLE_PREFIX = 37  # IAM role names: 64 characters, of which Pulumi's name_prefix suffix takes 26 (and a '-')
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


def claim_policy(region: str, pool: str) -> dict[str, Any]:
    """What a node of `pool` may do to claim its address: find the pool's addresses (DescribeAddresses
    has no resource-level permissions: `*`, this region only) and associate one of them (tagged
    `meshctl-pool=<pool>`) to an instance and network interface of the same pool (tagged so by the
    launch template). AssociateAddress authorizes the address, the instance and the network
    interface (Service Authorization Reference); each must carry the pool's tag."""
    in_pool = {"StringEquals": {f"aws:ResourceTag/{POOL_TAG}": pool}}
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "FindPoolAddresses",
                "Effect": "Allow",
                "Action": "ec2:DescribeAddresses",
                "Resource": "*",
                "Condition": {"StringEquals": {"aws:RequestedRegion": region}},
            },
            {
                "Sid": "ClaimPoolAddress",
                "Effect": "Allow",
                "Action": "ec2:AssociateAddress",
                "Resource": f"arn:aws:ec2:{region}:*:elastic-ip/*",
                "Condition": in_pool,
            },
            {
                "Sid": "OntoPoolNode",
                "Effect": "Allow",
                "Action": "ec2:AssociateAddress",
                "Resource": [f"arn:aws:ec2:{region}:*:instance/*", f"arn:aws:ec2:{region}:*:network-interface/*"],
                "Condition": in_pool,
            },
        ],
    }


EC2_TRUST = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}],
}


def _user_data(text: str) -> str:
    if len(text.encode()) > USER_DATA_LIMIT:
        raise ValueError(f"cloud-init is {len(text.encode())} bytes; EC2 takes at most {USER_DATA_LIMIT}")
    return base64.b64encode(text.encode()).decode()


def check(settings: StackSettings) -> None:
    if settings.image is not None:
        raise StackConfigError(
            f"{CONFIG_NAMESPACE}:mesh.image: AMI ids are regional; leave it unset (the current Ubuntu 24.04 "
            "AMI is looked up per region) or set regions[i].image"
        )


@dataclass(frozen=True)
class RegionNetwork:
    """What a region's node pool runs in: made by its node stack, or read from a network stack."""

    vpc_id: pulumi.Input[str]
    subnet_ids: pulumi.Input[Sequence[pulumi.Input[str]]]
    addresses: pulumi.Input[Sequence[pulumi.Input[str]]]  # the pool's Elastic IPs (public IPs)


def region_network(
    name: str, region_id: str, pool: str, addresses: int, parent: pulumi.Resource, provider: aws.Provider
) -> RegionNetwork:
    """A VPC with an internet gateway and a public subnet in each of 2-3 AZs, and a pool of `addresses`
    Elastic IPs tagged `meshctl-pool=<pool>` (so a booting node can claim a free one). The VPC and the
    addresses are protected (`pulumi state unprotect` to delete them)."""
    region = region_id.split(":", 1)[1]
    child = pulumi.ResourceOptions(parent=parent, provider=provider)
    kept = pulumi.ResourceOptions(parent=parent, provider=provider, protect=True)
    vpc = aws.ec2.Vpc(
        f"{name}-vpc",
        cidr_block="10.64.0.0/16",
        enable_dns_hostnames=True,
        region=region,
        tags={"Name": f"{name}-vpc"},
        opts=kept,
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
    for z, zone in enumerate(zones(region)):
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
    eips = [
        aws.ec2.Eip(
            f"{name}-eip-{i}", domain="vpc", region=region, tags={"Name": f"{pool}-{i}", POOL_TAG: pool}, opts=kept
        )
        for i in range(addresses)
    ]
    return RegionNetwork(vpc.id, [s.id for s in subnets], [e.public_ip for e in eips])


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
        pool = pool_name(settings, spec.region)
        low, high = pool_bounds(spec)
        wanted = high if settings.static_addresses else 0  # one address per node the pool may grow to
        if shared is not None:  # the environment's network stack owns the network and the address pool
            stack = settings.network_stack
            entry = shared.apply(lambda n: from_network_stack(n, spec.region, pool, str(stack), wanted))
            network = RegionNetwork(
                vpc_id=entry.apply(lambda e: str(e["vpcId"])),
                subnet_ids=entry.apply(lambda e: list(e["subnetIds"])),
                addresses=entry.apply(lambda e: list(e["addresses"])),
            )
        else:
            network = region_network(name, spec.region, pool, wanted, self, provider)
        sg = aws.ec2.SecurityGroup(
            f"{name}-sg", vpc_id=network.vpc_id, description="meshctl media node", region=region, opts=child
        )
        for rule in firewall_rules(settings):
            for n, source in enumerate(rule.sources):
                aws.vpc.SecurityGroupIngressRule(
                    f"{name}-in-{rule.name}-{n}",
                    security_group_id=sg.id,
                    ip_protocol=rule.protocol,
                    from_port=rule.from_port,
                    to_port=rule.to_port,
                    description=rule.description,
                    cidr_ipv4=source if rule.family == 4 else None,
                    cidr_ipv6=source if rule.family == 6 else None,
                    region=region,
                    opts=child,
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
        profile = None
        if settings.static_addresses:
            # the nodes' role: claim a free address of this pool at boot, nothing else (IAM is global:
            # no region; the provider still gives the tags)
            role = aws.iam.Role(
                f"{name}-node-role",
                name_prefix=f"{pool[:ROLE_PREFIX]}-",
                description=f"meshctl {pool}: a booting node claims a free Elastic IP of its pool",
                assume_role_policy=json.dumps(EC2_TRUST),
                opts=child,
            )
            aws.iam.RolePolicy(
                f"{name}-claim-address",
                name="meshctl-claim-address",
                role=role.id,
                policy=json.dumps(claim_policy(region, pool)),
                opts=child,
            )
            profile = aws.iam.InstanceProfile(
                f"{name}-node-profile", name_prefix=f"{pool[:ROLE_PREFIX]}-", role=role.id, opts=child
            )
        # the pool's tag on what it launches: the role's policy lets a node associate only onto those
        node_tags = {**t, "Name": pool, **({POOL_TAG: pool} if settings.static_addresses else {})}
        template = aws.ec2.LaunchTemplate(
            f"{name}-lt",
            name_prefix=f"{pool}-",
            image_id=ami,
            instance_type=instance_type,
            user_data=user_data.apply(_user_data),  # stays a secret
            iam_instance_profile=aws.ec2.LaunchTemplateIamInstanceProfileArgs(arn=profile.arn) if profile else None,
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
                aws.ec2.LaunchTemplateTagSpecificationArgs(resource_type=kind, tags=node_tags)
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
            vpc_zone_identifiers=network.subnet_ids,  # the pool spans every subnet's AZ
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
        self.pools = [
            {
                "region": spec.region,
                "pool": group.name,
                "minNodes": low,
                "maxNodes": high,
                "nodes": spec.nodes,
                "spotPercent": spec.spot_percent,
                "addresses": network.addresses,
            }
        ]
        self.register_outputs({"pools": self.pools})


class AwsNetworkRegion(pulumi.ComponentResource):
    """In a network stack: one region's network and address pool, named and tagged as the node
    stack of the same mesh name and environment would name its own."""

    def __init__(self, net: NetworkSettings, spec: NetworkRegion, opts: pulumi.ResourceOptions | None = None) -> None:
        region = spec.region.split(":", 1)[1]
        name = f"aws-{region}"
        super().__init__("meshctl:aws:NetworkRegion", name, None, opts)
        provider = aws.Provider(
            f"{name}-aws",
            region=region,
            default_tags=aws.ProviderDefaultTagsArgs(tags=tags(net, spec.region)),
            opts=pulumi.ResourceOptions(parent=self),
        )
        pool = pool_name(net, spec.region)
        made = region_network(name, spec.region, pool, spec.addresses, self, provider)
        self.outputs = {"vpcId": made.vpc_id, "subnetIds": made.subnet_ids, "pool": pool, "addresses": made.addresses}
        self.register_outputs(self.outputs)


def network(net: NetworkSettings) -> dict[str, Any]:
    """A network stack's `networks` output: region id -> vpcId, subnetIds, pool, addresses."""
    kept = pulumi.ResourceOptions(protect=True)  # every resource of a network stack (children inherit it)
    return {spec.region: AwsNetworkRegion(net, spec, kept).outputs for spec in net.regions}


PROVIDER = CloudProvider(
    name="aws",
    regions=REGIONS,
    component=AwsMediaRegion,
    check=check,
    shared=network_outputs,  # the network stack's networks and pools (mesh.networkStack), else None
    claims_addresses=True,
    network=network,
)
