"""The agent's own command line: `meshctl-agent run|rotate-key`, and `meshctl agent ...` forwarding to it.

The flags are a public contract (systemd units, the lab and scripts start agents with them), so
every flag is parsed here and merged with MESH_* variables and the YAML file in the documented
order; help and errors are checked through real processes, as a user meets them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import tomllib
from pathlib import Path

import pytest

from meshctl.lab.netns import Lab, write_join_token
from probes.cli import RUN_OPTIONS, build_parser, config_flags, main, with_implicit_run
from probes.config import ENV, AgentConfig, AgentConfigError, load
from probes.join import token_of

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

# one value per AgentConfig field, as a flag string, with what it becomes
VALUES: dict[str, tuple[str, object]] = {
    "controller": ("http://ctl:8080", "http://ctl:8080"),
    "region": ("aws:us-east-1", "aws:us-east-1"),
    "join_token": ("tok-1", "tok-1"),
    "endpoint": ("198.51.100.7:51820", "198.51.100.7:51820"),
    "interface": ("mesh0", "mesh0"),
    "state_dir": ("/var/lib/meshctl", Path("/var/lib/meshctl")),
    "listen_port": ("51821", 51821),
    "stamp_port": ("8862", 8862),
    "metrics_port": ("9465", 9465),
    "metrics_listen": ("0.0.0.0:9466", "0.0.0.0:9466"),
    "window_s": ("2.5", 2.5),
    "probe_rate": ("10", 10.0),
    "probe_budget": ("400", 400.0),
    "targets_per_region": ("3", 3),
    "join": ("attested", "attested"),
    "join_token_file": ("/etc/meshctl/join-token", Path("/etc/meshctl/join-token")),
    "health_listen": ("127.0.0.1:9902", "127.0.0.1:9902"),
    "controller_grace_s": ("60", 60.0),
    "on_drain": ("/usr/local/bin/stop-rooms --now", "/usr/local/bin/stop-rooms --now"),
    "on_undrain": ("/usr/local/bin/take-rooms", "/usr/local/bin/take-rooms"),
    "hook_timeout_s": ("10", 10.0),
    "early_after": ("4", 4),
}
FROM_ENV: dict[str, str] = {  # a second value per field, given as MESH_*
    "controller": "http://env:2",
    "region": "gcp:us-east4",
    "join_token": "tok-env",
    "endpoint": "192.0.2.9:2",
    "interface": "env0",
    "state_dir": "/tmp/env",
    "listen_port": "2",
    "stamp_port": "2",
    "metrics_port": "2",
    "metrics_listen": "127.0.0.2:2",
    "window_s": "2",
    "probe_rate": "2",
    "probe_budget": "2",
    "targets_per_region": "2",
    "join": "token",
    "join_token_file": "/run/env-token",
    "health_listen": "127.0.0.2:2",
    "controller_grace_s": "2",
    "on_drain": "env-drain",
    "on_undrain": "env-undrain",
    "hook_timeout_s": "2",
    "early_after": "2",
}
FROM_FILE: dict[str, str | int | float] = {  # a third value per field, in the YAML file
    "controller": "http://file:3",
    "region": "azure:westeurope",
    "join_token": "tok-file",
    "endpoint": "192.0.2.9:3",
    "interface": "file0",
    "state_dir": "/tmp/file",
    "listen_port": 3,
    "stamp_port": 3,
    "metrics_port": 3,
    "metrics_listen": "[::1]:3",
    "window_s": 3.5,
    "probe_rate": 3,
    "probe_budget": 3,
    "targets_per_region": 4,
    "join": "auto",
    "join_token_file": "/run/file-token",
    "health_listen": "[::1]:3",
    "controller_grace_s": 3,
    "on_drain": "file-drain",
    "on_undrain": "file-undrain",
    "hook_timeout_s": 3,
    "early_after": 3,
}
# The join token and its file are one setting given two ways (both from one source is an error), so a
# command line gives one of them: the file, unless the token itself is the setting under test.
TOKEN_PAIR = ("join_token", "join_token_file")


def others(field: str) -> list[str]:
    """The settings given beside `field`: all but `field` and its token twin (the file if neither)."""
    skip = {field, *(TOKEN_PAIR if field in TOKEN_PAIR else ("join_token",))}
    return [dest for _flag, dest, *_ in RUN_OPTIONS if dest not in skip]


BASE_FLAGS = {name: text for name, (text, _value) in VALUES.items() if name != "join_token"}


def clean_env() -> dict[str, str]:
    """This process's environment without any MESH_* setting (the tests give their own)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("MESH_")}


