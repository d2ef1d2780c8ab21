"""Agent configuration: flags, then MESH_* environment, then a YAML file (`--config`)."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml


class AgentConfigError(ValueError):
    """A missing or malformed setting; the message names it (and the file, if it came from one)."""


@dataclass(frozen=True)
class AgentConfig:
    controller: str
    region: str
    endpoint: str
    interface: str
    state_dir: Path
    join_token: str | None = None  # only needed for the first start
    listen_port: int = 51820
    stamp_port: int = 862
    metrics_port: int = 9464
    window_s: float = 5.0
    probe_rate: float = 5.0
    targets_per_region: int = 2

    @property
    def metrics_host(self) -> str:
        return "127.0.0.1"


ENV = {
    "controller": "MESH_CONTROLLER",
    "region": "MESH_REGION",
    "join_token": "MESH_JOIN_TOKEN",
    "endpoint": "MESH_ENDPOINT",
    "interface": "MESH_INTERFACE",
    "state_dir": "MESH_STATE_DIR",
    "listen_port": "MESH_LISTEN_PORT",
    "stamp_port": "MESH_STAMP_PORT",
    "metrics_port": "MESH_METRICS_PORT",
    "window_s": "MESH_WINDOW_S",
    "probe_rate": "MESH_PROBE_RATE",
    "targets_per_region": "MESH_TARGETS_PER_REGION",
}
REQUIRED = ("controller", "region", "endpoint", "interface", "state_dir")


def load(flags: dict[str, Any], config_file: Path | None = None, env: dict[str, str] | None = None) -> AgentConfig:
    """Merge the three sources, flags first; convert and check every value."""
    env = dict(os.environ) if env is None else env
    from_file: dict[str, Any] = {}
    if config_file is not None:
        try:
            data = yaml.safe_load(config_file.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise AgentConfigError(f"{config_file}: cannot read: {str(exc).splitlines()[0]}") from exc
        if not isinstance(data, dict):
            raise AgentConfigError(f"{config_file}: expected a mapping of settings")
        unknown = set(data) - {f.name for f in fields(AgentConfig)}
        if unknown:
            raise AgentConfigError(f"{config_file}: unknown setting {sorted(unknown)[0]!r}")
        from_file = data
    merged: dict[str, Any] = {}
    for f in fields(AgentConfig):
        for source, value in (
            ("flag", flags.get(f.name)),
            ("environment", env.get(ENV[f.name])),
            ("file", from_file.get(f.name)),
        ):
            if value is not None and value != "":
                merged[f.name] = (value, source)
                break
    for name in REQUIRED:
        if name not in merged:
            raise AgentConfigError(
                f"{name}: missing; give --{name.replace('_', '-')}, {ENV[name]} or set it in --config"
            )
    out: dict[str, Any] = {}
    for f in fields(AgentConfig):
        if f.name not in merged:
            continue
        value, source = merged[f.name]
        where = f"{f.name} (from {source}{' ' + str(config_file) if source == 'file' else ''})"
        try:
            if f.name in ("listen_port", "stamp_port", "metrics_port", "targets_per_region"):
                value = int(value)
            elif f.name in ("window_s", "probe_rate"):
                value = float(value)
            elif f.name == "state_dir":
                value = Path(value)
            else:
                value = str(value)
        except (TypeError, ValueError) as exc:
            raise AgentConfigError(f"{where}: {exc}") from exc
        out[f.name] = value
    cfg = AgentConfig(**out)
    if not 0 < cfg.window_s <= 300 or not 0 < cfg.probe_rate <= 100 or cfg.targets_per_region < 1:
        raise AgentConfigError("window_s must be in (0, 300], probe_rate in (0, 100], targets_per_region >= 1")
    if len(cfg.interface) > 15:
        raise AgentConfigError(f"interface: {cfg.interface!r} is longer than Linux's 15 characters")
    return cfg
