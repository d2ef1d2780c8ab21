"""The Pulumi program under Pulumi's mocks (no cloud, no CLI), one process per run."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import rules
import yaml
from meshstack import cloudinit, registry
from meshstack.model import StackConfigError, pool_name, validate

from tests.stacks.conftest import (
    CLOUDS,
    POOL_TYPES,
    ROOT,
    of_type,
    provider_defaults,
    run_program,
    stack_config,
    user_data_docs,
)

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
    expected |= {(p, lo, hi, "::/0") for p, lo, hi, src in expected if src == "0.0.0.0/0"}  # IPv6 too
    expected |= {("tcp", 22, 22, c) for c in cfg["adminCidrs"]}
    assert inbound(cloud, result) == expected


def test_a_pool_per_region_sized_from_config_and_outputs(program: tuple[str, dict[str, Any]]) -> None:
    cloud, result = program
    cfg = stack_config(cloud)["meshctl-stacks:mesh"]
    pools = result["outputs"]["pools"]
    for spec in cfg["regions"]:
        mine = [p for p in pools if p["region"] == spec["region"]]
        assert mine and sum(p["nodes"] for p in mine) == spec["nodes"], mine
        assert {(p["minNodes"], p["maxNodes"]) for p in mine} == {
            (spec.get("minNodes", spec["nodes"]), spec.get("maxNodes", spec["nodes"]))
        }
    assert len(of_type(result, POOL_TYPES[cloud])) == len(pools)
    assert not of_type(
        result, {"aws": "aws:ec2/instance:Instance", "gcp": "gcp:compute/instance:Instance"}.get(cloud, "-")
    )
    assert not of_type(result, "azure-native:compute:VirtualMachine"), "VMs come from the pools only"
    components = [r for r in result["resources"] if r["type"] == f"meshctl:{cloud}:MediaRegion"]
    assert len(components) == len(cfg["regions"])


NETWORKS = {
    "aws": "aws:ec2/vpc:Vpc",
    "gcp": "gcp:compute/network:Network",
    "azure": "azure-native:network:VirtualNetwork",
}
ADDRESSES = {"aws": "aws:ec2/eip:Eip", "azure": "azure-native:network:PublicIPPrefix"}


def test_networks_and_address_pools_are_protected(program: tuple[str, dict[str, Any]]) -> None:
    """A `pulumi destroy` or a refactoring must not delete a network or the nodes' addresses by accident."""
    cloud, result = program
    networks = of_type(result, NETWORKS[cloud])
    assert networks and all(r["protect"] for r in networks)
    if cloud in ADDRESSES:
        addresses = of_type(result, ADDRESSES[cloud])
        assert addresses and all(r["protect"] for r in addresses)
    assert not all(r["protect"] for r in result["resources"]), "only what must not go by accident"


def test_tags_on_every_resource(program: tuple[str, dict[str, Any]]) -> None:
    cloud, result = program
    checked = set()
    for r in result["resources"]:
        problems = rules.required_tags(r["type"], r["inputs"], provider_defaults(result, r))
        assert problems == [], (r["type"], r["name"], problems)
        if r["type"] in rules.TAGGABLE:
            checked.add(r["type"])
    # at least what the nodes are made from: the pool (AWS, Azure) or its template (GCP), and more
    assert len(checked) >= {"aws": 6, "gcp": 1, "azure": 4}[cloud], checked


