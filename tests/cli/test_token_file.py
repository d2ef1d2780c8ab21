"""No secret on a command line: `--token-file` (and MESHCTL_TOKEN_FILE) for the CLI and its contexts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ControllerProcess, client_side_backend

# client-side behaviour: one backend is enough (tests/api runs the API on every backend)
backend = pytest.fixture(params=["sqlite"])(client_side_backend)


def meshctl(*args: str, tmp: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("MESHCTL_")}
    e["MESHCTL_CONFIG"] = str(tmp / "config.yaml")
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "meshctl", *args], capture_output=True, text=True, env=e, timeout=30)


def secret(tmp: Path, token: str, mode: int = 0o600) -> Path:
    path = tmp / "token"
    path.write_text(token + "\n")
    path.chmod(mode)
    return path


def test_token_file_flag_env_and_context(controller: ControllerProcess, tmp_path: Path) -> None:
    path = secret(tmp_path, controller.admin_token)
    r = meshctl("--controller", controller.url, "--token-file", str(path), "-o", "json", "status", tmp=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "generation" in json.loads(r.stdout)

    r = meshctl(
        "--controller", controller.url, "-o", "json", "status", tmp=tmp_path, env={"MESHCTL_TOKEN_FILE": str(path)}
    )
    assert r.returncode == 0, r.stderr

    r = meshctl("config", "set-context", "prod", "--controller", controller.url, "--token-file", str(path), "--use",
                tmp=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr
    saved = tmp_path / "config.yaml"
    assert saved.stat().st_mode & 0o077 == 0, "contexts hold tokens: 0600"
    assert controller.admin_token in saved.read_text()
    assert yaml.safe_load(saved.read_text())["current-context"] == "prod"
    r = meshctl("-o", "json", "status", tmp=tmp_path)
    assert r.returncode == 0, r.stderr


def test_a_token_file_open_to_others_is_refused_in_one_line(controller: ControllerProcess, tmp_path: Path) -> None:
    path = secret(tmp_path, controller.admin_token, mode=0o644)
    r = meshctl("--controller", controller.url, "--token-file", str(path), "status", tmp=tmp_path)
    assert r.returncode == 1
    assert r.stderr.strip() == f"error: token file {path} is open to others (mode 0644): chmod 600 {path}"
    r = meshctl("--controller", controller.url, "--token-file", str(tmp_path / "missing"), "status", tmp=tmp_path)
    assert r.returncode == 1 and "No such file" in r.stderr and "Traceback" not in r.stderr
