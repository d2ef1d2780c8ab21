"""The shared stacks (stacks/shared) and the node stacks that read them through a StackReference,
under mocks that serve the referenced stack's outputs as the shared program exports them: the
cloud-neutral one (controller URL, agent artifacts) and an AWS network stack (networks, pools);
GCP and Azure network stacks, and every network stack file, in test_network_stacks.py."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
import yaml
from meshstack import registry
from meshstack.model import StackConfigError

from tests.stacks.conftest import ROOT, of_type, provider_defaults, run_program, stack_config, user_data_docs

SHARED = "organization/meshctl-shared/dev"
URL = "https://mesh-controller.shared.example:8443"
WHEEL = "https://artifacts.example/agent/0.1.0/meshctl-0.1.0-py3-none-any.whl"
WHEELHOUSE = "https://artifacts.example/agent/0.1.0/meshctl-agent-wheelhouse-0.1.0-cp312.tar.gz"


def shared_outputs(**config: str) -> dict[str, Any]:
    """What the shared program exports for this config (run under mocks like the node stacks)."""
    result = run_program("dev", {f"meshctl-shared:{k}": v for k, v in config.items()}, program=ROOT / "stacks/shared")
    assert result["error"] is None, result.get("traceback")
    outputs: dict[str, Any] = result["outputs"]
    return outputs


def node_config(cloud: str) -> dict[str, Any]:
    cfg = stack_config(cloud)
    mesh = cfg["meshctl-stacks:mesh"]
    del mesh["controllerUrl"]
    mesh["sharedStack"] = SHARED
    mesh["regions"] = mesh["regions"][:2]
    return cfg


@pytest.mark.parametrize("cloud", ["aws", "gcp"])
def test_node_stacks_take_controller_url_and_agent_from_the_shared_stack(cloud: str) -> None:
    outputs = shared_outputs(
        controllerUrl=URL,
        agentWheelUrl=WHEEL,
        agentWheelSha256="a" * 64,
        agentWheelhouseUrl=WHEELHOUSE,
        agentWheelhouseSha256="b" * 64,
    )
    assert outputs["controllerUrl"] == URL and outputs["agentWheelUrl"] == WHEEL
    result = run_program(f"dev-{cloud}", node_config(cloud), {SHARED: outputs})
    assert result["error"] is None, result.get("traceback")
    (ref,) = of_type(result, "pulumi:pulumi:StackReference")
    assert ref["inputs"]["name"] == SHARED
    docs = user_data_docs(result)
    assert len(docs) >= 2
    for text, _ in docs:
        doc = yaml.safe_load(text)
        agent = yaml.safe_load(next(f["content"] for f in doc["write_files"] if f["path"] == "/etc/meshctl/agent.yaml"))
        assert agent["controller"] == URL, "the controller URL comes from the shared stack"
        installer = next(f["content"] for f in doc["write_files"] if f["path"].endswith("meshctl-install-agent"))
        assert f"WHEEL_URL={WHEEL}" in installer and f"WHEEL_SHA256={'a' * 64}" in installer
        assert f"WHEELHOUSE_URL={WHEELHOUSE}" in installer
    assert result["outputs"]["controllerUrl"] == URL


def test_a_reference_without_the_controller_url_fails_naming_the_stack_and_output() -> None:
    result = run_program("dev-aws", node_config("aws"), {SHARED: {"agentWheelUrl": WHEEL}})
    assert result["error"] is not None
    assert f"the shared stack {SHARED} has no output controllerUrl" in result["error"], result["error"]
    templates = of_type(result, "aws:ec2/launchTemplate:LaunchTemplate")
    assert all("userData" not in t["inputs"] for t in templates), "no node gets user data without a controller"


def test_a_bad_shared_output_is_refused_like_the_node_stacks_own_config() -> None:
    outputs = {"controllerUrl": URL, "agentWheelUrl": WHEEL.replace("https", "http"), "agentWheelSha256": "a" * 64}
    result = run_program("dev-gcp", node_config("gcp"), {SHARED: outputs})
    assert result["error"] is not None and f"output of the shared stack {SHARED}" in result["error"]
    assert "agentWheelUrl: must be an https:// URL" in result["error"], result["error"]


def test_a_key_the_shared_stack_provides_is_not_also_set_in_the_node_stack() -> None:
    from meshstack import registry
    from meshstack.model import StackConfigError, validate

    mesh = node_config("azure")["meshctl-stacks:mesh"]
    mesh["controllerUrl"] = URL
    with pytest.raises(StackConfigError, match=r"mesh\.controllerUrl: comes from the shared stack"):
        validate(mesh, registry.known_regions("azure"))
    mesh.pop("controllerUrl")
    mesh["sharedStack"] = "not a stack"
    with pytest.raises(StackConfigError, match=r"mesh\.sharedStack: 'not a stack' is not a stack name"):
        validate(mesh, registry.known_regions("azure"))


# --- a network stack: one cloud's networks and address pools ------------------------------------

NETWORK = "organization/meshctl-shared/dev-aws"
NETWORK_CONFIG = {
    "name": "media-mesh",
    "environment": "dev",
    "cloud": "aws",
    "regions": [{"region": "aws:us-east-1", "addresses": 4}, {"region": "aws:eu-west-1", "addresses": 1}],
}


def network_stack(network: dict[str, Any] = NETWORK_CONFIG) -> dict[str, Any]:
    result = run_program("dev-aws", {"meshctl-shared:network": network}, program=ROOT / "stacks/shared")
    assert result["error"] is None, result.get("traceback")
    return result


def node_with_network_stack(**mesh: Any) -> dict[str, Any]:
    cfg = stack_config("aws")
    cfg["meshctl-stacks:mesh"]["regions"] = cfg["meshctl-stacks:mesh"]["regions"][:2]  # us-east-1, eu-west-1
    cfg["meshctl-stacks:mesh"].update(networkStack=NETWORK, **mesh)
    return cfg


def test_a_network_stack_owns_each_regions_protected_network_and_address_pool() -> None:
    from meshstack.model import validate_network

    result = network_stack()
    networks = result["outputs"]["networks"]
    assert set(networks) == {"aws:us-east-1", "aws:eu-west-1"} and "controllerUrl" not in result["outputs"]
    for region_id, size in (("aws:us-east-1", 4), ("aws:eu-west-1", 1)):
        region = region_id.split(":", 1)[1]
        entry = networks[region_id]
        assert entry["pool"] == f"media-mesh-dev-{region}", "named as the node stacks of that mesh name their pools"
        (vpc,) = [v for v in of_type(result, "aws:ec2/vpc:Vpc") if v["inputs"]["region"] == region]
        assert vpc["protect"] and entry["vpcId"] == vpc["id"]
        subnets = [s for s in of_type(result, "aws:ec2/subnet:Subnet") if s["inputs"]["region"] == region]
        assert (
            sorted(entry["subnetIds"]) == sorted(s["id"] for s in subnets)
            and len({s["inputs"]["availabilityZone"] for s in subnets}) >= 2
        )
        assert all(s["inputs"]["vpcId"] == vpc["id"] for s in subnets)
        eips = [e for e in of_type(result, "aws:ec2/eip:Eip") if e["inputs"]["region"] == region]
        assert len(eips) == size and all(
            e["protect"] and e["inputs"]["tags"]["meshctl-pool"] == entry["pool"] for e in eips
        )
        assert sorted(entry["addresses"]) == sorted(e["ip"] for e in eips)  # the mocks record in completion order
        assert all(provider_defaults(result, r)["mesh-region"] == region_id for r in [vpc, *subnets, *eips])
    assert not of_type(result, "aws:autoscaling/group:Group"), "no node here"
    with pytest.raises(StackConfigError, match=r"network\.regions\[1\]\.region: 'aws:us-east-1' is listed twice"):
        validate_network(
            {**NETWORK_CONFIG, "regions": [{"region": "aws:us-east-1"}] * 2}, registry.known_regions("aws")
        )


def test_a_node_stack_runs_its_pools_in_the_network_stacks_networks_and_claims_from_its_pools() -> None:
    networks = network_stack()["outputs"]["networks"]
    result = run_program("dev-aws", node_with_network_stack(), {NETWORK: {"networks": networks}})
    assert result["error"] is None, result.get("traceback")
    (ref,) = of_type(result, "pulumi:pulumi:StackReference")
    assert ref["inputs"]["name"] == NETWORK
    for typ in ("vpc:Vpc", "subnet:Subnet", "eip:Eip", "internetGateway:InternetGateway", "routeTable:RouteTable"):
        assert not of_type(result, f"aws:ec2/{typ}"), f"{typ} belongs to the network stack"
    assert not [r for r in result["resources"] if r["protect"]], (
        "nothing protected left here: a node stack is disposable"
    )
    pools = {p["region"]: p for p in result["outputs"]["pools"]}
    for region_id, entry in networks.items():
        region = region_id.split(":", 1)[1]
        (sg,) = [g for g in of_type(result, "aws:ec2/securityGroup:SecurityGroup") if g["inputs"]["region"] == region]
        assert sg["inputs"]["vpcId"] == entry["vpcId"]
        (asg,) = [g for g in of_type(result, "aws:autoscaling/group:Group") if g["inputs"]["region"] == region]
        assert asg["inputs"]["vpcZoneIdentifiers"] == entry["subnetIds"]
        assert pools[region_id]["addresses"] == entry["addresses"]
        (lt,) = [t for t in of_type(result, "aws:ec2/launchTemplate:LaunchTemplate") if t["inputs"]["region"] == region]
        doc = yaml.safe_load(base64.b64decode(lt["inputs"]["userData"]).decode())
        assert doc["runcmd"][0][-1] == entry["pool"], "the nodes claim from the network stack's pool"
    policies = [json.loads(p["inputs"]["policy"]) for p in of_type(result, "aws:iam/rolePolicy:RolePolicy")]
    conditions = {
        s["Condition"]["StringEquals"].get("aws:ResourceTag/meshctl-pool") for p in policies for s in p["Statement"]
    }
    assert conditions - {None} == {e["pool"] for e in networks.values()}


@pytest.mark.parametrize(
    ("network", "message"),
    [
        ({**NETWORK_CONFIG, "regions": NETWORK_CONFIG["regions"][:1]}, "has no network for aws:eu-west-1"),
        (
            {**NETWORK_CONFIG, "regions": [{"region": "aws:us-east-1", "addresses": 3}, NETWORK_CONFIG["regions"][1]]},
            "holds 3 addresses for aws:us-east-1, maxNodes is 4",
        ),
        ({**NETWORK_CONFIG, "environment": "prod"}, "is tagged 'media-mesh-prod-"),
    ],
)
def test_a_node_stack_refuses_a_network_stack_that_does_not_fit_it(network: dict[str, Any], message: str) -> None:
    networks = network_stack(network)["outputs"]["networks"]
    result = run_program("dev-aws", node_with_network_stack(), {NETWORK: {"networks": networks}})
    assert result["error"] is not None and "mesh.networkStack: " in result["error"], result["error"]
    assert message in result["error"], result["error"]
