"""A warm parent for the controller processes the tests start.

Every API test gets its own real `meshctl serve` process, and about a second of each start was the
import of FastAPI, SQLAlchemy, Alembic, numba and the server. The zygote imports them once per test
worker and forks a child per start: the child is the real CLI (`meshctl.cli.main.main`) with the
test's argv and environment, its own process, port, database and log, killed and signalled like any
process. `MESH_TEST_NO_ZYGOTE=1` starts plain subprocesses instead (same tests, slower).

The zygote stays single-threaded (a fork copies only the calling thread): it accepts spawn requests
on a Unix socket and reaps its children in the same loop, writing each exit status to a file that
`ForkedProcess.poll` reads, since the test process is not the parent and cannot `waitpid`.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

SPAWN_TIMEOUT_S = 30.0
START_TIMEOUT_S = 120.0  # the zygote's own imports, once per worker (slow on a loaded machine)


class ForkedProcess:
    """The part of `subprocess.Popen` the tests use, for a child of the zygote."""

    def __init__(self, pid: int, argv: list[str], status_file: Path) -> None:
        self.pid = pid
        self.args = argv
        self.returncode: int | None = None
        self._status_file = status_file

    def poll(self) -> int | None:
        if self.returncode is None and self._status_file.exists():
            self.returncode = int(self._status_file.read_text())
            self._status_file.unlink(missing_ok=True)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (code := self.poll()) is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
            time.sleep(0.01)
        return code

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class Zygote:
    """One warm parent per test worker (`shared()`), started on first use."""

    _shared: Zygote | None = None

    @classmethod
    def enabled(cls) -> bool:
        return not os.environ.get("MESH_TEST_NO_ZYGOTE")

    @classmethod
    def shared(cls) -> Zygote:
        if cls._shared is None:
            cls._shared = cls()
            atexit.register(cls._shared.close)
        return cls._shared

    def __init__(self) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="meshctl-zygote-"))
        self._socket = self._dir / "spawn.sock"
        log = open(self._dir / "zygote.log", "ab")  # noqa: SIM115 - closed with the process
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "tests.zygote", str(self._socket)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=Path(__file__).resolve().parent.parent,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._socket.exists():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the test zygote did not start:\n{(self._dir / 'zygote.log').read_text()}")
            time.sleep(0.02)
        self._count = 0

    def spawn(self, argv: list[str], env: dict[str, str], log_path: Path) -> ForkedProcess:
        """`argv` is `[python, -m, meshctl, ...]`; the child runs the CLI with the rest."""
        if argv[1:3] != ["-m", "meshctl"]:
            raise ValueError(f"the zygote starts `python -m meshctl ...` only, not {argv}")
        self._count += 1
        status_file = self._dir / f"{self._count}.status"
        request = {"args": argv[3:], "env": env, "log": str(log_path), "cwd": os.getcwd(), "status": str(status_file)}
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(SPAWN_TIMEOUT_S)
            s.connect(str(self._socket))
            s.sendall(json.dumps(request).encode() + b"\n")
            reply = s.makefile().readline()
        if not reply:
            raise RuntimeError(f"the test zygote did not answer:\n{(self._dir / 'zygote.log').read_text()}")
        return ForkedProcess(int(json.loads(reply)["pid"]), argv, status_file)

    def close(self) -> None:
        self._proc.terminate()
        self._proc.wait(10)


def _exit_status(status: int) -> int:
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def _run_child(request: dict[str, Any]) -> None:
    """In the forked child: become `meshctl <args>` with the test's environment and log."""
    code = 1
    try:
        os.setpgid(0, 0)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.argv = ["meshctl", *request["args"]]
        from meshctl.cli.main import main

        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def serve(socket_path: str) -> None:
    """The zygote's loop: import the server once, then fork a child per request and reap them."""
    # warm imports, inherited by every child
    import meshctl.cli.main
    import meshctl.server  # noqa: F401

    statuses: dict[int, str] = {}
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(socket_path + ".tmp")
    os.rename(socket_path + ".tmp", socket_path)
    listener.listen(16)
    listener.settimeout(0.02)
    parent = os.getppid()
    while os.getppid() == parent:  # the test worker is gone: so is its zygote
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            conn = None
        if conn is not None:
            with conn:
                request = json.loads(conn.makefile().readline())
                pid = os.fork()
                if pid == 0:
                    listener.close()
                    conn.close()
                    _run_child(request)
                statuses[pid] = request["status"]
                conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")
        while statuses:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            path = statuses.pop(pid, None)
            if path:
                Path(path + ".tmp").write_text(str(_exit_status(status)))
                os.rename(path + ".tmp", path)


if __name__ == "__main__":
    serve(sys.argv[1])
