"""CLI habits: `-o` after the sub-command as kubectl users type it, and a quick start-up."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cli.test_cli import A, B, C, run
from tests.conftest import ControllerProcess, client_side_backend

# client-side behaviour: one backend is enough (tests/api runs the API on every backend)
backend = pytest.fixture(params=["sqlite"])(client_side_backend)

# the synthetic reports stop after the feed: ages grow and, after a report timeout, the
# controller freezes (fails static) between two calls; neither is what this test is about
VOLATILE = {"recompute_age_s", "age_s", "good_windows", "bad_windows", "frozen", "alerts", "fresh"}


def stable(data: Any) -> Any:
    """The answer without the fields that move between two calls (ages, clocks)."""
    if isinstance(data, dict):
        return {k: stable(v) for k, v in data.items() if k not in VOLATILE and not k.endswith("_at")}
    if isinstance(data, list):
        return [stable(v) for v in data]
    return data


def test_output_after_the_subcommand(controller: ControllerProcess, tmp_path: Path) -> None:
    controller.feed_links({(A, B): 20.0, (B, A): 20.0, (B, C): 20.0, (C, B): 20.0, (A, C): 100.0, (C, A): 100.0})
    # every region's report in, both ways relayed (a tick between two reports publishes a table, the
    # next one another, and its route_change event would move `events --limit 5` between two runs)
    controller.wait_for(
        lambda: (
            controller.client().get(f"/v1/routes/{A}/{C}").json()["path"] == [A, B, C]
            and controller.client().get(f"/v1/routes/{C}/{A}").json()["path"] == [C, B, A]
        ),
        what="routes",
    )
    commands = [
        ["regions", "list"],
        ["status"],
        ["nodes", "list"],
        ["route", A, C, "--explain"],
        ["routes"],
        ["links"],
        ["tokens", "list"],
        ["events", "--limit", "5"],
    ]
    for cmd in commands:
        answers = []
        for _ in range(3):  # the mesh lives on between two runs (a tick, a link going stale): equal in one pair
            before = run(controller, "-o", "json", *cmd, tmp=tmp_path)
            after = run(controller, *cmd, "-o", "json", tmp=tmp_path)
            assert before.returncode == 0 and after.returncode == 0, (cmd, before.stderr, after.stderr)
            answers.append((stable(json.loads(after.stdout)), stable(json.loads(before.stdout))))
            if answers[-1][0] == answers[-1][1]:
                break
        assert answers[-1][0] == answers[-1][1], (cmd, answers)

    r = run(controller, "regions", "list", "--output", "yaml", tmp=tmp_path)
    assert r.returncode == 0, r.stderr
    assert {x["id"] for x in yaml.safe_load(r.stdout)} == {A, B, C}

    # both given: the sub-command's wins, as the nearer one does in kubectl
    r = run(controller, "-o", "yaml", "status", "-o", "json", tmp=tmp_path)
    assert r.returncode == 0 and json.loads(r.stdout)["regions_by_state"]["active"] == 3
    r = run(controller, "-o", "json", "regions", "show", A, "-o", "yaml", tmp=tmp_path)
    assert r.returncode == 0 and yaml.safe_load(r.stdout)["id"] == A and not r.stdout.lstrip().startswith("{")

    r = run(controller, "regions", "list", "-o", "xml", tmp=tmp_path)
    assert r.returncode == 2 and "xml" in r.stderr and "Traceback" not in r.stderr


def test_help_lists_output_everywhere(tmp_path: Path) -> None:
    for cmd in (["regions", "list"], ["status"], ["route"], ["tokens", "create"], ["config", "get-contexts"]):
        r = run(None, *cmd, "--help", tmp=tmp_path)
        assert r.returncode == 0, r.stderr
        assert "-o, --output" in r.stdout and "table|json|yaml" in r.stdout, cmd
    top = run(None, "--help", tmp=tmp_path).stdout
    for name in ("lab", "stack", "agent", "regions", "status"):
        assert f"\n  {name} " in top, name


PROBE = """
import json, sys
import meshctl.cli.main as m
heavy = ("httpx", "pydantic", "rich", "yaml", "meshctl.client._client", "meshctl.wire.schemas",
         "meshctl.lab", "meshctl.cli.lab", "meshctl.cli.stack", "meshctl.cli.agent", "stacks", "probes")