def test_cloud_init_joins_by_cloud_identity_with_no_secret(program: tuple[str, dict[str, Any]]) -> None:
    """The user data holds the controller URL and the mesh region only: no join token, no credential."""
    cloud, result = program
    cfg = stack_config(cloud)["meshctl-stacks:mesh"]
    settings = validate(cfg, registry.known_regions(cloud))
    docs = user_data_docs(result)
    assert docs
    for text, _secret in docs:
        assert text.startswith("#cloud-config\n")
        assert "msh_" not in text and "join_token" not in text, "no bearer secret in user data"
        doc = yaml.safe_load(text)
        agent = yaml.safe_load(next(f["content"] for f in doc["write_files"] if f["path"] == "/etc/meshctl/agent.yaml"))
        assert set(agent) == {"controller", "region", "join", "endpoint", "interface", "state_dir"}, agent
        assert agent["join"] == "attested" and agent["controller"] == cfg["controllerUrl"]
        assert agent["region"].startswith(f"{cloud}:")
        assert next(f for f in doc["write_files"] if f["path"] == "/etc/meshctl/agent.yaml")["permissions"] == "0600"
        # AWS nodes (staticAddresses, the default) first claim a free Elastic IP of their region's pool
        claim = [[cloudinit.ADDRESS_CLAIMER, "--pool", pool_name(settings, agent["region"])]] if cloud == "aws" else []
        assert doc["runcmd"] == [*claim, [cloudinit.INSTALLER]]
        installer = next(f for f in doc["write_files"] if f["path"] == cloudinit.INSTALLER)
        assert installer["content"].rstrip().endswith("systemctl enable --now meshctl-agent.service")
        assert "wireguard-tools" in doc["packages"]


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
    # together the whole internet: refused like 0.0.0.0/0 itself
    (lambda m: m.update(adminCidrs=["0.0.0.0/1", "128.0.0.0/1"]), "meshctl-stacks:mesh.adminCidrs", "aws"),
    (lambda m: m.update(adminCidrs=["10.0.0.0/8", "::/1", "8000::/1"]), "meshctl-stacks:mesh.adminCidrs", "gcp"),
    (
        lambda m: m.update(adminCidrs=[str(n) for n in __import__("ipaddress").ip_network("0.0.0.0/0").subnets(3)]),
        "meshctl-stacks:mesh.adminCidrs",
        "azure",
    ),
    # GCP instance names: at most 63 characters
    (lambda m: m.update(name="a" * 32, environment="staging-eu-west"), "meshctl-stacks:mesh.name", "gcp"),
    (lambda m: m.update(agentWheelUrl="https://x.example/meshctl-1.0-py3-none-any.whl"), "agentWheelSha256", "aws"),
    (lambda m: m.update(agentWheelSha256="ab" * 32), "agentWheelUrl", "aws"),
    (lambda m: m.update(agentWheelUrl="http://x.example/a.whl", agentWheelSha256="ab" * 32), "agentWheelUrl", "gcp"),
    (lambda m: m.update(agentWheelUrl="https://x.example/a.whl", agentWheelSha256="XYZ"), "agentWheelSha256", "gcp"),
    # the wheel without its wheelhouse (or the reverse) cannot install with --no-index
    (
        lambda m: m.update(agentWheelUrl="https://x.example/a.whl", agentWheelSha256="ab" * 32),
        "agentWheelhouseUrl",
        "aws",
    ),
    (
        lambda m: m.update(agentWheelhouseUrl="https://x.example/w.zip", agentWheelhouseSha256="ab" * 32),
        "agentWheelhouseUrl",
        "azure",
    ),
    # pool bounds
    (lambda m: m["regions"][0].update(nodes=2, minNodes=3), "meshctl-stacks:mesh.regions[0].minNodes", "aws"),
    (lambda m: m["regions"][0].update(nodes=2, maxNodes=1), "meshctl-stacks:mesh.regions[0].maxNodes", "azure"),
    (lambda m: m["regions"][1].update(spotPercent=120), "meshctl-stacks:mesh.regions[1].spotPercent", "aws"),
    (lambda m: m["regions"][1].update(onDemandBase=5), "meshctl-stacks:mesh.regions[1].onDemandBase", "aws"),
]


@pytest.mark.parametrize(("breaks", "setting", "cloud"), BAD)
def test_validation_names_the_setting(breaks: Any, setting: str, cloud: str) -> None:
    from meshstack import registry

    mesh = copy.deepcopy(stack_config(cloud)["meshctl-stacks:mesh"])
    breaks(mesh)
    with pytest.raises(StackConfigError) as err:
        validate(mesh, registry.known_regions(mesh["cloud"]))
    assert setting in str(err.value)


def test_bad_config_fails_before_any_resource() -> None:
    cfg = stack_config("aws")
    cfg["meshctl-stacks:mesh"]["regions"][0]["nodes"] = 0
    result = run_program("dev-aws", cfg)
    assert "meshctl-stacks:mesh.regions[0].nodes" in result["error"]
    assert [r for r in result["resources"] if not r["type"].startswith("pulumi:")] == []


def test_cloud_init_renders_valid_yaml() -> None:
    doc = yaml.safe_load(cloudinit.render("https://c.example/a: b#x", "aws:us-east-1"))
    agent = yaml.safe_load(doc["write_files"][0]["content"])
    assert agent["controller"] == "https://c.example/a: b#x" and agent["endpoint"] == "auto"


def test_node_names_fit_gcp_63_characters() -> None:
    """A GCP pool names its VMs <base_instance_name>-<4 characters>: the base is at most 58."""
    from meshstack import registry
    from meshstack.model import pool_name

    mesh = copy.deepcopy(stack_config("gcp")["meshctl-stacks:mesh"])
    mesh.update(name="m" * 17, environment="e" * 16)
    mesh["regions"] = [{"region": "gcp:northamerica-northeast2", "nodes": 100}]
    settings = validate(mesh, registry.known_regions("gcp"))  # 17+1+16+1+23 = 58, +5 = 63
    assert len(pool_name(settings, "gcp:northamerica-northeast2")) + 5 == 63
    mesh["name"] = "m" * 18
    with pytest.raises(StackConfigError, match=r"mesh\.name: node names would be 64 characters"):
        validate(mesh, registry.known_regions("gcp"))


