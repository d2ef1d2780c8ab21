"""A private PostgreSQL cluster for the replica tests, so a test may stop and start it."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import ControllerProcess, free_port


@pytest.fixture(autouse=True)
def plain_subprocesses(monkeypatch: pytest.MonkeyPatch) -> None:
    """Replicas here start as plain subprocesses, not forked from the warm zygote: these tests time
    leases, heartbeats and take-overs, and one fresh-clone run saw them stall (cause not found; the
    same tests passed forked in two other full runs), so they keep the start-up they were written for."""
    monkeypatch.setenv("MESH_TEST_NO_ZYGOTE", "1")


def _bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


class PrivatePostgres:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self._as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def _run(self, *args: str) -> None:
        subprocess.run([*self._as_user, *args], check=True, capture_output=True, timeout=60)

    def init(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if self._as_user:
            shutil.chown(self.root, "postgres", "postgres")
        self._run(_bin("initdb") or "initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")

    def start(self) -> None:
        opts = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} -c fsync=off"
        self._run(
            _bin("pg_ctl") or "pg_ctl", "-D", str(self.data), "-o", opts, "-l", str(self.root / "pg.log"), "-w", "start"
        )

    def stop(self) -> None:
        self._run(_bin("pg_ctl") or "pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def reset(self) -> None:
        """Drop and recreate the schema: each test starts from an empty database."""
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute("DROP SCHEMA public CASCADE")
            conn.execute("CREATE SCHEMA public")


@pytest.fixture(scope="session")
def private_pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivatePostgres]:
    if _bin("initdb") is None or _bin("pg_ctl") is None:
        pytest.fail("PostgreSQL server binaries (initdb, pg_ctl) are not installed: apt-get install postgresql")
    pg = PrivatePostgres(Path(f"/tmp/meshtest-pg-{os.getpid()}-{time.monotonic_ns()}"))
    pg.init()
    pg.start()
    try:
        yield pg
    finally:
        try:
            pg.stop()
        finally:
            shutil.rmtree(pg.root, ignore_errors=True)


@pytest.fixture
def pg_url(private_pg: PrivatePostgres) -> str:
    private_pg.reset()
    return private_pg.url


class AlikeReplica(ControllerProcess):
    """`meshctl serve` as an operator starts every replica: the same flags, no --replica-id (each
    makes its own: host name and a random suffix). `name` only names the log file, unless
    `explicit_id`: then it is given as `--replica-id`, as an operator who names them would."""

    def __init__(
        self, database_url: str, tmp_path: Path, name: str, port: int | None = None, explicit_id: bool = False
    ) -> None:
        super().__init__(database_url, tmp_path, replica_id=name, port=port)
        self.explicit_id = explicit_id

    def argv(self) -> list[str]:
        argv = super().argv()
        return argv if self.explicit_id else argv[: argv.index("--replica-id")]

    def identity(self) -> str:
        """The replica id it made for itself."""
        return str(httpx.get(f"{self.url}/healthz", timeout=2).json()["replica_id"])
