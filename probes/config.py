"""Agent configuration: flags, then MESH_* environment, then a YAML file (`--config`).

The join token and the join token file are one setting given two ways: the source that wins
(flag over environment over file) gives it; the two in the same source is an error. The file is
read only when the node joins (`probes.join`), so it may be removed once the node has joined.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from probes.health import parse_listen

PID_FILE = "agent.pid"  # in the state directory: the running agent's pid, for `rotate-key`


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
    metrics_listen: str | None = None  # HOST:PORT for /metrics; wins over metrics_port (on 127.0.0.1)
    window_s: float = 5.0
    probe_rate: float = 5.0
    probe_budget: float = 150.0  # probes/s to all targets together (probes.schedule)
    targets_per_region: int = 2
    join: str = "auto"  # auto | attested | token (probes.join)
    join_token_file: Path | None = None  # the token in a file of mode 0600 (read at join time)
    health_listen: str = "0.0.0.0:9901"  # GET /healthz for the media server and load balancers (probes.health)
    controller_grace_s: float = 300.0  # /healthz says 503 after this long without the controller; 0: never
    on_drain: str | None = None  # run once when the node or its region becomes drained (probes.hooks)
    on_undrain: str | None = None  # run once when it becomes active again
    hook_timeout_s: float = 30.0
    early_after: int = 3  # consecutive probes lost to a peer that close the window early; 0: never

    @property
    def metrics_host(self) -> str:
        return metrics_address(self.metrics_listen, self.metrics_port)[0]

    @property
    def metrics_bind_port(self) -> int:
        """The port /metrics listens on: from metrics_listen if given, else metrics_port."""
        return metrics_address(self.metrics_listen, self.metrics_port)[1]


def metrics_address(listen: str | None, port: int) -> tuple[str, int]:
    """(host, port) of /metrics: `listen` as HOST:PORT ([v6]:PORT too), else 127.0.0.1 and `port`."""
    if not listen:
        return "127.0.0.1", port
    host, sep, port_text = listen.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise AgentConfigError(f"metrics_listen: {listen!r} is not HOST:PORT (e.g. 0.0.0.0:9464)")
    host = host.removeprefix("[").removesuffix("]")
    return host or "0.0.0.0", int(port_text)


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
    "metrics_listen": "MESH_METRICS_LISTEN",
    "window_s": "MESH_WINDOW_S",
    "probe_rate": "MESH_PROBE_RATE",
    "probe_budget": "MESH_PROBE_BUDGET",
    "targets_per_region": "MESH_TARGETS_PER_REGION",
    "join": "MESH_JOIN",
    "join_token_file": "MESH_JOIN_TOKEN_FILE",
    "health_listen": "MESH_HEALTH_LISTEN",
    "controller_grace_s": "MESH_CONTROLLER_GRACE_S",
    "on_drain": "MESH_ON_DRAIN",
    "on_undrain": "MESH_ON_UNDRAIN",
    "hook_timeout_s": "MESH_HOOK_TIMEOUT_S",
    "early_after": "MESH_EARLY_AFTER",
}
JOIN_MODES = ("auto", "attested", "token")
SOURCES = ("flag", "environment", "file")  # in order of precedence
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
    if "join_token" in merged and "join_token_file" in merged:
        (_, a), (_, b) = merged["join_token"], merged["join_token_file"]
        if a == b:
            raise AgentConfigError(f"join_token and join_token_file both given (from {a}): give one")
        del merged["join_token" if SOURCES.index(a) > SOURCES.index(b) else "join_token_file"]
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
            if f.name in ("listen_port", "stamp_port", "metrics_port", "targets_per_region", "early_after"):
                value = int(value)
            elif f.name in ("window_s", "probe_rate", "probe_budget", "controller_grace_s", "hook_timeout_s"):
                value = float(value)
            elif f.name in ("state_dir", "join_token_file"):
                value = Path(value)
            else:
                value = str(value)
        except (TypeError, ValueError) as exc:
            raise AgentConfigError(f"{where}: {exc}") from exc
        out[f.name] = value
    cfg = AgentConfig(**out)
    if not 0 < cfg.window_s <= 300 or not 0 < cfg.probe_rate <= 100 or cfg.targets_per_region < 1:
        raise AgentConfigError("window_s must be in (0, 300], probe_rate in (0, 100], targets_per_region >= 1")
    if not 0 < cfg.probe_budget <= 100_000:
        raise AgentConfigError(f"probe_budget must be in (0, 100000] probes/s, not {cfg.probe_budget:g}")
    if cfg.join not in JOIN_MODES:
        raise AgentConfigError(f"join: {cfg.join!r} is not one of {', '.join(JOIN_MODES)}")
    metrics_address(cfg.metrics_listen, cfg.metrics_port)  # a malformed HOST:PORT is refused here
    try:
        parse_listen(cfg.health_listen)
    except ValueError as exc:
        raise AgentConfigError(f"health_listen: {exc}") from exc
    if cfg.controller_grace_s < 0 or cfg.hook_timeout_s <= 0 or cfg.early_after < 0:
        raise AgentConfigError("controller_grace_s must be >= 0, hook_timeout_s > 0, early_after >= 0")
    if len(cfg.interface) > 15:
        raise AgentConfigError(f"interface: {cfg.interface!r} is longer than Linux's 15 characters")
    return cfg