def run(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env or clean_env(), cwd=ROOT)


def console_script() -> list[str]:
    """`meshctl-agent` exactly as the console script pip makes from pyproject.toml runs it."""
    spec = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]["meshctl-agent"]
    assert spec == "probes.cli:main", f"pyproject.toml: meshctl-agent = {spec!r}, expected 'probes.cli:main'"
    module, attr = spec.split(":")
    code = f"import sys; from {module} import {attr} as f; sys.argv[0] = 'meshctl-agent'; sys.exit(f())"
    return [sys.executable, "-c", code]


def agent_script() -> list[str]:
    """The agent's command line as a process (`python -m probes`, the same `main` as `meshctl-agent`)."""
    return [sys.executable, "-m", "probes"]


@pytest.mark.parametrize("token_by", TOKEN_PAIR)
def test_every_flag_parses_to_its_setting(token_by: str) -> None:
    assert {dest for _flag, dest, *_ in RUN_OPTIONS} == {f for f in VALUES}, "a flag for every setting"
    argv = ["run"]
    for flag, dest, *_ in RUN_OPTIONS:
        if dest == token_by or dest not in TOKEN_PAIR:
            argv += [flag, VALUES[dest][0]]
    ns = build_parser().parse_args([*argv, "--config", "/etc/meshctl/agent.yaml"])
    assert ns.command == "run" and ns.config == Path("/etc/meshctl/agent.yaml")
    cfg = load(config_flags(ns), None, env={})
    given = {name: value for name, (_text, value) in VALUES.items() if name == token_by or name not in TOKEN_PAIR}
    assert cfg == AgentConfig(**given)  # type: ignore[arg-type]


def test_the_join_token_and_its_file_are_one_setting(tmp_path: Path) -> None:
    """The source that wins (flag, environment, file) gives the token or the file; both in one source is an error."""
    config = tmp_path / "agent.yaml"
    config.write_text("join_token: tok-file\n")
    flag_file = load({**BASE_FLAGS}, config, env={"MESH_JOIN_TOKEN": "tok-env"})
    assert flag_file.join_token_file == Path("/etc/meshctl/join-token") and flag_file.join_token is None
    no_flag = {k: v for k, v in BASE_FLAGS.items() if k != "join_token_file"}
    env_token = load(no_flag, config, env={"MESH_JOIN_TOKEN": "tok-env"})
    assert env_token.join_token == "tok-env" and env_token.join_token_file is None
    env_file = load({**no_flag, "join_token": "tok-1"}, env={"MESH_JOIN_TOKEN_FILE": "/run/t"})
    assert env_file.join_token == "tok-1" and env_file.join_token_file is None
    with pytest.raises(AgentConfigError, match=r"join_token and join_token_file both given \(from flag\): give one"):
        load({**BASE_FLAGS, "join_token": "tok-1"}, env={})
    with pytest.raises(AgentConfigError, match=r"both given \(from environment\)"):
        load(no_flag, env={"MESH_JOIN_TOKEN": "a", "MESH_JOIN_TOKEN_FILE": "/run/t"})
    with pytest.raises(AgentConfigError, match="join: 'always' is not one of auto, attested, token"):
        load({**BASE_FLAGS, "join": "always"}, env={})
    assert load(no_flag, env={}).join == "attested" and load({**no_flag, "join": None}, env={}).join == "auto"


def test_flag_names_are_the_documented_ones() -> None:
    """The public flag names (README, systemd unit, lab): `--window` for window_s, dashes elsewhere."""
    flags = {flag for flag, *_ in RUN_OPTIONS}
    assert flags == {
        "--controller",
        "--region",
        "--join",
        "--join-token-file",
        "--join-token",
        "--endpoint",
        "--interface",
        "--state-dir",
        "--listen-port",
        "--stamp-port",
        "--metrics-port",
        "--metrics-listen",
        "--window",
        "--probe-rate",
        "--probe-budget",
        "--targets-per-region",
        "--early-after",
        "--health-listen",
        "--controller-grace",
        "--on-drain",
        "--on-undrain",
        "--hook-timeout",
    }
    # no abbreviations: `--win 2` is not `--window 2`, so a future `--winXYZ` flag cannot change a script's meaning
    assert main(["run", "--win", "2"]) == 2


