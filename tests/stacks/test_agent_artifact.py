"""The agent artifact as a node gets it: the wheel of this repository and the wheelhouse of its
`agent` extra (stacks/tools/agent_wheelhouse.py, as `make agent-wheel` runs it), installed by the
very install script cloud-init writes (downloads stubbed: `curl` copies local files), with pip in
hash-checking mode and no index. Needs the network to PyPI once (build backend, dependencies)."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml
from meshstack import cloudinit

from tests.stacks.artifacts import Artifacts, build_agent_artifacts, sha256

pytestmark = pytest.mark.slow

BASE = "https://artifacts.example/meshctl/0.1.0"
SERVER_ONLY = {"fastapi", "starlette", "uvicorn", "sqlalchemy", "alembic", "numba", "numpy", "scipy", "typer", "rich"}
STUB_CURL = r"""#!/bin/sh
# a stand-in for curl: `-o FILE URL` copies $ARTIFACTS/<basename of URL> to FILE
out=""; url=""
while [ $# -gt 0 ]; do
  case "$1" in -o) out="$2"; shift ;; --proto|--retry) shift ;; -*) ;; *) url="$1" ;; esac
  shift
done
cp "$ARTIFACTS/${url##*/}" "$out"
"""


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Artifacts:
    """`pip wheel --no-deps .` and the wheelhouse for this machine's Python and architecture."""
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    return build_agent_artifacts(tmp_path_factory.mktemp("dist"), py, os.uname().machine)


def install(artifacts: Artifacts, tmp: Path, wheelhouse_sha: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run the user data's install script with the stack naming these artifacts."""
    text = cloudinit.render(
        "https://c.example",
        "aws:us-east-1",
        f"{BASE}/{artifacts.wheel.name}",
        sha256(artifacts.wheel),
        wheelhouse_url=f"{BASE}/{artifacts.wheelhouse.name}",
        wheelhouse_sha256=wheelhouse_sha or sha256(artifacts.wheelhouse),
    )
    doc = yaml.safe_load(text)
    script = tmp / "meshctl-install-agent"
    script.write_text(next(f["content"] for f in doc["write_files"] if f["path"] == cloudinit.INSTALLER))
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    (bin_dir / "curl").write_text(STUB_CURL)
    (bin_dir / "systemctl").write_text('#!/bin/sh\necho "systemctl $*" >> "$SYSTEMCTL_LOG"\n')
    for stub in ("curl", "systemctl"):
        (bin_dir / stub).chmod(0o755)
    host_python = Path(sys.base_prefix) / "bin"  # python3 as on the node, not this test's venv
    env = {
        "PATH": f"{bin_dir}:{host_python}:/usr/bin:/bin",
        "ARTIFACTS": str(artifacts.dir),
        "MESHCTL_PREFIX": str(tmp / "opt-meshctl"),
        "SYSTEMCTL_LOG": str(tmp / "systemctl.log"),
        "HOME": str(tmp),
        "PIP_CONFIG_FILE": os.devnull,  # no index or find-links from this machine's pip config
    }
    return subprocess.run(["sh", str(script)], capture_output=True, text=True, env=env, timeout=180)


def test_wheelhouse_pins_every_dependency_by_hash(artifacts: Artifacts) -> None:
    with tarfile.open(artifacts.wheelhouse) as tar:
        names = tar.getnames()
        reqs = tar.extractfile("wheelhouse/requirements-agent.txt").read().decode()  # type: ignore[union-attr]
    wheels = [n for n in names if n.endswith(".whl")]
    assert wheels and all(n.startswith("wheelhouse/") for n in names)
    assert not any(Path(n).name.startswith("meshctl-") for n in wheels), "the agent wheel is published on its own"
    pinned = [line.split("==")[0] for line in reqs.splitlines() if "==" in line]
    assert {"httpx", "cryptography", "pyyaml", "prometheus-client"} <= set(pinned)
    assert not SERVER_ONLY & set(pinned) and "pydantic" not in pinned
    assert reqs.count("--hash=sha256:") >= len(wheels)
    sums = (artifacts.dir / "SHA256SUMS").read_text()
    assert f"{sha256(artifacts.wheel)}  {artifacts.wheel.name}" in sums
    assert f"{sha256(artifacts.wheelhouse)}  {artifacts.wheelhouse.name}" in sums


def test_node_installs_the_agent_hash_checked_and_nothing_of_the_server(artifacts: Artifacts, tmp_path: Path) -> None:
    r = install(artifacts, tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    prefix = tmp_path / "opt-meshctl"
    agent = subprocess.run([prefix / "bin" / "meshctl-agent", "--help"], capture_output=True, text=True, timeout=60)
    assert agent.returncode == 0 and "run" in agent.stdout and "rotate-key" in agent.stdout, agent.stderr
    listed = subprocess.run(
        [prefix / "bin" / "python", "-m", "pip", "list", "--format=freeze", "--disable-pip-version-check"],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    installed = {line.split("==")[0].lower() for line in listed.splitlines()}
    assert {"meshctl", "httpx", "cryptography"} <= installed
    assert not installed & SERVER_ONLY, installed & SERVER_ONLY
    assert (tmp_path / "systemctl.log").read_text().splitlines()[-1] == "systemctl enable --now meshctl-agent.service"
    # the unit starts the agent's own entry point (the operator CLI `meshctl` needs typer: not installed)
    assert "ExecStart=/opt/meshctl/bin/meshctl-agent run " in cloudinit.AGENT_UNIT


def test_a_wheelhouse_that_does_not_match_its_sha256_is_not_installed(artifacts: Artifacts, tmp_path: Path) -> None:
    r = install(artifacts, tmp_path, wheelhouse_sha="0" * 64)
    assert r.returncode == 1 and "sha256 mismatch" in r.stderr and artifacts.wheelhouse.name in r.stderr
    assert not (tmp_path / "opt-meshctl").exists() and not (tmp_path / "systemctl.log").exists()
