"""Agent settings: flags over environment over the file; a broken file names itself and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from probes.config import AgentConfigError, load

BASE = {
    "controller": "http://c:8080",
    "region": "aws:us-east-1",
    "endpoint": "192.0.2.1:51820",
    "interface": "mesh0",
    "state_dir": "/var/lib/meshctl",
}


def test_precedence_flags_env_file(tmp_path: Path) -> None:
    f = tmp_path / "agent.yaml"
    f.write_text(
        "controller: http://from-file:1\nregion: gcp:us-east4\nendpoint: 192.0.2.9:1\n"
        "interface: fromfile\nstate_dir: /tmp/x\nwindow_s: 2\n"
    )
    cfg = load({"region": "aws:us-east-1"}, f, env={"MESH_CONTROLLER": "http://from-env:2"})
    assert cfg.region == "aws:us-east-1" and cfg.controller == "http://from-env:2"
    assert cfg.interface == "fromfile" and cfg.window_s == 2.0 and cfg.state_dir == Path("/tmp/x")
    assert cfg.probe_rate == 5.0 and cfg.targets_per_region == 2 and cfg.join_token is None


def test_errors_name_the_setting(tmp_path: Path) -> None:
    with pytest.raises(AgentConfigError, match="region: missing"):
        load({k: v for k, v in BASE.items() if k != "region"}, env={})
    with pytest.raises(AgentConfigError, match="window_s"):
        load({**BASE, "window_s": "soon"}, env={})
    bad = tmp_path / "broken.yaml"
    bad.write_text("controller: [unclosed\n")
    with pytest.raises(AgentConfigError, match=r"broken\.yaml"):
        load({}, bad, env={})
    bad.write_text("colour: blue\n")
    with pytest.raises(AgentConfigError, match="unknown setting 'colour'"):
        load(BASE, bad, env={})
    with pytest.raises(AgentConfigError, match="15 characters"):
        load({**BASE, "interface": "a-very-long-interface"}, env={})
