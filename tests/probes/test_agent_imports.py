"""What the agent loads: it runs on every media node, so what it does not need stays out."""

from __future__ import annotations

import subprocess
import sys


def test_the_agent_does_not_load_httpx_command_line_or_the_operator_cli() -> None:
    code = (
        "import sys, resource, probes.cli, probes.agent, httpx\n"
        "print(sorted(m for m in ('rich', 'click', 'pygments', 'typer', 'pydantic', 'fastapi') if m in sys.modules))\n"
        "print(callable(httpx.main))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] == "[]", out  # none of them: the operator's CLI, the controller, httpx's own command line
    assert out[1] == "True"  # httpx still works, its command line a stub that says what is missing
