"""GCP and Azure network stacks (stacks/shared with a `meshctl-shared:network` config) and the node
stacks that take their networks and address prefixes from them (`mesh.networkStack`), under mocks
that serve the referenced stack's outputs as the network program exports them. The AWS network
stack's own tests are in test_shared_stack.py; the stack files of all three are run here."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml
from meshstack.model import pool_name, validate

from tests.stacks.conftest import (
    CLOUDS,
    POOL_TYPES,
    ROOT,
    of_type,
    plain,
    provider_defaults,
    run_program,
    stack_config,
)
from tests.stacks.test_wiring import violations

SHARED_DIR = ROOT / "stacks" / "shared"
# what a network stack holds per cloud, and what a node stack with networkStack must then not make
NETWORK_TYPES = {
    "aws": ("aws:ec2/vpc:Vpc", "aws:ec2/subnet:Subnet", "aws:ec2/eip:Eip"),
    "gcp": ("gcp:compute/network:Network", "gcp:compute/subnetwork:Subnetwork"),
    "azure": (
        "azure-native:network:VirtualNetwork",
        "azure-native:network:Subnet",
        "azure-native:network:PublicIPPrefix",
    ),
}


def network_file(cloud: str) -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load((SHARED_DIR / f"Pulumi.dev-{cloud}.yaml").read_text())["config"]
    return config


def run_network(cloud: str, network: dict[str, Any] | None = None) -> dict[str, Any]:
    """The network program for the dev stack file of `cloud`, or for that file with `network` instead."""
    config = network_file(cloud)
    if network is not None:
        config["meshctl-shared:network"] = network
    return run_program(f"dev-{cloud}", config, program=SHARED_DIR)


def ref(cloud: str) -> str:
    return f"organization/meshctl-shared/dev-{cloud}"


def node_on(cloud: str, networks: dict[str, Any], **mesh: Any) -> dict[str, Any]:
    """The dev node stack of `cloud` with mesh.networkStack, reading `networks` from it."""
    config = stack_config(cloud)
    config["meshctl-stacks:mesh"].update(networkStack=ref(cloud), **mesh)
    return run_program(f"dev-{cloud}", config, {ref(cloud): {"networks": networks}})


@pytest.fixture(scope="module", params=["gcp", "azure"])
def network_stack(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    cloud: str = request.param
    result = run_network(cloud)
    assert result["error"] is None, result.get("traceback")
    return cloud, result


def by_name(result: dict[str, Any], typ: str, name: str) -> dict[str, Any]:
    (found,) = [r for r in of_type(result, typ) if r["name"] == name]
    return found


# --- the stack files: every network stack fits the dev node stack of its cloud -----------------


@pytest.mark.parametrize("cloud", CLOUDS)
def test_the_dev_network_stack_files_fit_the_dev_node_stacks(cloud: str) -> None:
    """Each stacks/shared/Pulumi.dev-<cloud>.yaml runs, protects all it makes and lists the node
    stack's regions under its pool names, with room for its maxNodes (or the node stack would refuse
    it); the node stack run on it makes none of the network's resources and nothing protected
    (`pulumi destroy` of a node stack goes through, the networks and addresses stay)."""
    from meshstack import registry

    network = run_network(cloud)
    assert network["error"] is None, network.get("traceback")
    networks = network["outputs"]["networks"]
    mesh = stack_config(cloud)["meshctl-stacks:mesh"]
    settings = validate(mesh, registry.known_regions(cloud))
    assert set(networks) == {r.region for r in settings.regions}
    for spec in settings.regions:
        assert networks[spec.region]["pool"] == pool_name(settings, spec.region)
    unprotected = [r["name"] for r in network["resources"] if not r["protect"]]
    assert not unprotected, "every resource of a network stack is protected"
    assert {r["type"] for r in network["resources"]} >= set(NETWORK_TYPES[cloud])
    node = node_on(cloud, networks)
    assert node["error"] is None, node.get("traceback")
    for typ in NETWORK_TYPES[cloud]:
        assert not of_type(node, typ), f"{typ} belongs to the network stack"
    assert not [r["name"] for r in node["resources"] if r["protect"]], "nothing protected in a node stack"
    assert len(of_type(node, POOL_TYPES[cloud])) >= len(settings.regions)
    # the policy pack on its graph: passes, and still sees its firewall (which stays in the node stack)
    assert violations(node) == []
    closed = copy.deepcopy(node)
    closed["resources"] = [r for r in closed["resources"] if "wireguard" not in r["name"]]
    for nsg in of_type(closed, "azure-native:network:NetworkSecurityGroup"):
        rules = nsg["inputs"]["securityRules"]
        nsg["inputs"]["securityRules"] = [r for r in rules if not r["name"].startswith("wireguard")]
    assert {p for p, _, _ in violations(closed)} == {"wireguard-port-open"}, "WireGuard closed is still caught"


REGIONS = {"aws": ("us-east-1", "eu-west-1", "ap-northeast-1"), "azure": ("eastus", "westeurope", "japaneast")}
NODE_URN = "urn:pulumi:dev-{cloud}::meshctl-stacks::meshctl:{cloud}:{parent}${typ}::{name}"
# the protected resources of the dev node stacks (no networkStack), as their state holds them
PROTECTED_URNS = {
    "aws": {
        NODE_URN.format(cloud="aws", parent="MediaRegion", typ="aws:ec2/vpc:Vpc", name=f"aws-{r}-vpc")
        for r in REGIONS["aws"]
    }
    | {
        NODE_URN.format(cloud="aws", parent="MediaRegion", typ="aws:ec2/eip:Eip", name=f"aws-{r}-eip-{i}")
        for r, n in zip(REGIONS["aws"], (4, 1, 1), strict=True)
        for i in range(n)
    },
    "gcp": {
        NODE_URN.format(cloud="gcp", parent="Network", typ="gcp:compute/network:Network", name="media-mesh-dev-net")
    },
    "azure": {
        NODE_URN.format(cloud="azure", parent="MediaRegion", typ=f"azure-native:network:{t}", name=f"azure-{r}-{n}")
        for r in REGIONS["azure"]
        for t, n in (("VirtualNetwork", "vnet"), ("PublicIPPrefix", "ip-prefix"))
    },
}


def test_without_network_stack_the_node_stacks_keep_their_networks_under_the_same_urns(
    program: tuple[str, dict[str, Any]],
) -> None:
    """A node stack without networkStack makes its network as before (the same URNs: an existing stack
    sees no replacement), and the network stack names its resources by the same logical names."""
    cloud, node = program
    assert {r["urn"] for r in node["resources"] if r["protect"]} == PROTECTED_URNS[cloud]
    network = run_network(cloud)
    made = {(r["type"], r["name"]) for r in network["resources"] if r["type"] in NETWORK_TYPES[cloud]}
    assert made and made == {(r["type"], r["name"]) for r in node["resources"] if r["type"] in NETWORK_TYPES[cloud]}


# --- what a network stack makes ------------------------------------------------------------------


def test_a_network_stack_protects_its_networks_in_their_regions(network_stack: tuple[str, dict[str, Any]]) -> None:
    cloud, result = network_stack
    networks = result["outputs"]["networks"]
    regions = [r["region"] for r in network_file(cloud)["meshctl-shared:network"]["regions"]]
    assert list(networks) == regions and "controllerUrl" not in result["outputs"]
    assert not of_type(result, POOL_TYPES[cloud]), "no node here"
    for region_id in regions:
        region = region_id.split(":", 1)[1]
        entry = networks[region_id]
        assert entry["pool"] == f"media-mesh-dev-{region}"
        if cloud == "gcp":
            (net,) = of_type(result, "gcp:compute/network:Network")
            assert net["protect"] and net["inputs"]["autoCreateSubnetworks"] is False
            subnet = by_name(result, "gcp:compute/subnetwork:Subnetwork", f"gcp-{region}-subnet")
            assert subnet["protect"] and subnet["inputs"]["region"] == region
            assert subnet["inputs"]["network"] == net["id"] == entry["networkId"]
            assert entry["subnetworkId"] == subnet["id"] and entry["project"] == "media-mesh-dev"
            assert provider_defaults(result, subnet)["mesh-region"] == region_id.replace(":", "_")
        else:
            rg = by_name(result, "azure-native:resources:ResourceGroup", f"azure-{region}-rg")
            vnet = by_name(result, "azure-native:network:VirtualNetwork", f"azure-{region}-vnet")
            subnet = by_name(result, "azure-native:network:Subnet", f"azure-{region}-subnet")
            prefix = by_name(result, "azure-native:network:PublicIPPrefix", f"azure-{region}-ip-prefix")
            assert all(r["protect"] for r in (rg, vnet, subnet, prefix))
            for r in (rg, vnet, prefix):  # a subnet takes no tags
                assert r["inputs"]["location"] == region and r["inputs"]["tags"]["mesh-region"] == region_id
            assert vnet["inputs"]["resourceGroupName"] == subnet["inputs"]["resourceGroupName"] == rg["name"]
            assert prefix["inputs"]["resourceGroupName"] == entry["resourceGroup"] == rg["name"]
            assert subnet["inputs"]["virtualNetworkName"] == vnet["name"]
            assert "networkSecurityGroup" not in subnet["inputs"], "the NSG is the node stack's, on the NIC"
            assert (entry["subnetId"], entry["prefixId"], entry["vnetId"]) == (subnet["id"], prefix["id"], vnet["id"])
            assert entry["ipPrefix"] == prefix["ipPrefix"] and entry["prefixLength"] == prefix["inputs"]["prefixLength"]
            assert prefix["inputs"]["zones"] == ["1", "2", "3"] and prefix["inputs"]["sku"]["name"] == "Standard"
    if cloud == "gcp":
        assert not of_type(result, "gcp:compute/firewall:Firewall"), "firewall rules follow the node stack's ports"
    else:
        assert not of_type(result, "azure-native:network:NetworkSecurityGroup")
        sizes = {e["prefixLength"] for e in networks.values()}
        assert sizes == {30, 31}, "4 addresses: a /30; 1 address: a /31 (Azure's smallest prefix)"


@pytest.mark.parametrize(
    ("cloud", "regions", "message"),
    [
        ("gcp", [{"region": "gcp:us-central1", "addresses": 2}], "regions[0].addresses: GCP has no address pool"),
        ("azure", [{"region": "azure:eastus", "addresses": 17}], "regions[0].addresses: one public IP prefix holds"),
        ("azure", [{"region": "azure:eastus"}, {"region": "azure:westus"}], "regions[1].region: azure:westus has no"),
    ],
)
def test_a_network_stack_refuses_what_its_cloud_cannot_hold(cloud: str, regions: list[Any], message: str) -> None:
    result = run_network(cloud, {"name": "media-mesh", "environment": "dev", "cloud": cloud, "regions": regions})
    assert result["error"] is not None and message in result["error"], result["error"]
    assert not [r for r in result["resources"] if r["type"].startswith(("gcp:", "azure-native:"))]


# --- a node stack on a network stack: the wiring ----------------------------------------------


def test_a_gcp_node_stack_runs_in_the_network_stacks_network_and_subnetworks() -> None:
    networks = run_network("gcp")["outputs"]["networks"]
    result = node_on("gcp", networks)
    assert result["error"] is None, result.get("traceback")
    (reference,) = of_type(result, "pulumi:pulumi:StackReference")
    assert reference["inputs"]["name"] == ref("gcp")
    network_id = {e["networkId"] for e in networks.values()}
    firewalls = of_type(result, "gcp:compute/firewall:Firewall")
    assert firewalls and {f["inputs"]["network"] for f in firewalls} == network_id
    tags = {t for f in firewalls for t in f["inputs"]["targetTags"]}
    templates = of_type(result, "gcp:compute/instanceTemplate:InstanceTemplate")
    migs = of_type(result, POOL_TYPES["gcp"])
    for region_id, entry in networks.items():
        region = region_id.split(":", 1)[1]
        mine = [t for t in templates if t["inputs"]["region"] == region]
        assert mine
        for template in mine:
            (nic,) = template["inputs"]["networkInterfaces"]
            assert nic["subnetwork"] == entry["subnetworkId"], "the template's NIC is in the region's subnetwork"
            assert set(template["inputs"]["tags"]) == tags, "the firewall's target tag is on the template"
            (mig,) = [m for m in migs if m["inputs"]["versions"][0]["instanceTemplate"] == template["id"]]
            assert mig["inputs"]["region"] == region
            assert all(z.startswith(f"{region}-") for z in mig["inputs"]["distributionPolicyZones"])


def test_an_azure_node_stack_takes_the_network_stacks_subnet_and_address_prefix() -> None:
    networks = run_network("azure")["outputs"]["networks"]
    result = node_on("azure", networks)
    assert result["error"] is None, result.get("traceback")
    (reference,) = of_type(result, "pulumi:pulumi:StackReference")
    assert reference["inputs"]["name"] == ref("azure")
    for region_id, entry in networks.items():
        location = region_id.split(":", 1)[1]
        vmss = by_name(result, POOL_TYPES["azure"], f"azure-{location}-vmss")
        nsg = by_name(result, "azure-native:network:NetworkSecurityGroup", f"azure-{location}-nsg")
        rg = by_name(result, "azure-native:resources:ResourceGroup", f"azure-{location}-rg")
        assert vmss["inputs"]["location"] == nsg["inputs"]["location"] == location
        assert vmss["inputs"]["resourceGroupName"] == rg["name"], "the scale set stays in the node stack's group"
        (nic,) = plain(vmss["inputs"]["virtualMachineProfile"])["networkProfile"]["networkInterfaceConfigurations"]
        assert nic["networkSecurityGroup"]["id"] == nsg["id"], "the node stack's NSG on the NIC configuration"
        (ip,) = nic["ipConfigurations"]
        assert ip["subnet"]["id"] == entry["subnetId"]
        assert ip["publicIPAddressConfiguration"]["publicIPPrefix"]["id"] == entry["prefixId"]


def test_an_azure_node_stack_without_static_addresses_needs_no_prefix() -> None:
    network = network_file("azure")["meshctl-shared:network"]
    network = {**network, "regions": [{"region": r["region"]} for r in network["regions"]]}
    result = run_network("azure", network)
    assert not of_type(result, "azure-native:network:PublicIPPrefix")
    networks = result["outputs"]["networks"]
    assert all(e["prefixId"] is None and e["prefixLength"] == 0 for e in networks.values())
    node = node_on("azure", networks, staticAddresses=False)
    assert node["error"] is None, node.get("traceback")
    for vmss in of_type(node, POOL_TYPES["azure"]):
        (nic,) = plain(vmss["inputs"]["virtualMachineProfile"])["networkProfile"]["networkInterfaceConfigurations"]
        assert "publicIPPrefix" not in nic["ipConfigurations"][0]["publicIPAddressConfiguration"]
    refused = node_on("azure", networks)  # static addresses (the default) need the prefix
    assert refused["error"] is not None and f"{ref('azure')} holds 0 addresses for azure:" in refused["error"]


def _without(cloud: str, region: str) -> dict[str, Any]:
    network = network_file(cloud)["meshctl-shared:network"]
    return {**network, "regions": [r for r in network["regions"] if r["region"] != region]}


def _resized(region: str, addresses: int) -> dict[str, Any]:
    network = network_file("azure")["meshctl-shared:network"]
    regions = [{**r, "addresses": addresses} if r["region"] == region else r for r in network["regions"]]
    return {**network, "regions": regions}


@pytest.mark.parametrize(
    ("cloud", "network", "config", "message"),
    [
        ("gcp", _without("gcp", "gcp:europe-west3"), {}, "has no network for gcp:europe-west3"),
        (
            "gcp",
            {**network_file("gcp")["meshctl-shared:network"], "environment": "prod"},
            {},
            "is tagged 'media-mesh-prod-",
        ),
        (
            "gcp",
            None,
            {"gcp:project": "another-project"},
            "is in project 'media-mesh-dev', this stack's gcp:project is",
        ),
        ("azure", _without("azure", "azure:japaneast"), {}, "has no network for azure:japaneast"),
        (
            "azure",
            {**network_file("azure")["meshctl-shared:network"], "name": "other-mesh"},
            {},
            "is tagged 'other-mesh-",
        ),
        ("azure", _resized("azure:eastus", 2), {}, "holds 2 addresses for azure:eastus, maxNodes is 4"),
    ],
)
def test_a_node_stack_refuses_a_network_stack_that_does_not_fit_it(
    cloud: str, network: dict[str, Any] | None, config: dict[str, Any], message: str
) -> None:
    made = run_network(cloud, network)
    assert made["error"] is None, made.get("traceback")
    node = stack_config(cloud)
    node["meshctl-stacks:mesh"]["networkStack"] = ref(cloud)
    node.update(config)
    result = run_program(f"dev-{cloud}", node, {ref(cloud): {"networks": made["outputs"]["networks"]}})
    assert result["error"] is not None, "refused"
    assert "mesh.networkStack: " in result["error"] and ref(cloud) in result["error"], result["error"]
    assert message in result["error"], result["error"]
