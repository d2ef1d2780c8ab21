"""The shared stack (stacks/shared) and the node stacks that read it through a StackReference:
under mocks that serve the referenced stack's outputs as the shared program exports them."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tests.stacks.conftest import ROOT, of_type, run_program, stack_config, user_data_docs

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
