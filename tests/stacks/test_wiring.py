"""The program's resource graph under mocks: what is attached to what, in which region and zone,
which image; and the policy pack run on that graph (not on hand-made dictionaries)."""

from __future__ import annotations

import base64
import copy
import ipaddress
from typing import Any

import pytest
import yaml
from meshstack.model import label_safe
from pulumi_policy import (
    PolicyProviderResource,
    PolicyResource,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)

from tests.stacks.conftest import of_type, plain, provider_defaults, provider_of, run_program, stack_config
from tests.stacks.mockrun import mock_ami

SSM_PATH = "/aws/service/canonical/ubuntu/server/24.04/stable/current/{arch}/hvm/ebs-gp3/ami-id"


def only(cloud: str, program: tuple[str, dict[str, Any]]) -> dict[str, Any]:
    assert program[0] == cloud
    return program[1]


AWS = pytest.mark.parametrize("program", ["aws"], indirect=True)
GCP = pytest.mark.parametrize("program", ["gcp"], indirect=True)
AZURE = pytest.mark.parametrize("program", ["azure"], indirect=True)


def regions_of(cloud: str) -> dict[str, dict[str, Any]]:
    mesh = stack_config(cloud)["meshctl-stacks:mesh"]
    return {
        r["region"].split(":", 1)[1]: {**r, "instanceType": r.get("instanceType", mesh["instanceType"])}
        for r in mesh["regions"]
    }


def by_id(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["id"]: r for r in result["resources"]}


# --- AWS ---------------------------------------------------------------------------------


@AWS
def test_aws_pools_wired_to_their_region_sg_subnets_template_and_ami(program: tuple[str, dict[str, Any]]) -> None:
    result = only("aws", program)
    ids = by_id(result)
    expected = regions_of("aws")
    azs = {c["args"]["region"]: c for c in result["calls"] if c["token"].endswith("getAvailabilityZones")}
    assert set(azs) == set(expected)
    for region, spec in expected.items():
        (asg,) = [r for r in of_type(result, "aws:autoscaling/group:Group") if r["inputs"]["region"] == region]
        a = asg["inputs"]
        assert (a["minSize"], a["maxSize"], a["desiredCapacity"]) == (
            spec.get("minNodes", spec["nodes"]),
            spec.get("maxNodes", spec["nodes"]),
            spec["nodes"],
        )
        subnets = [ids[i] for i in a["vpcZoneIdentifiers"]]
        zones = {s["inputs"]["availabilityZone"] for s in subnets}
        assert len(zones) >= 2 and len(zones) == len(subnets), "the pool spans two or more AZs"
        assert zones <= {f"{region}{z}" for z in "abcdef"} and all(s["inputs"]["region"] == region for s in subnets)
        (sg,) = [r for r in of_type(result, "aws:ec2/securityGroup:SecurityGroup") if r["inputs"]["region"] == region]
        assert all(s["inputs"]["vpcId"] == sg["inputs"]["vpcId"] for s in subnets)
        lt_spec = a["mixedInstancesPolicy"]["launchTemplate"]["launchTemplateSpecification"]
        lt = ids[lt_spec["launchTemplateId"]]
        assert lt_spec["version"] == "1", "the ASG follows the template's latest version (instance refresh)"
        p = lt["inputs"]
        assert p["region"] == region
        (nic,) = p["networkInterfaces"]
        assert nic["securityGroups"] == [sg["id"]], "the security group is on the launch template's interface"
        assert nic["associatePublicIpAddress"] == "true"
        arch = "arm64" if spec["instanceType"].startswith("c7g") else "amd64"
        assert p["imageId"] == mock_ami(SSM_PATH.format(arch=arch), region), "the region's own image, its arch"
        assert p["instanceType"] == spec["instanceType"] and p["metadataOptions"]["httpTokens"] == "required"
        refresh = a["instanceRefresh"]
        assert refresh["strategy"] == "Rolling" and refresh["preferences"]["minHealthyPercentage"] == 100
        dist = a["mixedInstancesPolicy"]["instancesDistribution"]
        spot = spec.get("spotPercent", 0)
        assert dist["onDemandPercentageAboveBaseCapacity"] == 100 - spot
        assert dist["onDemandBaseCapacity"] == spec.get("onDemandBase", 1)
        assert a.get("capacityRebalance") is (spot > 0)
        eips = [e for e in of_type(result, "aws:ec2/eip:Eip") if e["inputs"]["region"] == region]
        assert len(eips) == spec.get("maxNodes", spec["nodes"]), "an address for every node the pool may hold"
        assert all(e["protect"] and e["inputs"]["tags"]["meshctl-pool"] for e in eips)
    assert any(
        r["inputs"]["mixedInstancesPolicy"]["instancesDistribution"]["onDemandPercentageAboveBaseCapacity"] < 100
        for r in of_type(result, "aws:autoscaling/group:Group")
    ), "the dev stack exercises a spot share"
    for rule in of_type(result, "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"):
        assert ids[rule["inputs"]["securityGroupId"]]["inputs"]["region"] == rule["inputs"]["region"]
    lookups = [c["args"] for c in result["calls"] if c["token"] == "aws:ssm/getParameter:getParameter"]
    assert {(a["region"], a["name"]) for a in lookups} == {
        (r, SSM_PATH.format(arch="arm64" if s["instanceType"].startswith("c7g") else "amd64"))
        for r, s in expected.items()
    }