def test_nothing_given_is_none_so_env_and_file_apply() -> None:
    ns = build_parser().parse_args(["run"])
    assert config_flags(ns) == {dest: None for _flag, dest, *_ in RUN_OPTIONS} and ns.config is None


@pytest.mark.parametrize("field", list(VALUES))
def test_precedence_flag_then_environment_then_file(field: str, tmp_path: Path) -> None:
    """For each setting: the flag wins over MESH_*, which wins over the --config file."""
    config = tmp_path / "agent.yaml"
    config.write_text(f"{field}: {FROM_FILE[field]!r}\n")
    flag = next(f for f, dest, *_ in RUN_OPTIONS if dest == field)

    def setting(with_flag: bool, env: dict[str, str]) -> object:
        argv = ["run", "--config", str(config)]
        for f, dest, *_ in RUN_OPTIONS:
            if dest in others(field):
                argv += [f, VALUES[dest][0]]
        if with_flag:
            argv += [flag, VALUES[field][0]]
        ns = build_parser().parse_args(argv)
        return getattr(load(config_flags(ns), ns.config, env=env), field)

    env = {ENV[field]: FROM_ENV[field]}
    as_file, as_env = setting(False, {}), setting(False, env)
    assert setting(True, env) == VALUES[field][1], "flag over environment and file"
    base = {k: v for k, v in BASE_FLAGS.items() if k in others(field)}
    assert as_env == load({**base, field: FROM_ENV[field]}, env={}).__dict__[field] != as_file
    assert as_file == load({**base, field: FROM_FILE[field]}, env={}).__dict__[field] != VALUES[field][1]


def test_todays_form_without_run_still_works() -> None:
    assert with_implicit_run(["--controller", "http://c"]) == ["run", "--controller", "http://c"]
    assert with_implicit_run([]) == ["run"], "meshctl-agent alone runs from MESH_* / defaults"
    assert with_implicit_run(["rotate-key", "--state-dir", "d"]) == ["rotate-key", "--state-dir", "d"]
    assert with_implicit_run(["--help"]) == ["--help"]
    ns = build_parser().parse_args(with_implicit_run(["--controller", "http://c", "--window", "1"]))
    assert ns.command == "run" and ns.controller == "http://c" and ns.window_s == 1.0


@pytest.mark.parametrize(
    "options",
    [
        {"window": "1", "join_token_file": "TOKEN_FILE"},  # meshctl.lab.lab._start_agent
        {"window": "1", "probe_rate": "10", "join_token_file": None},  # tests/probes/test_agents_netns.py (restart)
        {"window": "2", "join_token_file": "TOKEN_FILE"},  # tests/probes/test_accuracy_netns.py
    ],
)
def test_the_lab_argv_parses(options: dict[str, str | None], tmp_path: Path) -> None:
    lab = Lab("mt")
    secret = "msh_j_" + "s3cret" * 4
    token_file = write_join_token(tmp_path / "node2", secret)
    options = {k: (token_file if v == "TOKEN_FILE" else v) for k, v in options.items()}
    argv = lab.agent_argv(2, "http://10.213.0.1:8080", "aws:us-east-1", str(tmp_path / "node2"), **options)
    assert not any("msh_j_" in a for a in argv), "no secret on a command line"
    i = argv.index("probes")
    assert argv[i - 1 : i + 2] == ["-m", "probes", "run"]  # the agent alone, as a media node runs it
    ns = build_parser("meshctl-agent").parse_args(argv[i + 1 :])
    cfg = load(config_flags(ns), ns.config, env={})
    assert cfg.controller == "http://10.213.0.1:8080" and cfg.region == "aws:us-east-1"
    assert cfg.endpoint == f"{lab.wan_ip(2)}:51820" and cfg.interface == "mtw2"
    assert cfg.state_dir == tmp_path / "node2" and cfg.window_s == float(options["window"] or 0)
    assert cfg.join_token is None and cfg.join == "auto"
    assert cfg.probe_rate == float(options.get("probe_rate") or 5.0)
    if options["join_token_file"] is None:
        assert cfg.join_token_file is None
    else:  # the agent reads back exactly the token, from a file only its user may read
        assert cfg.join_token_file == tmp_path / "node2" / "join-token" and token_of(cfg) == secret
        assert (cfg.join_token_file.stat().st_mode & 0o777) == 0o600
        assert (tmp_path / "node2").stat().st_mode & 0o077 == 0


