"""The Pulumi program under Pulumi's mocks (no cloud, no CLI), one process per run."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "stacks"))
sys.path.insert(0, str(ROOT / "stacks" / "policy"))

import rules  # noqa: E402
from meshstack import cloudinit  # noqa: E402
from meshstack.model import StackConfigError, validate  # noqa: E402

TOKEN = "msh_j_THE-JOIN-TOKEN-must-stay-secret"
SECRET_SIG = "4dabf18193072939515e22adb298388d"
CLOUDS = ("aws", "gcp", "azure")


def stack_config(cloud: str) -> dict[str, Any]:
    cfg = yaml.safe_load((ROOT / "stacks" / f"Pulumi.dev-{cloud}.yaml").read_text())["config"]
    cfg["meshctl-stacks:joinToken"] = TOKEN
    return cfg


def run_program(stack: str, config: dict[str, Any]) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "stacks" / "mockrun.py"), stack, json.dumps(config)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def unsecret(value: Any) -> tuple[Any, bool]:
    if isinstance(value, dict) and SECRET_SIG in value:
        return value["value"], True
    return value, False


@pytest.fixture(scope="module", params=CLOUDS)
def program(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    result = run_program(f"dev-{request.param}", stack_config(request.param))
    assert result["error"] is None, result.get("traceback")
    return request.param, result


def of_type(result: dict[str, Any], typ: str) -> list[dict[str, Any]]:
    return [r for r in result["resources"] if r["type"] == typ]


EXPECTED_OPEN = {
    ("udp", 51820, 51820, "0.0.0.0/0"),
    ("udp", 10000, 20000, "0.0.0.0/0"),
}


def inbound(cloud: str, result: dict[str, Any]) -> set[tuple[str, int, int, str]]:
    found: set[tuple[str, int, int, str]] = set()
    if cloud == "aws":
        for r in of_type(result, "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"):
            p = r["inputs"]
            found.add((p["ipProtocol"], int(p["fromPort"]), int(p["toPort"]), p.get("cidrIpv4") or p["cidrIpv6"]))
        assert not any("ingress" in r["inputs"] for r in of_type(result, "aws:ec2/securityGroup:SecurityGroup"))
    elif cloud == "gcp":
        for r in of_type(result, "gcp:compute/firewall:Firewall"):
            p = r["inputs"]
            assert p["direction"] == "INGRESS" and p["targetTags"]
            for allow in p["allows"]:
                for spec in allow["ports"]:
                    lo, _, hi = spec.partition("-")
                    for src in p["sourceRanges"]:
                        found.add((allow["protocol"], int(lo), int(hi or lo), src))
    else:
        for r in of_type(result, "azure-native:network:NetworkSecurityGroup"):
            for rule in r["inputs"]["securityRules"]:
                assert rule["direction"] == "Inbound" and rule["access"] == "Allow"
                lo, _, hi = rule["destinationPortRange"].partition("-")
                for src in rule["sourceAddressPrefixes"]:
                    found.add((rule["protocol"].lower(), int(lo), int(hi or lo), src))
    return found


def test_firewall_opens_exactly_wireguard_media_and_admin_ssh(program: tuple[str, dict[str, Any]]) -> None:
    cloud, result = program
    cfg = stack_config(cloud)["meshctl-stacks:mesh"]
    expected = {("udp", 51820, 51820, "0.0.0.0/0")}
    for p in cfg["mediaPorts"]:
        expected.add((p["protocol"], p["from"], p["to"], "0.0.0.0/0"))
    expected |= {("tcp", 22, 22, c) for c in cfg["adminCidrs"]}
    if cloud != "gcp":  # GCP rules take one address family; the others open IPv6 too
        expected |= {(p, lo, hi, "::/0") for p, lo, hi, src in expected if src == "0.0.0.0/0"}
    assert inbound(cloud, result) == expected


def test_node_count_per_region_and_outputs(program: tuple[str, dict[str, Any]]) -> None:
    cloud, result = program
    cfg = stack_config(cloud)["meshctl-stacks:mesh"]
    instance_type = {
        "aws": "aws:ec2/instance:Instance",
        "gcp": "gcp:compute/instance:Instance",
        "azure": "azure-native:compute:VirtualMachine",
    }[cloud]
    assert len(of_type(result, instance_type)) == sum(r["nodes"] for r in cfg["regions"])
    nodes = result["outputs"]["nodes"]
    for spec in cfg["regions"]:
        assert sum(1 for n in nodes if n["region"] == spec["region"]) == spec["nodes"]
    assert all(n["public_ip"].startswith("203.0.113.") and n["name"] for n in nodes)
    components = [r for r in result["resources"] if r["type"] == f"meshctl:{cloud}:MediaRegion"]
    assert len(components) == len(cfg["regions"])


def test_tags_on_every_resource(program: tuple[str, dict[str, Any]]) -> None:
    _, result = program
    checked = 0
    for r in result["resources"]:
        problems = rules.required_tags(r["type"], r["inputs"])
        assert problems == [], (r["type"], r["name"], problems)
        checked += r["type"] in rules.TAGGABLE
    assert checked >= 5


def test_cloud_init_joins_with_the_token_and_token_stays_secret(program: tuple[str, dict[str, Any]]) -> None:
    cloud, result = program
    cfg = stack_config(cloud)["meshctl-stacks:mesh"]
    docs = []
    for r in result["resources"]:
        p = r["inputs"]
        if r["type"] == "aws:ec2/instance:Instance":
            docs.append(unsecret(p["userData"]))
        elif r["type"] == "gcp:compute/instance:Instance":
            docs.append(
                unsecret(p["metadata"]["user-data"])
                if not unsecret(p["metadata"])[1]
                else (unsecret(p["metadata"])[0]["user-data"], True)
            )
        elif r["type"] == "azure-native:compute:VirtualMachine":
            profile, secret = unsecret(p["osProfile"])
            import base64

            docs.append((base64.b64decode(profile["customData"]).decode(), secret))
    assert docs
    for text, secret in docs:
        assert secret, "user data must be a Pulumi secret"
        assert text.startswith("#cloud-config\n")
        doc = yaml.safe_load(text)
        agent = yaml.safe_load(next(f["content"] for f in doc["write_files"] if f["path"] == "/etc/meshctl/agent.yaml"))
        assert agent["join_token"] == TOKEN and agent["controller"] == cfg["controllerUrl"]
        assert agent["region"].startswith(f"{cloud}:")
        assert next(f for f in doc["write_files"] if f["path"] == "/etc/meshctl/agent.yaml")["permissions"] == "0600"
        assert ["systemctl", "enable", "--now", "meshctl-agent.service"] in doc["runcmd"]
        assert "wireguard-tools" in doc["packages"]
    assert TOKEN not in json.dumps(result["outputs"])
    for r in result["resources"]:
        for field in ("tags", "labels"):
            assert TOKEN not in json.dumps(r["inputs"].get(field, {}))


def test_three_clouds_three_regions_each_under_15_s() -> None:
    start = time.monotonic()
    procs = []
    for cloud in CLOUDS:
        cfg = stack_config(cloud)
        assert len(cfg["meshctl-stacks:mesh"]["regions"]) >= 3
        procs.append(
            subprocess.Popen(
                [sys.executable, str(ROOT / "tests" / "stacks" / "mockrun.py"), f"dev-{cloud}", json.dumps(cfg)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    results = [json.loads(p.communicate(timeout=60)[0].strip().splitlines()[-1]) for p in procs]
    elapsed = time.monotonic() - start
    print(f"\n[stacks] three clouds x 3 regions under mocks: {elapsed:.1f} s")
    assert all(r["error"] is None for r in results)
    assert elapsed < 15.0


# --- validation: one clear error naming the setting, before any resource -------------------

BAD = [
    (lambda m: m["regions"][0].update(region="aws:mars-1"), "meshctl-stacks:mesh.regions[0].region", "aws"),
    (lambda m: m["regions"][1].update(region="gcp:us-central1"), "meshctl-stacks:mesh.regions[1].region", "aws"),
    (lambda m: m["regions"][0].update(nodes=0), "meshctl-stacks:mesh.regions[0].nodes", "gcp"),
    (lambda m: m["regions"][2].update(nodes=-2), "meshctl-stacks:mesh.regions[2].nodes", "azure"),
    (lambda m: m.update(adminCidrs=["0.0.0.0/0"]), "meshctl-stacks:mesh.adminCidrs[0]", "aws"),
    (lambda m: m.update(adminCidrs=["::/0"]), "meshctl-stacks:mesh.adminCidrs[0]", "azure"),
    (lambda m: m.pop("controllerUrl"), "meshctl-stacks:mesh.controllerUrl", "gcp"),
    (lambda m: m.update(cloud="oracle"), "meshctl-stacks:mesh.cloud", "aws"),
    (lambda m: m.update(mediaPorts=[{"protocol": "tcp", "from": 1, "to": 1024}]), "mediaPorts[0]", "aws"),
]


@pytest.mark.parametrize(("breaks", "setting", "cloud"), BAD)
def test_validation_names_the_setting(breaks: Any, setting: str, cloud: str) -> None:
    from meshstack import registry

    mesh = copy.deepcopy(stack_config(cloud)["meshctl-stacks:mesh"])
    breaks(mesh)
    with pytest.raises(StackConfigError) as err:
        validate(mesh, registry.known_regions(mesh["cloud"]))
    assert setting in str(err.value)


def test_missing_token_and_bad_config_fail_before_any_resource() -> None:
    cfg = stack_config("aws")
    del cfg["meshctl-stacks:joinToken"]
    result = run_program("dev-aws", cfg)
    assert "meshctl-stacks:joinToken" in result["error"]
    assert [r for r in result["resources"] if not r["type"].startswith("pulumi:")] == []
    cfg = stack_config("aws")
    cfg["meshctl-stacks:mesh"]["regions"][0]["nodes"] = 0
    result = run_program("dev-aws", cfg)
    assert "meshctl-stacks:mesh.regions[0].nodes" in result["error"]
    assert [r for r in result["resources"] if not r["type"].startswith("pulumi:")] == []


def test_cloud_init_renders_valid_yaml() -> None:
    doc = yaml.safe_load(cloudinit.render("https://c.example", "aws:us-east-1", "tok: with: colons\n#x"))
    agent = yaml.safe_load(doc["write_files"][0]["content"])
    assert agent["join_token"] == "tok: with: colons\n#x" and agent["endpoint"] == "auto"