def component_region(r: dict[str, Any]) -> str:
    """The AWS region whose component made `r` (its name starts with aws-<region>-)."""
    (region,) = [g for g in regions_of("aws") if r["name"].startswith(f"aws-{g}-")]
    return region


def aws_region(r: dict[str, Any]) -> str:
    """The region an AWS resource lives in; IAM is global (no region), it belongs to its component's."""
    if r["type"].startswith("aws:iam/"):
        assert "region" not in r["inputs"], r
        return component_region(r)
    region: str = r["inputs"]["region"]
    return region


@AWS
def test_aws_every_resource_in_its_components_region(program: tuple[str, dict[str, Any]]) -> None:
    result = only("aws", program)
    checked = 0
    for r in result["resources"]:
        if not r["type"].startswith("aws:"):
            continue
        if r["type"].startswith("aws:iam/"):  # global: no region; its component's provider all the same
            assert aws_region(r) == component_region(r)
            assert provider_defaults(result, r)["mesh-region"] == f"aws:{component_region(r)}"
            checked += 1
            continue
        tags = r["inputs"].get("tags") or {}
        if isinstance(tags, list):  # an autoscaling group's
            tags = {t["key"]: t["value"] for t in tags}
        tag = tags.get("mesh-region")
        owner = tag.split(":", 1)[1] if tag else next(g for g in regions_of("aws") if r["name"].startswith(f"aws-{g}-"))
        assert r["inputs"]["region"] == owner, (r["type"], r["name"])
        checked += 1
    assert checked > 20


def test_aws_graviton_gets_arm64_and_no_stack_wide_ami() -> None:
    from meshstack import aws

    for t in ("t4g.small", "c7g.large", "c7gn.xlarge", "m6gd.large", "a1.medium", "x2gd.large", "im4gn.large"):
        assert aws.architecture(t) == "arm64", t
    for t in ("c6i.large", "c7i.xlarge", "t3.medium", "m7i-flex.large", "g5.xlarge", "c6in.large", "inf2.xlarge"):
        assert aws.architecture(t) == "amd64", t
    from meshstack import registry
    from meshstack.model import StackConfigError, validate

    mesh = stack_config("aws")["meshctl-stacks:mesh"]
    mesh["image"] = "ami-0c7217cdde317cfec"  # a us-east-1 AMI for every region: refused
    with pytest.raises(StackConfigError, match=r"mesh\.image: AMI ids are regional"):
        registry.provider("aws").check(validate(mesh, registry.known_regions("aws")))


