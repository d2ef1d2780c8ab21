"""The structure the README promises: layers that point down, and modules a person can read."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MAX_LINES = 500


def test_imports_point_down_only() -> None:
    """import-linter's contracts in pyproject.toml: an upward import fails here."""
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert exe is not None, "import-linter is a dev dependency: pip install -e '.[dev]'"
    done = subprocess.run([exe, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout, done.stdout[-2000:]


def test_no_module_over_500_lines_without_a_reason() -> None:
    """A long module says why in its docstring (a sentence with 'lines' in it)."""
    offenders = []
    for package in ("meshctl", "probes", "stacks/meshstack", "stacks/policy"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if "migrations" in path.parts:
                continue
            text = path.read_text()
            if text.count("\n") <= MAX_LINES:
                continue
            doc = ast.get_docstring(ast.parse(text)) or ""
            if "lines" not in doc:
                offenders.append(f"{path.relative_to(ROOT)}: {text.count(chr(10))} lines, no reason in its docstring")
    assert not offenders, "\n".join(offenders)
