"""`meshctl agent run|rotate-key`: the node agent (see probes/)."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer

agent_app = typer.Typer(help="The node agent: join, WireGuard tunnel, STAMP probes, reports.", no_args_is_help=True)


@agent_app.command("run")
def run(
    controller: Annotated[str | None, typer.Option(help="Controller URL (MESH_CONTROLLER).")] = None,
    region: Annotated[str | None, typer.Option(help="This node's region id (MESH_REGION).")] = None,
    join_token: Annotated[str | None, typer.Option(help="Join token, first start only (MESH_JOIN_TOKEN).")] = None,
    endpoint: Annotated[str | None, typer.Option(help="Public ip:port of WireGuard (MESH_ENDPOINT).")] = None,
    interface: Annotated[str | None, typer.Option(help="WireGuard interface name (MESH_INTERFACE).")] = None,
    state_dir: Annotated[str | None, typer.Option(help="Key, credential, peers, spool (MESH_STATE_DIR).")] = None,
    config: Annotated[Path | None, typer.Option(help="YAML file with the same settings.")] = None,
    listen_port: Annotated[int | None, typer.Option(help="WireGuard UDP port (default 51820).")] = None,
    stamp_port: Annotated[int | None, typer.Option(help="STAMP reflector port on the overlay (default 862).")] = None,
    metrics_port: Annotated[int | None, typer.Option(help="Prometheus /metrics on 127.0.0.1 (default 9464).")] = None,
    window: Annotated[float | None, typer.Option(help="Report window seconds (default 5).")] = None,
    probe_rate: Annotated[float | None, typer.Option(help="Packets/s per target (default 5).")] = None,
    targets_per_region: Annotated[int | None, typer.Option(help="Peers probed per other region (default 2).")] = None,
) -> None:
    """Run the agent on a media node.

    Example: meshctl agent run --controller https://ctl:8080 --region aws:us-east-1 --join-token T
             --endpoint 198.51.100.7:51820 --interface mesh0 --state-dir /var/lib/meshctl
    """
    from probes import agent
    from probes.config import AgentConfigError, load

    flags = {
        "controller": controller,
        "region": region,
        "join_token": join_token,
        "endpoint": endpoint,
        "interface": interface,
        "state_dir": state_dir,
        "listen_port": listen_port,
        "stamp_port": stamp_port,
        "metrics_port": metrics_port,
        "window_s": window,
        "probe_rate": probe_rate,
        "targets_per_region": targets_per_region,
    }
    try:
        cfg = load(flags, config)
    except AgentConfigError as exc:
        sys.stderr.write(f"error: {exc}\n")
        raise typer.Exit(1) from None
    try:
        agent.run(cfg)
    except RuntimeError as exc:  # join refused, no WireGuard, no join token: one line, not a traceback
        sys.stderr.write(f"error: {exc}\n")
        raise typer.Exit(1) from None


@agent_app.command("rotate-key")
def rotate_key(state_dir: Annotated[Path, typer.Option(help="The running agent's state directory.")]) -> None:
    """Make a new key pair; the running agent registers it and the other nodes follow.

    Example: meshctl agent rotate-key --state-dir /var/lib/meshctl
    """
    pid_file = state_dir / "agent.pid"
    try:
        pid = int(pid_file.read_text())
        os.kill(pid, signal.SIGUSR1)
    except (OSError, ValueError):
        sys.stderr.write(f"error: no running agent for {state_dir} (no live pid in {pid_file}); start it first\n")
        raise typer.Exit(1) from None
    typer.echo(f"asked agent {pid} to rotate its key")
