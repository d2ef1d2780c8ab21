"""Helpers for the stacks tests: run the Pulumi program under mocks (one process per run)."""

from __future__ import annotations

import base64
import fcntl
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
for extra in (ROOT / "stacks", ROOT / "stacks" / "policy"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

SECRET_SIG = "4dabf18193072939515e22adb298388d"
CLOUDS = ("aws", "gcp", "azure")
POOL_TYPES = {
    "aws": "aws:autoscaling/group:Group",
    "gcp": "gcp:compute/regionInstanceGroupManager:RegionInstanceGroupManager",
    "azure": "azure-native:compute:VirtualMachineScaleSet",
}


def stack_config(cloud: str) -> dict[str, Any]:
    cfg: dict[str, Any] = yaml.safe_load((ROOT / "stacks" / f"Pulumi.dev-{cloud}.yaml").read_text())["config"]
    return cfg


def run_program(
    stack: str,
    config: dict[str, Any],
    stack_outputs: dict[str, dict[str, Any]] | None = None,
    program: Path = ROOT / "stacks",
) -> dict[str, Any]:
    """The program under mocks; `stack_outputs` are what StackReferences to those stacks read."""
    argv = [stack, json.dumps(config), json.dumps(stack_outputs or {}), str(program)]
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "stacks" / "mockrun.py"), *argv],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def unsecret(value: Any) -> tuple[Any, bool]:
    if isinstance(value, dict) and SECRET_SIG in value:
        return value["value"], True
    return value, False


def plain(value: Any) -> Any:
    """The value with every Pulumi secret wrapper removed (as a policy pack sees it)."""
    value, _ = unsecret(value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def of_type(result: dict[str, Any], typ: str) -> list[dict[str, Any]]:
    return [r for r in result["resources"] if r["type"] == typ]


def provider_of(result: dict[str, Any], resource: dict[str, Any]) -> dict[str, Any] | None:
    """The explicit provider resource a resource was made with (None: the default provider)."""
    ref = resource.get("provider")
    if not ref:
        return None
    urn, _, pid = ref.rpartition("::")
    name = urn.rsplit("::", 1)[-1]
    found = [r for r in result["resources"] if r["type"].startswith("pulumi:providers:") and r["name"] == name]
    assert len(found) == 1 and found[0]["id"] == pid, (ref, found)
    return found[0]


def provider_defaults(result: dict[str, Any], resource: dict[str, Any]) -> dict[str, str]:
    """The default tags (AWS) or labels (GCP) the resource's provider gives it, as the policy pack reads them."""
    import rules

    provider = provider_of(result, resource)
    return rules.provider_defaults(provider["type"], plain(provider["inputs"])) if provider else {}


def user_data_docs(result: dict[str, Any]) -> list[tuple[str, bool]]:
    """(cloud-init text, was it a secret) for every node template of the run."""
    docs = []
    for r in result["resources"]:
        p = r["inputs"]
        if r["type"] == "aws:ec2/launchTemplate:LaunchTemplate":
            encoded, secret = unsecret(p["userData"])
            docs.append((base64.b64decode(encoded).decode(), secret))
        elif r["type"] == "gcp:compute/instanceTemplate:InstanceTemplate":
            meta, whole = unsecret(p["metadata"])
            text, secret = unsecret(meta["user-data"])
            docs.append((text, secret or whole))
        elif r["type"] == "azure-native:compute:VirtualMachineScaleSet":
            profile, whole = unsecret(p["virtualMachineProfile"])
            os_profile, secret = unsecret(profile["osProfile"])
            docs.append((base64.b64decode(plain(os_profile)["customData"]).decode(), secret or whole))
    return docs


@pytest.fixture(scope="session", params=CLOUDS)
def program(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, worker_id: str
) -> tuple[str, dict[str, Any]]:
    """The dev stack of one cloud under mocks, run once per test session (shared by xdist workers)."""
    cloud = request.param
    if worker_id == "master":
        result = run_program(f"dev-{cloud}", stack_config(cloud))
    else:  # the session's temp root is shared by its workers: the first one runs, the others read
        cache = tmp_path_factory.getbasetemp().parent / f"stacks-program-{cloud}.json"
        with open(f"{cache}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if cache.is_file():
                result = json.loads(cache.read_text())
            else:
                result = run_program(f"dev-{cloud}", stack_config(cloud))
                cache.write_text(json.dumps(result))
    assert result["error"] is None, result.get("traceback")
    return cloud, result
