"""`meshctl` as a person runs it: a real process against a real controller process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ControllerProcess, free_port

A, B, C = "aws:us-east-1", "gcp:us-east4", "azure:westeurope"


def run(
    ctl: ControllerProcess | None,
    *args: str,
    token: str | None = None,
    env: dict[str, str] | None = None,
    tmp: Path | None = None,
    timeout: float = 30,
) -> subprocess.CompletedProcess[str]:
    e = dict(os.environ)
    e.pop("MESHCTL_CONTROLLER", None)
    e.pop("MESHCTL_TOKEN", None)
    e["MESHCTL_CONFIG"] = str((tmp or Path("/tmp")) / "meshctl-test-config.yaml")
    e["COLUMNS"] = "80"
    e.update(env or {})
    pre: list[str] = []
    if ctl is not None:
        pre = ["--controller", ctl.url, "--token", ctl.admin_token if token is None else token]
    return subprocess.run(
        [sys.executable, "-m", "meshctl", *pre, *args], capture_output=True, text=True, env=e, timeout=timeout
    )


@pytest.fixture
def mesh(controller: ControllerProcess) -> ControllerProcess:
    controller.feed_links({(A, B): 20.0, (B, A): 20.0, (B, C): 20.0, (C, B): 20.0, (A, C): 100.0, (C, A): 100.0})
    controller.wait_for(  # every region's report in: both ways relayed
        lambda: (
            controller.client().get(f"/v1/routes/{A}/{C}").json()["path"] == [A, B, C]
            and controller.client().get(f"/v1/routes/{C}/{A}").json()["path"] == [C, B, A]
        ),
        what="routes",
    )
    return controller


def test_main_flows(mesh: ControllerProcess, tmp_path: Path) -> None:
    r = run(mesh, "status", tmp=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "generation" in r.stdout and A in r.stdout and "active" in r.stdout

    r = run(mesh, "-o", "json", "regions", "list", tmp=tmp_path)
    assert r.returncode == 0, r.stderr
    with mesh.client() as c:
        stable = ("id", "cloud", "lat", "lon", "metro", "state", "drain", "nodes_total")
        api = [{k: x[k] for k in stable} for x in c.get("/v1/regions").json()]
    assert [{k: x[k] for k in stable} for x in json.loads(r.stdout)] == api

    r = run(mesh, "route", A, C, "--explain", tmp=tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"{A} -> {B} -> {C}" in r.stdout and "candidates" in r.stdout and "why:" in r.stdout

    r = run(mesh, "-o", "json", "route", A, C, tmp=tmp_path)
    assert json.loads(r.stdout)["path"] == [A, B, C]

    r = run(mesh, "drain", B, "--reason", "maintenance window", "--dry-run", tmp=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "dry run" in r.stdout and "routes that would move" in r.stdout
    moved = next(line for line in r.stdout.splitlines() if A in line and C in line)
    assert f"via {B}" in moved and "direct" in moved
    preview = json.loads(run(mesh, "-o", "json", "drain", B, "--reason", "x", "--dry-run", tmp=tmp_path).stdout)
    assert {"src": A, "dst": C, "before": [A, B, C], "after": [A, C]} in preview["routes_changed"]
    with mesh.client() as c:
        assert c.get(f"/v1/regions/{B}").json()["state"] == "active"

    r = run(mesh, "drain", B, "--reason", "maintenance window", tmp=tmp_path)
    assert r.returncode == 0 and "drained" in r.stdout, r.stderr
    r = run(mesh, "status", tmp=tmp_path)
    assert "maintenance window" in r.stdout
    first_region_line = next(
        line for line in r.stdout.splitlines() if ":" in line and ("aws" in line or "gcp" in line or "azure" in line)
    )
    assert B in first_region_line, "drained regions come first"
    assert json.loads(run(mesh, "-o", "json", "route", A, C, tmp=tmp_path).stdout)["path"] == [A, C]

    r = run(mesh, "undrain", B, tmp=tmp_path)
    assert r.returncode == 0 and "active" in r.stdout

    r = run(mesh, "-o", "json", "events", "--limit", "200", tmp=tmp_path)
    kinds = [e["kind"] for e in json.loads(r.stdout)]
    assert "drain" in kinds and "undrain" in kinds and "join" in kinds

    r = run(mesh, "-o", "yaml", "placement", "--near", A, tmp=tmp_path)
    assert r.returncode == 0 and f"region: {A}" in r.stdout


def test_tokens_and_join_tokens(controller: ControllerProcess, tmp_path: Path) -> None:
    controller.add_region(A)
    r = run(controller, "-o", "json", "tokens", "create", "--scope", "reader", "--name", "grafana", tmp=tmp_path)
    assert r.returncode == 0, r.stderr
    created = json.loads(r.stdout)
    assert created["token"].startswith("msh_r_") and created["scope"] == "reader"
    listed = json.loads(run(controller, "-o", "json", "tokens", "list", tmp=tmp_path).stdout)
    assert any(t["id"] == created["id"] for t in listed) and all("token" not in t for t in listed)
    assert run(controller, "status", token=created["token"], tmp=tmp_path).returncode == 0
    assert run(controller, "tokens", "revoke", created["id"], tmp=tmp_path).returncode == 0
    r = run(controller, "status", token=created["token"], tmp=tmp_path)
    assert r.returncode == 5 and "refused" in r.stderr
    r = run(
        controller, "-o", "json", "join-tokens", "create", "--region", A, "--ttl", "600", "--uses", "2", tmp=tmp_path
    )
    assert r.returncode == 0 and json.loads(r.stdout)["uses_left"] == 2


def test_overlay_render(controller: ControllerProcess, tmp_path: Path) -> None:
    controller.add_region(A)
    controller.add_region(B)
    a = controller.join_node(A)
    b = controller.join_node(B)
    r = run(controller, "overlay", "render", a["node_id"], tmp=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "PrivateKey = <PRIVATE_KEY" in r.stdout and f"AllowedIPs = {b['overlay_ip']}/32" in r.stdout
    assert f"Address = {a['overlay_ip']}/12" in r.stdout


def test_contexts(controller: ControllerProcess, tmp_path: Path) -> None:
    assert (
        run(
            None,
            "config",
            "set-context",
            "lab",
            "--controller",
            controller.url,
            "--token",
            controller.admin_token,
            tmp=tmp_path,
        ).returncode
        == 0
    )
    assert run(None, "config", "use-context", "lab", tmp=tmp_path).returncode == 0
    r = run(None, "status", tmp=tmp_path)
    assert r.returncode == 0, r.stderr
    cfg = tmp_path / "meshctl-test-config.yaml"
    assert oct(cfg.stat().st_mode & 0o777) == "0o600"
    r = run(None, "-o", "json", "config", "get-contexts", tmp=tmp_path)
    assert json.loads(r.stdout) == [{"name": "lab", "current": True, "controller": controller.url, "token": "set"}]
    r = run(None, "status", tmp=tmp_path, env={"MESHCTL_TOKEN": "msh_a_wrong-token-xxxxxxxxxxxxxxxxxxxxxxxxx"})
    assert r.returncode == 5, "the environment overrides the context"


ERRORS = [
    # (args, token, expected exit code, words in stderr)
    (["status"], "", 5, ["no token given", "MESHCTL_TOKEN"]),
    (["status"], "msh_a_bad-token-xxxxxxxxxxxxxxxxxxxxxxxxxxxxx", 5, ["token was refused"]),
    (["regions", "show", "aws:mars-1"], None, 6, ["unknown region 'aws:mars-1'", "meshctl regions list"]),
    (["route", "aws:mars-1", A], None, 6, ["unknown region"]),
    (["drain", "aws:mars-1", "--reason", "x"], None, 6, ["unknown region"]),
    (["undrain", A], None, 7, ["not drained"]),
]


@pytest.mark.parametrize(("args", "token", "code", "words"), ERRORS)
def test_errors_are_one_clear_line(
    controller: ControllerProcess, tmp_path: Path, args: list[str], token: str | None, code: int, words: list[str]
) -> None:
    controller.add_region(A)
    r = run(controller, *args, token=token, tmp=tmp_path)
    assert r.returncode == code, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr + r.stdout
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    for w in words:
        assert w in r.stderr


def test_wrong_scope(controller: ControllerProcess, tmp_path: Path) -> None:
    controller.add_region(A)
    with controller.client() as c:
        reader = c.post("/v1/tokens", json={"name": "r", "scope": "reader"}).json()["token"]
    r = run(controller, "drain", A, "--reason", "x", token=reader, tmp=tmp_path)
    assert r.returncode == 5 and "operator" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_unreachable_controller(tmp_path: Path) -> None:
    r = run(None, "--controller", f"http://127.0.0.1:{free_port()}", "--token", "x", "status", tmp=tmp_path)
    assert r.returncode == 4
    assert "cannot reach the controller" in r.stderr and "MESHCTL_CONTROLLER" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_broken_config_file(tmp_path: Path) -> None:
    (tmp_path / "meshctl-test-config.yaml").write_text("contexts: [unclosed\n")
    r = run(None, "status", tmp=tmp_path)
    assert r.returncode == 1 and "meshctl-test-config.yaml" in r.stderr and "Traceback" not in r.stderr


def test_follow_exits_cleanly_on_ctrl_c(controller: ControllerProcess, tmp_path: Path) -> None:
    controller.add_region(A)
    e = dict(os.environ, MESHCTL_CONFIG=str(tmp_path / "c.yaml"))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "meshctl",
            "--controller",
            controller.url,
            "--token",
            controller.admin_token,
            "events",
            "--follow",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=e,
        # as from a terminal: a pytest-xdist worker ignores SIGINT, and children inherit that
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    time.sleep(2.0)
    with controller.client() as c:
        c.post(f"/v1/regions/{A}/drain", json={"reason": "followed"}).raise_for_status()
    time.sleep(1.5)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=10)
    assert proc.returncode == 0, stderr
    assert "followed" in stdout
    assert "Traceback" not in stderr
