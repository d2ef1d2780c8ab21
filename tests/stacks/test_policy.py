"""Each policy of the pack, as a plain function: it fires when its rule is broken, not otherwise."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "stacks" / "policy"))

import rules

SG_RULE = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
TAGS = {"mesh": "m", "mesh-region": "aws:us-east-1", "environment": "dev"}


def test_no_ssh_or_rdp_from_the_internet() -> None:
    assert rules.no_admin_ports_from_internet(
        SG_RULE, {"ipProtocol": "tcp", "fromPort": 22, "toPort": 22, "cidrIpv4": "0.0.0.0/0"}
    )
    assert rules.no_admin_ports_from_internet(SG_RULE, {"ipProtocol": "-1", "cidrIpv6": "::/0"})
    assert rules.no_admin_ports_from_internet(
        "gcp:compute/firewall:Firewall",
        {"sourceRanges": ["0.0.0.0/0"], "allows": [{"protocol": "tcp", "ports": ["3000-4000"]}]},
    )
    assert rules.no_admin_ports_from_internet(
        "azure-native:network:NetworkSecurityGroup",
        {
            "securityRules": [
                {
                    "direction": "Inbound",
                    "access": "Allow",
                    "protocol": "Tcp",
                    "sourceAddressPrefix": "*",
                    "destinationPortRange": "22",
                }
            ]
        },
    )
    assert not rules.no_admin_ports_from_internet(
        SG_RULE, {"ipProtocol": "tcp", "fromPort": 22, "toPort": 22, "cidrIpv4": "198.51.100.0/24"}
    )
    assert not rules.no_admin_ports_from_internet(
        SG_RULE, {"ipProtocol": "udp", "fromPort": 51820, "toPort": 51820, "cidrIpv4": "0.0.0.0/0"}
    )


def test_gcp_firewall_without_sources_is_open_to_the_world() -> None:
    fw = "gcp:compute/firewall:Firewall"
    ssh = {"direction": "INGRESS", "allows": [{"protocol": "tcp", "ports": ["22"]}], "targetTags": ["n"]}
    for empty in ({**ssh, "sourceRanges": []}, ssh):  # empty, or missing
        assert rules.gcp_firewall_has_sources(fw, empty)
        assert any("SSH" in m for m in rules.no_admin_ports_from_internet(fw, empty))
    assert not rules.gcp_firewall_has_sources(fw, {**ssh, "sourceRanges": ["2001:db8::/32"]})
    assert not rules.gcp_firewall_has_sources(fw, {**ssh, "sourceTags": ["bastion"]})
    assert not rules.no_admin_ports_from_internet(fw, {**ssh, "sourceRanges": ["198.51.100.0/24"]})
    assert not rules.gcp_firewall_has_sources(fw, {**ssh, "direction": "EGRESS"})


def test_wireguard_must_be_open() -> None:
    sg = ("aws:ec2/securityGroup:SecurityGroup", {"tags": TAGS})
    closed = [(SG_RULE, {"ipProtocol": "tcp", "fromPort": 443, "toPort": 443, "cidrIpv4": "0.0.0.0/0"})]
    assert rules.wireguard_port_open(*sg, closed)
    opened = [*closed, (SG_RULE, {"ipProtocol": "udp", "fromPort": 51820, "toPort": 51820, "cidrIpv4": "0.0.0.0/0"})]
    assert not rules.wireguard_port_open(*sg, opened)
    nsg = {
        "securityRules": [
            {
                "direction": "Inbound",
                "access": "Allow",
                "protocol": "Udp",
                "sourceAddressPrefixes": ["0.0.0.0/0"],
                "destinationPortRange": "51820",
            }
        ]
    }
    assert not rules.wireguard_port_open("azure-native:network:NetworkSecurityGroup", nsg, [])
    nsg["securityRules"][0]["access"] = "Deny"
    assert rules.wireguard_port_open("azure-native:network:NetworkSecurityGroup", nsg, [])
    # a GCP node stack on a network stack has firewall rules but no network: checked from the rules
    fw = "gcp:compute/firewall:Firewall"
    media = {"direction": "INGRESS", "sourceRanges": ["0.0.0.0/0"], "allows": [{"protocol": "udp", "ports": ["10000"]}]}
    assert rules.wireguard_port_open(fw, media, [(fw, media)])
    wireguard = {**media, "allows": [{"protocol": "udp", "ports": ["51820"]}]}
    assert not rules.wireguard_port_open(fw, media, [(fw, media), (fw, wireguard)])


def test_required_tags() -> None:
    assert not rules.required_tags("aws:ec2/instance:Instance", {"tags": TAGS})
    missing = rules.required_tags("aws:ec2/instance:Instance", {"tags": {"mesh": "m"}})
    assert missing and "mesh-region" in missing[0] and "environment" in missing[0]
    assert rules.required_tags("gcp:compute/instance:Instance", {"labels": {}})
    assert not rules.required_tags("aws:ec2/routeTableAssociation:RouteTableAssociation", {})


def test_instance_types_from_allow_list() -> None:
    assert not rules.allowed_instance_type("aws:ec2/instance:Instance", {"instanceType": "c6i.large"})
    assert rules.allowed_instance_type("aws:ec2/instance:Instance", {"instanceType": "p5.48xlarge"})
    assert rules.allowed_instance_type("gcp:compute/instance:Instance", {"machineType": "a3-highgpu-8g"})
    assert not rules.allowed_instance_type(
        "azure-native:compute:VirtualMachine", {"hardwareProfile": {"vmSize": "Standard_F4s_v2"}}
    )


def test_node_pools_span_two_zones() -> None:
    asg = "aws:autoscaling/group:Group"
    assert rules.pool_spans_zones(asg, {"vpcZoneIdentifiers": ["subnet-a"]})
    assert not rules.pool_spans_zones(asg, {"vpcZoneIdentifiers": ["subnet-a", "subnet-b"]})
    mig = "gcp:compute/regionInstanceGroupManager:RegionInstanceGroupManager"
    assert rules.pool_spans_zones(mig, {"distributionPolicyZones": ["us-east1-b", "us-east1-b"]})
    assert rules.pool_spans_zones("azure-native:compute:VirtualMachineScaleSet", {})
    assert not rules.pool_spans_zones("azure-native:compute:VirtualMachineScaleSet", {"zones": ["1", "2", "3"]})


def test_node_role_policies_change_nothing_unscoped() -> None:
    import json

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "stacks"))
    from meshstack.aws import claim_policy

    typ = "aws:iam/rolePolicy:RolePolicy"
    ours = claim_policy("eu-west-1", "media-mesh-dev-eu-west-1")
    assert rules.role_policy_scoped(typ, {"policy": json.dumps(ours)}) == []
    wide = {"Statement": [{"Sid": "S", "Effect": "Allow", "Action": "ec2:AssociateAddress", "Resource": "*"}]}
    assert rules.role_policy_scoped(typ, {"policy": json.dumps(wide)})
    unconditioned = {
        "Statement": [
            {"Effect": "Allow", "Action": ["ec2:AssociateAddress"], "Resource": "arn:aws:ec2:eu-west-1:*:elastic-ip/*"}
        ]
    }
    assert rules.role_policy_scoped(typ, {"policy": json.dumps(unconditioned)})
    everything = {"Statement": {"Effect": "Allow", "Action": "ec2:*", "Resource": "arn:aws:ec2:*", "Condition": {}}}
    assert "wildcard action 'ec2:*'" in rules.role_policy_scoped(typ, {"policy": json.dumps(everything)})[0]
    denied = {"Statement": [{"Effect": "Deny", "Action": "ec2:*", "Resource": "*"}]}
    assert rules.role_policy_scoped(typ, {"policy": json.dumps(denied)}) == []


def test_autoscaling_group_tags_count_only_when_propagated() -> None:
    asg = "aws:autoscaling/group:Group"
    tags = [{"key": k, "value": v, "propagateAtLaunch": True} for k, v in TAGS.items()]
    assert not rules.required_tags(asg, {"tags": tags})
    assert rules.required_tags(asg, {"tags": [{**t, "propagateAtLaunch": False} for t in tags]})


def test_pack_policies_report_through_pulumi_policy_args() -> None:
    from pack import POLICIES
    from pulumi_policy import ResourceValidationArgs

    by_name = {p.name: p for p in POLICIES}
    assert set(by_name) == {
        "no-admin-ports-from-internet",
        "gcp-firewall-explicit-sources",
        "required-tags",
        "allowed-instance-types",
        "wireguard-port-open",
        "pool-spans-zones",
        "role-policy-scoped",
    }
    seen: list[str] = []
    args = ResourceValidationArgs(
        resource_type=SG_RULE,
        props={"ipProtocol": "tcp", "fromPort": 0, "toPort": 65535, "cidrIpv4": "0.0.0.0/0"},
        urn="urn:pulumi:dev::p::t::n",
        name="n",
        opts=None,  # type: ignore[arg-type]
        provider=None,
    )
    by_name["no-admin-ports-from-internet"].validate(args, lambda msg, urn: seen.append(msg))
    assert any("SSH" in m for m in seen) and any("RDP" in m for m in seen)
