"""The agent artifact as a release builds it (`make agent-wheel`): the wheel of this repository
(`pip wheel --no-deps .`) and the wheelhouse of its `agent` extra (stacks/tools/agent_wheelhouse.py),
here for one Python and architecture (the node's) instead of the release's 3.12 on x86_64 + aarch64.
Needs the dependencies' wheels once (an index or the machine's find-links)."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Artifacts:
    dir: Path
    wheel: Path
    wheelhouse: Path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_agent_artifacts(out: Path, python: str, arch: str) -> Artifacts:
    """The wheel, the wheelhouse tarball and SHA256SUMS in `out`, as `make agent-wheel` makes them."""
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(ROOT), "-w", str(out)],
        check=True,
        timeout=600,  # a few seconds; the ceiling is for a machine under heavy load
        cwd=out,
    )
    (wheel,) = out.glob("meshctl-*.whl")
    tool = ROOT / "stacks" / "tools" / "agent_wheelhouse.py"
    subprocess.run(
        [sys.executable, str(tool), "--wheel", str(wheel), "--out", str(out), "--python", python, "--arch", arch],
        check=True,
        timeout=600,
        capture_output=True,
    )
    (wheelhouse,) = out.glob("meshctl-agent-wheelhouse-*.tar.gz")
    return Artifacts(out, wheel, wheelhouse)
