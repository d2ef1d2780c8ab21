"""meshctl.files.atomic_write: whole or unchanged after a kill at any point, never readable by others.

The kill tests run the real writer (atomic_write itself, the agent's window counter, a spool put,
the private key) in a child process that SIGKILLs itself at one step of the write, then look at
what a restarted agent finds on disk.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from meshctl.files import atomic_write, remove_temps
from probes.agent import SEQ_FILE, Agent
from probes.config import AgentConfig
from probes.keys import PRIVATE_KEY_FILE, load_or_create
from probes.spool import Spool

ROOT = Path(__file__).resolve().parents[2]


def test_writes_whole_content_with_the_mode_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "f"
    atomic_write(target, "one")
    assert target.read_text() == "one" and stat.S_IMODE(target.stat().st_mode) == 0o600
    atomic_write(target, b"\x00two", mode=0o644)
    assert target.read_bytes() == b"\x00two" and stat.S_IMODE(target.stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_the_temp_file_is_created_exclusively_with_the_final_mode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The mode is given to open(2) itself: no moment where the secret is readable by others."""
    opened: list[tuple[str, int, int]] = []
    real_open = os.open

    def spy(path: str | os.PathLike[str], flags: int, mode: int = 0o777, **kw: object) -> int:
        opened.append((os.fspath(path), flags, mode))
        return real_open(path, flags, mode, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", spy)
    atomic_write(tmp_path / "secret", "k")
    tmp, flags, mode = opened[0]
    assert Path(tmp).parent == tmp_path and Path(tmp).name.startswith(".secret.") and tmp.endswith(".tmp")
    assert flags & os.O_EXCL and flags & os.O_CREAT and mode == 0o600


def test_a_failed_write_leaves_the_old_content_and_no_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "f"
    target.write_text("old")

    def broken(fd: int) -> None:
        raise OSError(5, "I/O error")

    monkeypatch.setattr(os, "fsync", broken)
    with pytest.raises(OSError, match="I/O error"):
        atomic_write(target, "new")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["f"]


# --- a kill at each step ---------------------------------------------------------------------

CHILD = """
import json, os, signal, sys
from pathlib import Path
action, step, state = sys.argv[1], sys.argv[2], Path(sys.argv[3])
calls = {"n": 0}

def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

real_fsync = os.fsync

def fsync(fd):
    calls["n"] += 1
    # the first fsync is the file's (before the rename), the second the directory's (after it)
    if (step == "file-fsync" and calls["n"] == 1) or (step == "dir-fsync" and calls["n"] == 2):
        die()
    real_fsync(fd)

if step == "rename":
    os.replace = die
os.fsync = fsync

if action == "atomic_write":
    from meshctl.files import atomic_write
    atomic_write(state / "target", "new content")
elif action == "seq":
    from probes.agent import Agent
    from probes.config import AgentConfig
    Agent(AgentConfig("http://ctl", "aws:us-east-1", "192.0.2.1:51820", "mt0", state)).next_seq()
elif action == "spool":
    from probes.spool import Spool
    Spool(state / "spool").put(8, {"seq": 8, "peers": []})
elif action == "key":
    from probes.keys import PRIVATE_KEY_FILE, write_private
    write_private(state / PRIVATE_KEY_FILE, "NEWKEY")
print("not killed")
"""


def run_child(action: str, step: str, state: Path) -> None:
    script = state.parent / "child.py"
    script.write_text(textwrap.dedent(CHILD))
    proc = subprocess.run(
        [sys.executable, str(script), action, step, str(state)], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == -9, proc.stdout + proc.stderr


def visible(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if not p.name.startswith("."))


def temps(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


STEPS = [("file-fsync", False), ("rename", False), ("dir-fsync", True)]  # (kill at, new content expected)


@pytest.mark.parametrize(("step", "new"), STEPS)
def test_atomic_write_killed_at_each_step(step: str, new: bool, tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "target").write_text("old content")
    run_child("atomic_write", step, state)
    assert (state / "target").read_text() == ("new content" if new else "old content")
    assert visible(state) == ["target"]
    if not new:
        assert len(temps(state)) == 1, "the temp file sits beside the target, never in its place"
    remove_temps(state)
    assert temps(state) == []


def agent(state: Path) -> Agent:
    return Agent(AgentConfig("http://ctl", "aws:us-east-1", "192.0.2.1:51820", "mt0", state))


@pytest.mark.parametrize(("step", "new"), STEPS)
def test_the_window_counter_survives_a_kill(step: str, new: bool, tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / SEQ_FILE).write_text("41")
    run_child("seq", step, state)
    assert (state / SEQ_FILE).read_text() == ("42" if new else "41")
    restarted = agent(state)  # cleans the temp files of the killed one
    assert temps(state) == [] and restarted.next_seq() == (42 if new else 41)


@pytest.mark.parametrize(("step", "new"), STEPS)
def test_a_spooled_window_is_whole_or_absent_after_a_kill(step: str, new: bool, tmp_path: Path) -> None:
    state = tmp_path / "state"
    Spool(state / "spool").put(7, {"seq": 7, "peers": []})
    run_child("spool", step, state)
    spool = Spool(state / "spool")
    assert [seq for seq, _ in spool] == ([7, 8] if new else [7])
    assert all(json.loads(p.read_text())["report"]["seq"] == int(p.stem) for p in (state / "spool").glob("*.json"))
    assert temps(state / "spool") == []


@pytest.mark.parametrize(("step", "new"), STEPS)
def test_the_private_key_survives_a_kill(step: str, new: bool, tmp_path: Path) -> None:
    state = tmp_path / "state"
    before = load_or_create(state)
    run_child("key", step, state)
    key = (state / PRIVATE_KEY_FILE).read_text()
    if new:
        assert key == "NEWKEY\n"
    else:
        assert load_or_create(state) == before
    assert stat.S_IMODE((state / PRIVATE_KEY_FILE).stat().st_mode) == 0o600
    for name in temps(state):
        assert stat.S_IMODE((state / name).stat().st_mode) == 0o600, "a half-written key is not readable by others"