def test_the_lab_never_puts_a_join_token_on_a_command_line() -> None:
    with pytest.raises(ValueError, match="no join token on a command line"):
        Lab("mt").agent_argv(0, "http://c", "aws:us-east-1", "/tmp/x", join_token="msh_j_x")


def test_lab_start_agent_writes_the_token_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """meshctl lab up's agent start (no namespaces: the process start is replaced): the command line it
    would run holds no secret, and the token is in a 0600 file the agent reads."""
    from meshctl.lab import lab as meshlab

    spawned: list[list[str]] = []

    def spawn(args: list[str], log: Path, *more: object, **kw: object) -> int:
        spawned.append(args)
        return 4242

    monkeypatch.setattr(meshlab, "_spawn", spawn)
    node = meshlab.LabNode(0, "n0", "aws:us-east-1", "mtn0", "10.213.1.2", "mtw0", str(tmp_path / "nodes" / "n0"))
    state = meshlab.LabState(str(tmp_path), "mt", "10.213", None, "10.213.0.1", 8080, "msh_a_admin", [node], 0.0)
    secret = "msh_j_" + "x" * 24
    meshlab._start_agent(state, node, secret)
    meshlab._start_agent(state, node, None)  # `lab up` on a lab whose agent died: same file, no token given
    assert len(spawned) == 2 and spawned[0] == spawned[1]
    assert not any("msh_j_" in a or "msh_a_" in a for a in spawned[0]), spawned[0]
    ns = build_parser().parse_args(spawned[0][spawned[0].index("probes") + 1 :])
    cfg = load(config_flags(ns), None, env={})
    assert token_of(cfg) == secret and cfg.join_token is None
    assert (tmp_path / "pids" / "n0.pid").read_text() == "4242"


# --- through real processes ----------------------------------------------------------------------


def test_meshctl_agent_run_help_is_the_agents() -> None:
    r = run(str(BIN / "meshctl"), "agent", "run", "--help")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage: meshctl agent run")
    for flag, _dest, _kind, _metavar, text in RUN_OPTIONS:
        assert flag in r.stdout and text in r.stdout, flag
    assert "--config" in r.stdout and "YAML file with the same settings." in r.stdout
    assert "Example: meshctl agent run --controller https://ctl:8080" in r.stdout
    r = run(str(BIN / "meshctl"), "agent", "--help")
    assert r.returncode == 0 and "run" in r.stdout and "rotate-key" in r.stdout
    r = run(str(BIN / "meshctl"), "agent", "rotate-key", "--help")
    assert r.returncode == 0 and "The running agent's state directory." in r.stdout
    assert "Example: meshctl agent rotate-key --state-dir /var/lib/meshctl" in r.stdout


def test_meshctl_agent_console_script_help() -> None:
    r = run(*console_script(), "--help")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage: meshctl-agent") and "run" in r.stdout and "rotate-key" in r.stdout
    r = run(*console_script(), "run", "--help")
    assert r.returncode == 0 and r.stdout.startswith("usage: meshctl-agent run"), r.stderr
    assert all(flag in r.stdout for flag, *_ in RUN_OPTIONS)


@pytest.mark.parametrize("via", ["python -m probes", "python -m probes run", "meshctl agent run"])
def test_broken_config_is_one_line_exit_1(via: str, tmp_path: Path) -> None:
    bad = tmp_path / "broken.yaml"
    bad.write_text("controller: [unclosed\n")
    argv = {
        "python -m probes": agent_script(),
        "python -m probes run": [*agent_script(), "run"],
        "meshctl agent run": [str(BIN / "meshctl"), "agent", "run"],
    }[via]
    r = run(*argv, "--config", str(bad))
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert r.stderr.count("\n") == 1 and r.stderr.startswith(f"error: {bad}: cannot read:"), r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""