def launch_templates(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {lt["inputs"]["region"]: lt for lt in of_type(result, "aws:ec2/launchTemplate:LaunchTemplate")}


@AWS
def test_aws_nodes_get_a_role_that_claims_only_their_own_pools_addresses(program: tuple[str, dict[str, Any]]) -> None:
    import json

    from meshstack.cloudinit import ADDRESS_CLAIMER

    result = only("aws", program)
    ids = by_id(result)
    templates = launch_templates(result)
    assert set(templates) == set(regions_of("aws"))
    pools = set()
    for region, lt in templates.items():
        # the instance profile is on the launch template, and holds the region's role
        profile_arn = lt["inputs"]["iamInstanceProfile"]["arn"]
        (profile,) = [p for p in of_type(result, "aws:iam/instanceProfile:InstanceProfile") if p["arn"] == profile_arn]
        assert component_region(profile) == region
        role = ids[profile["inputs"]["role"]]
        assert role["type"] == "aws:iam/role:Role" and component_region(role) == region
        trust = json.loads(role["inputs"]["assumeRolePolicy"])
        assert trust["Statement"] == [
            {"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}
        ]
        # the addresses of this region's pool and the pool tag on what the template launches
        eips = [e for e in of_type(result, "aws:ec2/eip:Eip") if e["inputs"]["region"] == region]
        (pool,) = {e["inputs"]["tags"]["meshctl-pool"] for e in eips}
        pools.add(pool)
        launched = {spec["resourceType"]: spec["tags"] for spec in lt["inputs"]["tagSpecifications"]}
        assert launched["instance"]["meshctl-pool"] == pool and launched["network-interface"]["meshctl-pool"] == pool
        # the role's only policy: describe addresses (no resource-level permission exists), associate the
        # pool's own addresses onto the pool's own instances and interfaces, in this region
        (policy,) = [p for p in of_type(result, "aws:iam/rolePolicy:RolePolicy") if p["inputs"]["role"] == role["id"]]
        statements = {s["Sid"]: s for s in json.loads(policy["inputs"]["policy"])["Statement"]}
        assert set(statements) == {"FindPoolAddresses", "ClaimPoolAddress", "OntoPoolNode"}
        assert all(s["Effect"] == "Allow" for s in statements.values())
        find = statements["FindPoolAddresses"]
        assert (find["Action"], find["Resource"]) == ("ec2:DescribeAddresses", "*")
        assert find["Condition"] == {"StringEquals": {"aws:RequestedRegion": region}}
        claim, onto = statements["ClaimPoolAddress"], statements["OntoPoolNode"]
        assert claim["Action"] == onto["Action"] == "ec2:AssociateAddress"
        assert claim["Resource"] == f"arn:aws:ec2:{region}:*:elastic-ip/*"
        assert onto["Resource"] == [f"arn:aws:ec2:{region}:*:instance/*", f"arn:aws:ec2:{region}:*:network-interface/*"]
        assert claim["Condition"] == onto["Condition"] == {"StringEquals": {"aws:ResourceTag/meshctl-pool": pool}}
        # and the node's user data claims from that very pool
        doc = yaml.safe_load(base64.b64decode(plain(lt["inputs"]["userData"])).decode())
        assert doc["runcmd"][0] == [ADDRESS_CLAIMER, "--pool", pool]
    assert len(pools) == len(templates), "one pool (and one role) per region"
    assert len(of_type(result, "aws:iam/role:Role")) == len(of_type(result, "aws:iam/rolePolicy:RolePolicy")) == 3


def test_aws_without_static_addresses_nodes_get_no_role_and_claim_nothing() -> None:
    cfg = stack_config("aws")
    cfg["meshctl-stacks:mesh"]["staticAddresses"] = False
    result = run_program("dev-aws", cfg)
    assert result["error"] is None, result.get("traceback")
    assert not [r for r in result["resources"] if r["type"].startswith("aws:iam/") or r["type"] == "aws:ec2/eip:Eip"]
    for lt in launch_templates(result).values():
        assert "iamInstanceProfile" not in lt["inputs"], "no permissions at all without an address pool"
        assert all("meshctl-pool" not in spec["tags"] for spec in lt["inputs"]["tagSpecifications"])
        text = base64.b64decode(plain(lt["inputs"]["userData"])).decode()
        assert "meshctl-claim-address" not in text


# --- GCP ---------------------------------------------------------------------------------


@GCP
def test_gcp_one_global_network_a_subnetwork_per_region(program: tuple[str, dict[str, Any]]) -> None:
    result = only("gcp", program)
    (net,) = of_type(result, "gcp:compute/network:Network")
    subnets = of_type(result, "gcp:compute/subnetwork:Subnetwork")
    assert sorted(s["inputs"]["region"] for s in subnets) == sorted(regions_of("gcp"))
    assert all(s["inputs"]["network"] == net["id"] for s in subnets)
    ranges = [ipaddress.ip_network(s["inputs"]["ipCidrRange"]) for s in subnets]
    assert all(not a.overlaps(b) for i, a in enumerate(ranges) for b in ranges[i + 1 :]), ranges
    firewalls = of_type(result, "gcp:compute/firewall:Firewall")
    assert firewalls and all(f["inputs"]["network"] == net["id"] for f in firewalls)


@GCP
def test_gcp_pools_in_up_zones_with_tag_subnet_stateful_ips_and_image(program: tuple[str, dict[str, Any]]) -> None:
    result = only("gcp", program)
    ids = by_id(result)
    answered = {c["args"]["region"]: c for c in result["calls"] if c["token"] == "gcp:compute/getZones:getZones"}
    assert all(c["args"]["status"] == "UP" for c in answered.values())
    firewall_tags = {t for f in of_type(result, "gcp:compute/firewall:Firewall") for t in f["inputs"]["targetTags"]}
    migs = of_type(result, "gcp:compute/regionInstanceGroupManager:RegionInstanceGroupManager")
    for region, spec in regions_of("gcp").items():
        mine = [m for m in migs if m["inputs"]["region"] == region]
        spot = spec.get("spotPercent", 0)
        assert len(mine) == (2 if spot else 1)
        assert sum(m["inputs"]["targetSize"] for m in mine) == spec["nodes"]
        for mig in mine:
            p = mig["inputs"]
            zones = set(p["distributionPolicyZones"])
            assert len(zones) >= 2 and zones <= {f"{region}-b", f"{region}-c", f"{region}-d"}, "zones that are UP"
            assert region in answered
            assert len(p["baseInstanceName"]) + 5 <= 63
            policy = p["updatePolicy"]
            assert policy["type"] == "PROACTIVE" and policy["minimalAction"] == "REPLACE"
            for fixed in ("maxSurgeFixed", "maxUnavailableFixed"):  # regional: 0 or at least the zone count
                assert policy[fixed] in (0,) or policy[fixed] >= len(zones)
            (version,) = p["versions"]
            template = ids[version["instanceTemplate"]]  # its self_link_unique (the mock answers the id)
            assert template["type"] == "gcp:compute/instanceTemplate:InstanceTemplate"
            t = template["inputs"]
            assert set(t["tags"]) & firewall_tags, "the firewall's target tag is on the instance template"
            (nic,) = t["networkInterfaces"]
            assert ids[nic["subnetwork"]]["inputs"]["region"] == region
            assert nic["accessConfigs"] == [{"networkTier": "PREMIUM"}]
            (disk,) = t["disks"]
            assert disk["sourceImage"] == "projects/ubuntu-os-cloud/global/images/family/ubuntu-2404-lts-amd64"
            is_spot = (t.get("scheduling") or {}).get("provisioningModel") == "SPOT"
            assert is_spot == (version["name"] == "spot")
            if is_spot:
                assert "statefulExternalIps" not in p or not p["statefulExternalIps"]
            else:  # static addresses: each node keeps its external IP through healing and updates
                assert p["statefulExternalIps"] == [
                    {"interfaceName": "nic0", "deleteRule": "ON_PERMANENT_INSTANCE_DELETION"}
                ]
                assert policy["replacementMethod"] == "RECREATE" and policy["instanceRedistributionType"] == "NONE"
    assert any(m["inputs"]["versions"][0]["name"] == "spot" for m in migs), "the dev stack exercises a spot share"


def test_gcp_refuses_autoscaling_a_pool_with_static_addresses_and_scales_without() -> None:
    from meshstack import registry
    from meshstack.model import StackConfigError, validate

    mesh = stack_config("gcp")["meshctl-stacks:mesh"]
    mesh["regions"][0].update(minNodes=1, maxNodes=6)
    with pytest.raises(StackConfigError, match=r"regions\[0\]\.maxNodes: GCP cannot autoscale"):
        registry.provider("gcp").check(validate(mesh, registry.known_regions("gcp")))
    cfg = stack_config("gcp")
    cfg["meshctl-stacks:mesh"].update(staticAddresses=False)
    cfg["meshctl-stacks:mesh"]["regions"] = [dict(mesh["regions"][0])]
    result = run_program("dev-gcp", cfg)
    assert result["error"] is None, result.get("traceback")
    scalers = of_type(result, "gcp:compute/regionAutoscaler:RegionAutoscaler")
    migs = {m["id"]: m for m in of_type(result, "gcp:compute/regionInstanceGroupManager:RegionInstanceGroupManager")}
    assert len(scalers) == 2 and {s["inputs"]["target"] for s in scalers} == set(migs)
    bounds = sorted(
        (s["inputs"]["autoscalingPolicy"]["minReplicas"], s["inputs"]["autoscalingPolicy"]["maxReplicas"])
        for s in scalers
    )
    assert sum(b[0] for b in bounds) == 1 and sum(b[1] for b in bounds) == 6, bounds
    for mig in migs.values():
        assert not mig["inputs"].get("statefulExternalIps")
        assert mig["inputs"]["updatePolicy"]["instanceRedistributionType"] == "PROACTIVE", "autoscaling needs it"
    assert violations(result) == []


def test_gcp_ipv6_only_admins_never_give_an_empty_source_firewall() -> None:
    from meshstack import gcp

    assert gcp.architecture("c4a-standard-4") == "arm64" and gcp.architecture("t2a-standard-1") == "arm64"
    assert gcp.architecture("c2d-standard-4") == "amd64"
    cfg = stack_config("gcp")
    cfg["meshctl-stacks:mesh"]["adminCidrs"] = ["2001:db8::/32"]
    cfg["meshctl-stacks:mesh"]["regions"] = cfg["meshctl-stacks:mesh"]["regions"][:1]
    result = run_program("dev-gcp", cfg)
    assert result["error"] is None, result.get("traceback")
    firewalls = of_type(result, "gcp:compute/firewall:Firewall")
    for f in firewalls:
        sources = f["inputs"].get("sourceRanges")
        assert sources, f"{f['name']}: empty sourceRanges is 0.0.0.0/0 on GCP"
        assert len({ipaddress.ip_network(s).version for s in sources}) == 1, f["name"]
    ssh = [f for f in firewalls if any("22" in a["ports"] for a in f["inputs"]["allows"])]
    assert [f["inputs"]["sourceRanges"] for f in ssh] == [["2001:db8::/32"]]
    assert violations(result) == []
    # the pack sees the empty-source case on this graph: break the SSH rule as the old code did
    broken = copy.deepcopy(result)
    bad = next(r for r in broken["resources"] if r["name"] == ssh[0]["name"])
    bad["inputs"]["sourceRanges"] = []
    found = violations(broken)
    assert ("gcp-firewall-explicit-sources", bad["name"]) in {(p, n) for p, n, _ in found}
    assert any(p == "no-admin-ports-from-internet" and n == bad["name"] and "SSH" in m for p, n, m in found)


# --- Azure -------------------------------------------------------------------------------


@AZURE
def test_azure_scale_sets_nsg_on_nic_config_zones_key_image_spot_and_rolling(
    program: tuple[str, dict[str, Any]],
) -> None:
    result = only("azure", program)
    ids = by_id(result)
    key = stack_config("azure")["meshctl-stacks:mesh"]["adminSshPublicKey"]
    scalers = {a["inputs"]["targetResourceUri"]: a for a in of_type(result, "azure-native:monitor:AutoscaleSetting")}
    for region, spec in regions_of("azure").items():
        (vmss,) = [
            v
            for v in of_type(result, "azure-native:compute:VirtualMachineScaleSet")
            if v["inputs"]["location"] == region
        ]
        (nsg,) = [
            n for n in of_type(result, "azure-native:network:NetworkSecurityGroup") if n["inputs"]["location"] == region
        ]
        p = vmss["inputs"]
        assert p["orchestrationMode"] == "Flexible" and len(set(p["zones"])) >= 2
        assert p["sku"]["capacity"] == spec["nodes"] and p["sku"]["name"] == spec["instanceType"]
        profile = plain(p["virtualMachineProfile"])
        (nic,) = profile["networkProfile"]["networkInterfaceConfigurations"]
        assert nic["networkSecurityGroup"]["id"] == nsg["id"], "the NSG is on the NIC configuration"
        assert nic["deleteOption"] == "Delete" and profile["storageProfile"]["osDisk"]["deleteOption"] == "Delete"
        (ipc,) = nic["ipConfigurations"]
        assert ids[ipc["subnet"]["id"]]["inputs"]["resourceGroupName"] == nsg["inputs"]["resourceGroupName"]
        public = ipc["publicIPAddressConfiguration"]
        assert public["sku"]["name"] == "Standard" and public["deleteOption"] == "Delete"
        prefix = ids[public["publicIPPrefix"]["id"]]
        assert prefix["protect"] and prefix["inputs"]["location"] == region
        assert 2 ** (32 - prefix["inputs"]["prefixLength"]) >= spec.get("maxNodes", spec["nodes"])
        linux = profile["osProfile"]["linuxConfiguration"]
        assert linux["disablePasswordAuthentication"] is True
        assert [k["keyData"] for k in linux["ssh"]["publicKeys"]] == [key]
        assert profile["storageProfile"]["imageReference"] == {
            "publisher": "Canonical",
            "offer": "ubuntu-24_04-lts",
            "sku": "server",
            "version": "latest",
        }
        assert p["upgradePolicy"]["mode"] == "Rolling" and p["automaticRepairsPolicy"]["enabled"] is True
        (health,) = profile["extensionProfile"]["extensions"]
        assert health["type"] == "ApplicationHealthLinux" and health["settings"]["port"] == 9464
        spot = spec.get("spotPercent", 0)
        if spot:
            assert profile["priority"] == "Spot" and profile["evictionPolicy"] == "Delete"
            assert p["priorityMixPolicy"] == {
                "baseRegularPriorityCount": spec.get("onDemandBase", 1),
                "regularPriorityPercentageAboveBase": 100 - spot,
            }
        else:
            assert "priority" not in profile and "priorityMixPolicy" not in p
        bounds = (spec.get("minNodes", spec["nodes"]), spec.get("maxNodes", spec["nodes"]))
        if bounds == (spec["nodes"], spec["nodes"]):
            assert vmss["id"] not in scalers
        else:
            capacity = scalers[vmss["id"]]["inputs"]["profiles"][0]["capacity"]
            assert capacity == {"minimum": str(bounds[0]), "maximum": str(bounds[1]), "default": str(spec["nodes"])}
    assert scalers, "the dev stack exercises an autoscaled pool"
    for r in result["resources"]:
        if r["type"].startswith("azure-native:") and "location" in r["inputs"]:
            assert r["inputs"]["location"] == (r["inputs"].get("tags") or {})["mesh-region"].split(":")[1], r["name"]


def test_azure_refuses_a_region_without_zones() -> None:
    from meshstack import registry
    from meshstack.model import StackConfigError, validate

    mesh = stack_config("azure")["meshctl-stacks:mesh"]
    mesh["regions"][1]["region"] = "azure:northcentralus"
    with pytest.raises(StackConfigError, match=r"regions\[1\]\.region: azure:northcentralus has no availability"):
        registry.provider("azure").check(validate(mesh, registry.known_regions("azure")))


@AZURE
def test_azure_nsg_rules_never_mix_address_families(program: tuple[str, dict[str, Any]]) -> None:
    result = only("azure", program)
    for nsg in of_type(result, "azure-native:network:NetworkSecurityGroup"):
        rules_ = nsg["inputs"]["securityRules"]
        assert len({r["name"] for r in rules_}) == len(rules_) and len({r["priority"] for r in rules_}) == len(rules_)
        for rule in rules_:
            prefixes = rule["sourceAddressPrefixes"]
            assert prefixes and len({ipaddress.ip_network(p).version for p in prefixes}) == 1, rule


def test_azure_without_ssh_key_refuses_before_any_resource() -> None:
    from meshstack import azure

    assert azure.architecture("Standard_D4ps_v5") == "arm64" and azure.architecture("Standard_B2pls_v2") == "arm64"
    assert azure.architecture("Standard_F4s_v2") == "amd64" and azure.architecture("Standard_D4s_v5") == "amd64"
    cfg = stack_config("azure")
    del cfg["meshctl-stacks:mesh"]["adminSshPublicKey"]
    result = run_program("dev-azure", cfg)
    assert "meshctl-stacks:mesh.adminSshPublicKey: missing" in result["error"]
    assert [r for r in result["resources"] if not r["type"].startswith("pulumi:")] == []


# --- the policy pack on the program's own graph ----------------------------------------------


def violations(result: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Run every policy of the pack over the run's resources: (policy, resource name, message)."""
    from pack import POLICIES

    resources = [r for r in result["resources"] if not r["type"].startswith(("pulumi:", "meshctl:"))]
    found: list[tuple[str, str, str]] = []
    policy_resources = []
    for r in resources:
        urn = f"urn:pulumi:dev::meshctl-stacks::{r['type']}::{r['name']}"
        props = plain(r["inputs"])
        prov = provider_of(result, r)
        provider = PolicyProviderResource(prov["type"], plain(prov["inputs"]), "", prov["name"]) if prov else None
        policy_resources.append(PolicyResource(r["type"], props, urn, r["name"], None, provider, None, [], {}))  # type: ignore[arg-type]
        for policy in POLICIES:
            if isinstance(policy, ResourceValidationPolicy):
                args = ResourceValidationArgs(r["type"], props, urn, r["name"], None, provider)  # type: ignore[arg-type]
                policy.validate(args, lambda msg, _urn, p=policy.name, n=r["name"]: found.append((p, n, msg)))  # type: ignore[misc]
    for policy in POLICIES:
        if isinstance(policy, StackValidationPolicy):
            policy.validate(
                StackValidationArgs(policy_resources),
                lambda msg, urn, p=policy.name: found.append((p, str(urn), msg)),  # type: ignore[misc]
            )
    return found


def test_policy_pack_passes_on_each_clouds_program(program: tuple[str, dict[str, Any]]) -> None:
    _, result = program
    assert violations(result) == []
    assert len([r for r in result["resources"] if not r["type"].startswith(("pulumi:", "meshctl:"))]) > 10


@AWS
def test_policy_pack_catches_a_node_role_widened_on_the_programs_graph(program: tuple[str, dict[str, Any]]) -> None:
    import json

    result = copy.deepcopy(only("aws", program))
    policy = of_type(result, "aws:iam/rolePolicy:RolePolicy")[0]
    document = json.loads(policy["inputs"]["policy"])
    for statement in document["Statement"]:
        if statement["Sid"] == "ClaimPoolAddress":
            statement["Resource"] = "*"  # any address of the account: another pool's, or the controller's
    policy["inputs"]["policy"] = json.dumps(document)
    found = violations(result)
    assert [(p, n) for p, n, _ in found] == [("role-policy-scoped", policy["name"])], found
    assert "ClaimPoolAddress: ec2:AssociateAddress on ['*']" in found[0][2]


# --- tags and labels from the providers, not threaded by hand ---------------------------------

REQUIRED = ("mesh", "mesh-region", "environment")


@AWS
def test_aws_required_tags_come_from_each_regions_provider_default_tags(program: tuple[str, dict[str, Any]]) -> None:
    result = only("aws", program)
    providers = {p["name"]: p for p in of_type(result, "pulumi:providers:aws")}
    assert sorted(plain(p["inputs"])["region"] for p in providers.values()) == sorted(regions_of("aws"))
    for r in result["resources"]:
        if not r["type"].startswith("aws:"):
            continue
        provider = provider_of(result, r)
        assert provider is not None, f"{r['name']} uses the default provider (no default tags)"
        defaults = provider_defaults(result, r)
        assert defaults["mesh-region"] == f"aws:{aws_region(r)}", "the provider of the resource's region"
        own = r["inputs"].get("tags") or {}
        if isinstance(own, dict):  # not threaded by hand (Name and the pool tag are the resource's own)
            assert not set(own) & set(REQUIRED), (r["name"], own)
    # where default tags do not reach, the required tags stay explicit: instances a template launches
    for lt in of_type(result, "aws:ec2/launchTemplate:LaunchTemplate"):
        for spec in lt["inputs"]["tagSpecifications"]:
            assert all(spec["tags"].get(k) for k in REQUIRED), spec


@GCP
def test_gcp_required_labels_come_from_each_regions_provider_default_labels(
    program: tuple[str, dict[str, Any]],
) -> None:
    result = only("gcp", program)
    for t in of_type(result, "gcp:compute/instanceTemplate:InstanceTemplate"):
        labels = provider_defaults(result, t)
        assert all(labels.get(k) for k in REQUIRED) and "labels" not in t["inputs"], t["name"]
        assert labels["mesh-region"] == label_safe(f"gcp:{t['inputs']['region']}")


@AZURE
def test_azure_tags_on_every_resource_the_sdk_lets_take_tags(program: tuple[str, dict[str, Any]]) -> None:
    """Azure has no default tags: the stack transform tags each resource whose SDK class has `tags`."""
    import importlib
    import inspect

    result = only("azure", program)
    checked = 0
    for r in result["resources"]:
        if not r["type"].startswith("azure-native:"):
            continue
        _, module, cls = r["type"].split(":")
        sdk = getattr(importlib.import_module(f"pulumi_azure_native.{module}"), cls)
        if "tags" in inspect.signature(sdk._internal_init).parameters:
            tags = r["inputs"].get("tags") or {}
            assert all(tags.get(k) for k in REQUIRED), (r["name"], tags)
            checked += 1
        else:
            assert "tags" not in r["inputs"], f"{r['type']} takes no tags"
    assert checked >= 12
