"""AWS: a VPC, a subnet, a security group (WireGuard, media, SSH from admins only) and instances."""

from __future__ import annotations

import pulumi
import pulumi_aws as aws

from meshstack.base import CloudProvider
from meshstack.model import RegionSpec, StackSettings, firewall_rules, node_name, tags

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


class AwsMediaRegion(pulumi.ComponentResource):
    """One AWS region's media nodes with their network and firewall."""

    def __init__(
        self,
        name: str,
        settings: StackSettings,
        spec: RegionSpec,
        user_data: pulumi.Output[str],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("meshctl:aws:MediaRegion", name, None, opts)
        region = spec.region.split(":", 1)[1]
        t = tags(settings, spec.region)
        child = pulumi.ResourceOptions(parent=self)
        vpc = aws.ec2.Vpc(
            f"{name}-vpc",
            cidr_block="10.64.0.0/16",
            enable_dns_hostnames=True,
            region=region,
            tags={**t, "Name": f"{name}-vpc"},
            opts=child,
        )
        subnet = aws.ec2.Subnet(
            f"{name}-subnet",
            vpc_id=vpc.id,
            cidr_block="10.64.1.0/24",
            map_public_ip_on_launch=True,
            region=region,
            tags=t,
            opts=child,
        )
        igw = aws.ec2.InternetGateway(f"{name}-igw", vpc_id=vpc.id, region=region, tags=t, opts=child)
        rt = aws.ec2.RouteTable(
            f"{name}-rt",
            vpc_id=vpc.id,
            region=region,
            tags=t,
            routes=[aws.ec2.RouteTableRouteArgs(cidr_block="0.0.0.0/0", gateway_id=igw.id)],
            opts=child,
        )
        aws.ec2.RouteTableAssociation(
            f"{name}-rta", subnet_id=subnet.id, route_table_id=rt.id, region=region, opts=child
        )
        sg = aws.ec2.SecurityGroup(
            f"{name}-sg", vpc_id=vpc.id, description="meshctl media node", region=region, tags=t, opts=child
        )
        for rule in firewall_rules(settings):
            for n, source in enumerate(rule.sources):
                family = {"cidr_ipv6": source} if ":" in source else {"cidr_ipv4": source}
                aws.vpc.SecurityGroupIngressRule(
                    f"{name}-in-{rule.name}-{n}",
                    security_group_id=sg.id,
                    ip_protocol=rule.protocol,
                    from_port=rule.from_port,
                    to_port=rule.to_port,
                    description=rule.description,
                    region=region,
                    tags=t,
                    opts=child,
                    **family,
                )
        aws.vpc.SecurityGroupEgressRule(
            f"{name}-out-v4",
            security_group_id=sg.id,
            ip_protocol="-1",
            cidr_ipv4="0.0.0.0/0",
            region=region,
            tags=t,
            opts=child,
        )
        self.nodes = []
        for i in range(spec.nodes):
            node = node_name(settings, spec.region, i)
            inst = aws.ec2.Instance(
                node,
                ami=spec.image or settings.image,
                instance_type=spec.instance_type or settings.instance_type,
                subnet_id=subnet.id,
                vpc_security_group_ids=[sg.id],
                associate_public_ip_address=True,
                user_data=user_data,
                user_data_replace_on_change=True,
                region=region,
                metadata_options=aws.ec2.InstanceMetadataOptionsArgs(http_tokens="required"),
                tags={**t, "Name": node},
                opts=child,
            )
            self.nodes.append({"name": node, "region": spec.region, "public_ip": inst.public_ip})
        self.register_outputs({"nodes": self.nodes})


PROVIDER = CloudProvider(name="aws", regions=REGIONS, component=AwsMediaRegion)
