"""`meshctl-agent run|rotate-key`: the node agent's own command line (also `meshctl agent ...`).

Standard library only (argparse): a media node needs neither Typer nor Rich nor anything of the
operator CLI. The flags are a public contract (systemd units, the lab and the tests start agents
with them); flags win over MESH_* variables, which win over the `--config` file (probes.config).
`meshctl-agent --controller ...` without a sub-command means `run`, as it always has.

Joining (probes.join): a cloud VM joins by its cloud identity and needs no secret (`--join auto`,
the default, when no token is given and a metadata service answers); a lab or on-prem node joins
with a token from `--join-token-file` (mode 0600) or MESH_JOIN_TOKEN. `--join-token VALUE` still
works but warns: any local user reads a command line (`ps`, /proc/PID/cmdline).

Exit codes: 0 done, 1 a setting, the join or the node refused (one line on stderr, never a
traceback), 2 a usage error, 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

PROG = "meshctl-agent"
COMMANDS = ("run", "rotate-key")
GROUP_HELP = "The node agent: join, WireGuard tunnel, STAMP probes, reports."
RUN_HELP = "Run the agent on a media node."
ROTATE_HELP = "Make a new key pair; the running agent registers it and the other nodes follow."

# (flag, AgentConfig field, type, metavar, help); the help names the MESH_* variable or the default
RUN_OPTIONS: tuple[tuple[str, str, type, str, str], ...] = (
    ("--controller", "controller", str, "URL", "Controller URL (MESH_CONTROLLER)."),
    ("--region", "region", str, "REGION", "This node's region id (MESH_REGION)."),
    ("--join", "join", str, "MODE", "auto, attested or token (MESH_JOIN; default auto)."),
    ("--join-token-file", "join_token_file", str, "FILE", "Join token file, mode 0600 (MESH_JOIN_TOKEN_FILE)."),
    ("--join-token", "join_token", str, "TOKEN", "Deprecated, visible in ps; use MESH_JOIN_TOKEN."),
    ("--endpoint", "endpoint", str, "IP:PORT", "Public ip:port of WireGuard (MESH_ENDPOINT)."),
    ("--interface", "interface", str, "NAME", "WireGuard interface name (MESH_INTERFACE)."),
    ("--state-dir", "state_dir", str, "DIR", "Key, credential, peers, spool (MESH_STATE_DIR)."),
    ("--listen-port", "listen_port", int, "PORT", "WireGuard UDP port (default 51820)."),
    ("--stamp-port", "stamp_port", int, "PORT", "STAMP reflector port on the overlay (default 862)."),
    ("--metrics-port", "metrics_port", int, "PORT", "Prometheus /metrics on 127.0.0.1 (default 9464)."),
    ("--metrics-listen", "metrics_listen", str, "HOST:PORT", "/metrics on HOST:PORT instead (MESH_METRICS_LISTEN)."),
    ("--window", "window_s", float, "SECONDS", "Report window seconds (default 5)."),
    ("--probe-rate", "probe_rate", float, "RATE", "Packets/s per target (default 5)."),
    ("--probe-budget", "probe_budget", float, "RATE", "Packets/s to all targets together (default 150)."),
    ("--targets-per-region", "targets_per_region", int, "N", "Peers probed per other region (default 2)."),
    ("--early-after", "early_after", int, "N", "Send the window after N lost in a row (3; 0 off)."),
    ("--health-listen", "health_listen", str, "HOST:PORT", "GET /healthz here (default 0.0.0.0:9901)."),
    ("--controller-grace", "controller_grace_s", float, "SECONDS", "503 after this long unreachable (300; 0 never)."),
    ("--on-drain", "on_drain", str, "CMD", "Run when drained (node or region) (MESH_ON_DRAIN)."),
    ("--on-undrain", "on_undrain", str, "CMD", "Run when active again (MESH_ON_UNDRAIN)."),
    ("--hook-timeout", "hook_timeout_s", float, "SECONDS", "Kill a hook after this (default 30)."),
)


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line, exit 2 (argparse would print the whole usage first)."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"error: {message} (see '{self.prog} --help')\n")
        raise SystemExit(2)


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """The whole command line; `parse_args` gives `command` and, for `run`, one attribute per field."""
    top = _Parser(
        prog=prog,
        description=GROUP_HELP,
        epilog=f"Without a sub-command, run is meant: {prog} --config /etc/meshctl/agent.yaml",
        allow_abbrev=False,
    )
    sub = top.add_subparsers(dest="command", metavar="{run,rotate-key}", required=True, parser_class=_Parser)
    run = sub.add_parser(
        "run",
        help=RUN_HELP,
        description=f"{RUN_HELP}\n\nExample: {prog} run --controller https://ctl:8080 --region aws:us-east-1"
        "\n         --endpoint auto --interface mesh0 --state-dir /var/lib/meshctl"
        "\n(a cloud VM joins by its cloud identity; elsewhere add --join-token-file FILE)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    for flag, dest, kind, metavar, text in RUN_OPTIONS:
        run.add_argument(flag, dest=dest, type=kind, metavar=metavar, help=text)
        if flag == "--state-dir":  # where it has always been listed
            run.add_argument("--config", type=Path, metavar="FILE", help="YAML file with the same settings.")
    rotate = sub.add_parser(
        "rotate-key",
        help=ROTATE_HELP,
        description=f"{ROTATE_HELP}\n\nExample: {prog} rotate-key --state-dir /var/lib/meshctl",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    rotate.add_argument(
        "--state-dir", type=Path, metavar="DIR", required=True, help="The running agent's state directory."
    )
    return top


def with_implicit_run(argv: Sequence[str]) -> list[str]:
    """`meshctl-agent --controller ...` (no sub-command, today's form) means `run`."""
    args = list(argv)
    if not args or (args[0].startswith("-") and args[0] not in ("-h", "--help")):
        return ["run", *args]
    return args


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> int:
    """`meshctl-agent` (`prog` is what help and errors call it); returns the exit code."""
    args = with_implicit_run(sys.argv[1:] if argv is None else argv)
    try:
        ns = build_parser(prog).parse_args(args)
    except SystemExit as exc:  # --help (0) or a usage error (2, already written)
        return exc.code if isinstance(exc.code, int) else 2
    try:
        return _rotate_key(ns.state_dir) if ns.command == "rotate-key" else _run(ns)
    except KeyboardInterrupt:
        sys.stderr.write("\ninterrupted\n")
        return 130


def _fail(message: str) -> int:
    sys.stderr.write(f"error: {message}\n")
    return 1


def config_flags(ns: argparse.Namespace) -> dict[str, Any]:
    """The `run` flags as probes.config.load takes them (None: not given)."""
    return {dest: getattr(ns, dest) for _flag, dest, *_ in RUN_OPTIONS}


TOKEN_ON_COMMAND_LINE = (
    "warning: --join-token puts the secret on the command line, where any local user reads it (ps, /proc);"
    " use --join-token-file FILE (mode 0600) or MESH_JOIN_TOKEN\n"
)


def _run(ns: argparse.Namespace) -> int:
    from probes.config import AgentConfigError, load

    if ns.join_token is not None:
        sys.stderr.write(TOKEN_ON_COMMAND_LINE)

    try:
        cfg = load(config_flags(ns), ns.config)
    except AgentConfigError as exc:
        return _fail(str(exc))
    from probes import agent

    try:
        agent.run(cfg)
    except (RuntimeError, OSError) as exc:  # join refused, no WireGuard, key file open to others, port in use
        return _fail(str(exc))
    return 0


def _rotate_key(state_dir: Path) -> int:
    from probes.config import PID_FILE

    pid_file = state_dir / PID_FILE
    try:
        pid = int(pid_file.read_text())
        os.kill(pid, signal.SIGUSR1)
    except (OSError, ValueError):
        return _fail(f"no running agent for {state_dir} (no live pid in {pid_file}); start it first")
    print(f"asked agent {pid} to rotate its key")
    return 0


if __name__ == "__main__":
    sys.exit(main())