seen = {"import": sorted(h for h in heavy if h in sys.modules)}
for argv in (["--help"], ["regions", "--help"], ["regions", "list", "--help"], ["status", "--help"]):
    sys.argv = ["meshctl", *argv]
    try:
        m.main()
    except SystemExit:
        pass
    seen[" ".join(argv)] = sorted(h for h in heavy if h in sys.modules)
print(json.dumps(seen))
"""


def test_start_up_loads_only_what_help_needs() -> None:
    """`meshctl --help` (and a sub-command's help) loads no client, no Rich, no lab or stacks."""
    r = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    seen = json.loads(r.stdout.strip().splitlines()[-1])
    # (Typer 0.29 would load pydantic for every option it parses: pyproject keeps it below)
    assert all(mods == [] for mods in seen.values()), seen


def test_lazy_sub_apps_help_matches_their_own() -> None:
    """The one-line help `meshctl --help` shows for a lazy sub-app is the sub-app's own."""
    import importlib

    import typer

    from meshctl.cli.group import LAZY

    for name, (module, attr, text) in LAZY.items():
        app = getattr(importlib.import_module(module), attr)
        assert typer.main.get_command(app).help == text, name


API_PROBE = """
import json, ssl, sys
loads = []
load = ssl.SSLContext.load_verify_locations
def counting(self, *args, **kwargs):
    loads.append(args or kwargs)
    return load(self, *args, **kwargs)
ssl.SSLContext.load_verify_locations = counting
import meshctl.cli.main as m
sys.argv = ["meshctl", *sys.argv[1:]]
try:
    m.main()
except SystemExit as exc:
    code = exc.code
else:
    code = 0
modules = sorted(k for k, v in sys.modules.items() if v is not None)  # None: an import refused on purpose
sys.stderr.write("\\nPROBE " + json.dumps({"code": code, "modules": modules, "ca_loads": len(loads)}))
"""

# what a command that calls the API must not load: the server, the lab, the stacks, the agent,
# the route watch (asyncio and threads), trio (Selenium's, imported by httpcore when present)
NOT_FOR_THE_CLI = (
    "fastapi", "starlette", "uvicorn", "sqlalchemy", "alembic", "psycopg", "numpy", "numba", "msgspec",
    "prometheus_client", "cryptography", "pulumi", "selenium", "trio", "meshctl.server", "meshctl.api",
    "meshctl.service", "meshctl.store", "meshctl.lab", "meshctl.cli.lab", "meshctl.cli.stack", "probes",
    "meshctl.client._routes", "httpx._main", "pydantic", "pydantic_core", "meshctl.wire",
)  # fmt: skip


@pytest.mark.parametrize(
    "argv",
    [["status"], ["-o", "json", "status"], ["regions", "list", "-o", "yaml"], ["route", A, B, "--explain"]],
)
def test_an_api_command_loads_only_the_client(controller: ControllerProcess, tmp_path: Path, argv: list[str]) -> None:
    """Start-up of a command that calls the API: the client (httpx; the answers stay JSON, no
    pydantic), Rich for a table, PyYAML for yaml, and nothing of the server or the lab; and no certificate authorities
    loaded for an http:// controller (httpx would load certifi's, 30-40 ms, for every client)."""
    controller.feed_links({(A, B): 20.0, (B, A): 20.0})
    env = {
        **os.environ,
        "MESHCTL_CONTROLLER": controller.url,
        "MESHCTL_TOKEN": controller.admin_token,
        "MESHCTL_CONFIG": str(tmp_path / "no-config.yaml"),
        "COLUMNS": "80",
    }
    r = subprocess.run([sys.executable, "-c", API_PROBE, *argv], capture_output=True, text=True, env=env, timeout=60)
    probe = json.loads(r.stderr.rsplit("PROBE ", 1)[1])
    assert probe["code"] in (0, None), r.stderr
    assert r.stdout.strip(), "the command printed its answer"
    modules = set(probe["modules"])
    assert "meshctl.client._client" in modules and "httpx" in modules  # it did call the API
    loaded = sorted(m for m in modules if any(m == bad or m.startswith(bad + ".") for bad in NOT_FOR_THE_CLI))
    assert loaded == [], loaded
    assert probe["ca_loads"] == 0, "an http:// controller needs no certificate authorities"
    assert ("yaml" in modules) == ("yaml" in argv), "PyYAML only for -o yaml (no config file here)"
    assert ("rich" in modules) == ("-o" not in argv), "Rich only for tables"