def test_missing_setting_and_bad_value_are_one_line() -> None:
    r = run(*agent_script(), "run", "--region", "aws:us-east-1")
    assert r.returncode == 1
    assert r.stderr == "error: controller: missing; give --controller, MESH_CONTROLLER or set it in --config\n"
    env = {**clean_env(), "MESH_WINDOW_S": "soon"}
    r = run(*agent_script(), "--controller", "http://c", "--region", "r", "--endpoint", "e", "--interface", "i",
            "--state-dir", "/tmp/x", env=env)  # fmt: skip
    assert r.returncode == 1 and r.stderr.startswith("error: window_s (from environment):"), r.stderr
    assert r.stderr.count("\n") == 1
    r = run(str(BIN / "meshctl"), "agent", "run", "--listen-port", "x")
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "--listen-port" in r.stderr and "'x'" in r.stderr and "Traceback" not in r.stderr


def test_rotate_key_without_a_running_agent(tmp_path: Path) -> None:
    r = run(*agent_script(), "rotate-key", "--state-dir", str(tmp_path))
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr == (
        f"error: no running agent for {tmp_path} (no live pid in {tmp_path / 'agent.pid'}); start it first\n"
    )
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (tmp_path / "agent.pid").write_text(str(gone.pid))  # a pid file left by an agent that died
    r = run(str(BIN / "meshctl"), "agent", "rotate-key", "--state-dir", str(tmp_path))
    assert r.returncode == 1 and r.stderr.startswith("error: no running agent for") and r.stderr.count("\n") == 1
    r = run(*agent_script(), "rotate-key")
    assert r.returncode == 2 and "--state-dir" in r.stderr and r.stderr.count("\n") == 1


def test_rotate_key_signals_the_running_agent(tmp_path: Path) -> None:
    marker = tmp_path / "got-usr1"
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
                import signal, sys, time, pathlib
                signal.signal(signal.SIGUSR1, lambda *a: pathlib.Path({str(marker)!r}).write_text("1"))
                print("ready", flush=True)
                time.sleep(30)
            """),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == "ready\n"
        (tmp_path / "agent.pid").write_text(str(child.pid))
        r = run(*agent_script(), "rotate-key", "--state-dir", str(tmp_path))
        assert r.returncode == 0 and r.stdout == f"asked agent {child.pid} to rotate its key\n", r.stderr
        deadline = time.monotonic() + 10
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(), "the agent got SIGUSR1"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()


# Modules a node must never load. typer, rich, click and pygments are also made uninstallable below:
# on a node they are absent (httpx loads rich and click for its own CLI only when they are installed).
FORBIDDEN = ("meshctl.cli", "meshctl.api", "meshctl.service", "meshctl.store", "meshctl.lab", "typer", "rich",
             "click", "pygments", "fastapi", "starlette", "sqlalchemy", "alembic", "numba", "numpy", "scipy",
             "pydantic")  # fmt: skip
IMPORT_CHECK = """
import importlib.abc, sys
ABSENT = ("typer", "rich", "click", "pygments")
class NotOnANode(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ABSENT:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, NotOnANode())
import probes.cli, probes.agent, probes.metadata, probes.problem
from probes.cli import main
assert main(["run", "--help"]) == 0 and main(["rotate-key", "--help"]) == 0
bad = sorted(m for m in sys.modules if m.startswith(FORBIDDEN))
assert not bad, bad
print("clean")
"""


def test_the_agent_imports_nothing_of_the_operator_side() -> None:
    r = run(sys.executable, "-c", f"FORBIDDEN = {FORBIDDEN!r}\n{IMPORT_CHECK}")
    assert r.returncode == 0 and r.stdout.rstrip().endswith("clean"), r.stderr
    plain = (  # and without the blocker, the operator layers stay out all the same
        "import sys, probes.cli, probes.agent; "
        "bad = [m for m in sys.modules if m.startswith(('meshctl.cli', 'meshctl.api', 'meshctl.service', "
        "'meshctl.store', 'meshctl.lab', 'typer', 'fastapi', 'sqlalchemy', 'numba', 'numpy'))]; "
        "assert not bad, bad"
    )
    r = run(sys.executable, "-c", plain)
    assert r.returncode == 0, r.stderr