def test_admin_cidrs_split_by_address_family_never_empty() -> None:
    from meshstack import registry
    from meshstack.model import firewall_rules

    mesh = copy.deepcopy(stack_config("gcp")["meshctl-stacks:mesh"])
    mesh["adminCidrs"] = ["2001:db8::/32"]  # IPv6 only
    rules_ = firewall_rules(validate(mesh, registry.known_regions("gcp")))
    import ipaddress

    for rule in rules_:
        assert rule.sources, rule
        assert {ipaddress.ip_network(s).version for s in rule.sources} == {rule.family}, rule
    ssh = [r for r in rules_ if r.from_port == 22]
    assert [(r.family, r.sources) for r in ssh] == [(6, ("2001:db8::/32",))]


def test_agent_unit_read_write_paths_may_be_missing() -> None:
    doc = yaml.safe_load(cloudinit.render("https://c.example", "aws:us-east-1"))
    unit = next(f["content"] for f in doc["write_files"] if f["path"].endswith("meshctl-agent.service"))
    entries = [e for line in unit.splitlines() if line.startswith("ReadWritePaths=") for e in line[15:].split()]
    assert "-/run/wireguard" in entries and "-/var/run/wireguard" in entries
    assert all(e.startswith("-") for e in entries), entries  # else 226/NAMESPACE when one is missing


def test_agent_install_is_pinned_and_hash_checked() -> None:
    url, digest = "https://artifacts.example/meshctl-1.2.3-py3-none-any.whl", "0f" * 32
    house, house_digest = "https://artifacts.example/meshctl-agent-wheelhouse-1.2.3-cp312.tar.gz", "1e" * 32
    doc = yaml.safe_load(
        cloudinit.render(
            "https://c.example",
            "aws:us-east-1",
            url,
            digest,
            wheelhouse_url=house,
            wheelhouse_sha256=house_digest,
        )
    )
    text = json.dumps(doc)
    assert "pip install meshctl" not in text and 'install", "--quiet", "meshctl' not in text
    script = next(f["content"] for f in doc["write_files"] if f["path"] == cloudinit.INSTALLER)
    assert f"WHEEL_URL={url}" in script and f"WHEEL_SHA256={digest}" in script
    assert f"WHEELHOUSE_URL={house}" in script and f"WHEELHOUSE_SHA256={house_digest}" in script
    assert script.count("sha256sum -c --status -") == 2 and script.rindex("sha256sum") < script.index('pip" install')
    assert "--no-index --require-hashes" in script and "meshctl[agent] @ file://%s --hash=sha256:%s" in script
    assert "set -eu" in script


def test_agent_install_without_a_wheel_fails_the_boot_clearly(tmp_path: Path) -> None:
    doc = yaml.safe_load(cloudinit.render("https://c.example", "aws:us-east-1"))
    script = tmp_path / "install"
    script.write_text(next(f["content"] for f in doc["write_files"] if f["path"] == cloudinit.INSTALLER))
    r = subprocess.run(["sh", str(script)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 1
    assert "agentWheelUrl" in r.stderr and "another project" in r.stderr


def test_user_data_passes_cloud_init_schema(program: tuple[str, dict[str, Any]], tmp_path: Path) -> None:
    """Debian's cloud-init validates what each cloud's nodes get (`cloud-init schema --config-file`)."""
    binary = shutil.which("cloud-init")
    if binary is None:
        pytest.skip("cloud-init is not installed (scripts/setup-system.sh --test installs it)")
    cloud, result = program
    docs = {text for text, _ in user_data_docs(result)}
    assert docs
    for n, text in enumerate(sorted(docs)):
        path = tmp_path / f"{cloud}-{n}.yaml"
        path.write_text(text)
        r = subprocess.run([binary, "schema", "--config-file", str(path)], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and "Valid cloud-config" in r.stdout, r.stdout + r.stderr


def test_the_agent_reads_the_config_the_user_data_writes(tmp_path: Path) -> None:
    """What cloud-init writes is what `meshctl-agent run --config` takes: attested join, no token."""
    from probes.config import load

    doc = yaml.safe_load(cloudinit.render("https://ctl.example:8080", "gcp:europe-west1"))
    agent_yaml = next(f for f in doc["write_files"] if f["path"] == "/etc/meshctl/agent.yaml")
    path = tmp_path / "agent.yaml"
    path.write_text(agent_yaml["content"])
    cfg = load({}, path, env={})
    assert (cfg.join, cfg.controller, cfg.region, cfg.join_token) == (
        "attested",
        "https://ctl.example:8080",
        "gcp:europe-west1",
        None,
    )
