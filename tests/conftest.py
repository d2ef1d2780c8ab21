"""Shared fixtures: a real controller process on SQLite and on PostgreSQL.

`controller` is parametrised over the backends in MESH_TEST_BACKENDS (default: sqlite, plus
postgres when a server answers at MESH_TEST_PG_URL), so every API and CLI test runs on both.
"""

from __future__ import annotations

import base64
import itertools
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.zygote import ForkedProcess, Zygote

PG_URL = os.environ.get("MESH_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
ADMIN = "msh_a_test-admin-" + "x" * 32


def _pg_available() -> bool:
    try:
        import psycopg

        with psycopg.connect(PG_URL, connect_timeout=2):
            return True
    except Exception:
        return False


def backends() -> list[str]:
    wanted = os.environ.get("MESH_TEST_BACKENDS")
    if wanted:
        return [b.strip() for b in wanted.split(",") if b.strip()]
    return ["sqlite", "postgres"] if _pg_available() else ["sqlite"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresDatabase:
    """A throwaway database on the PostgreSQL server, dropped afterwards."""

    def __init__(self) -> None:
        import psycopg

        self.name = "meshtest_" + secrets.token_hex(6)
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.name}"')
        base = PG_URL.rsplit("/", 1)[0]
        self.url = f"{base}/{self.name}"

    def drop(self) -> None:
        import psycopg

        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


def make_database_url(backend: str, tmp_path: Path) -> tuple[str, Callable[[], None]]:
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'controller.db'}", lambda: None
    if backend == "postgres":
        if not _pg_available():
            pytest.fail(f"PostgreSQL is not reachable at {PG_URL}")
        db = PostgresDatabase()
        return db.url, db.drop
    raise ValueError(backend)


def wait_until(
    predicate: Callable[[], Any], timeout: float, what: str, poll: float = 0.2, detail: Callable[[], str] | None = None
) -> Any:
    """The first truthy answer of `predicate`, asked every `poll` seconds; AssertionError after
    `timeout`, with the last answer (and `detail()`, such as a server log)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(poll)
    raise AssertionError(
        f"timed out after {timeout:g}s waiting for {what}; last={last!r}" + (f"\n{detail()}" if detail else "")
    )


class ControllerProcess:
    """`meshctl serve` as a real process, with helpers a test needs."""

    def __init__(
        self,
        database_url: str,
        tmp_path: Path,
        env: dict[str, str] | None = None,
        replica_id: str = "r1",
        port: int | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self.database_url = database_url
        self.admin_token = ADMIN
        self.host = host
        self.port = port or free_port()
        self.url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{self.port}"
        self.replica_id = replica_id
        self.log_path = tmp_path / f"controller-{replica_id}.log"
        self.extra_env = dict(env or {})
        self.proc: subprocess.Popen[bytes] | ForkedProcess | None = None
        self._seq = itertools.count(1)
        self._feed_nodes: dict[str, tuple[str, str]] = {}

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "MESH_ADMIN_TOKEN": self.admin_token,
                "MESH_RECOMPUTE_INTERVAL_S": "0.2",
                "MESH_FOLLOWER_POLL_S": "0.2",
            }
        )
        env.update(self.extra_env)
        return env

    def argv(self) -> list[str]:
        """`meshctl serve` as this process is started (a subclass changes only this)."""
        return [
            sys.executable, "-m", "meshctl", "serve",
            "--host", self.host, "--port", str(self.port), "--database-url", self.database_url,
            "--replica-id", self.replica_id,
        ]  # fmt: skip

    def spawn(self) -> ControllerProcess:
        """Forked from the warm zygote (tests/zygote.py) when it can be, else a plain subprocess."""
        argv = self.argv()
        if Zygote.enabled() and argv[1:3] == ["-m", "meshctl"]:
            self.proc = Zygote.shared().spawn(argv, self.env(), self.log_path)
            return self
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(argv, env=self.env(), stdout=log, stderr=subprocess.STDOUT)
        return self

    def wait_ready(self, timeout: float = 30.0) -> ControllerProcess:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"controller exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"controller did not start in {timeout}s:\n{self.log()}")

    def start(self, timeout: float = 30.0) -> ControllerProcess:
        self.spawn()
        try:
            return self.wait_ready(timeout)
        except BaseException:
            self.kill()  # a controller that did not come up is not left running
            raise

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:] if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def client(self, token: str | None = None) -> httpx.Client:
        tok = self.admin_token if token is None else token
        headers = {"Authorization": f"Bearer {tok}"} if tok else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=10)

    # --- test data ----------------------------------------------------------------------

    def add_region(self, region_id: str, lat: float = 0.0, lon: float = 0.0, metro: str | None = None) -> None:
        with self.client() as c:
            r = c.put(f"/v1/regions/{region_id}", json={"lat": lat, "lon": lon, "metro": metro})
            assert r.status_code in (200, 201), r.text

    def join_node(self, region: str, name: str | None = None) -> dict[str, Any]:
        with self.client() as c:
            jt = c.post("/v1/join-tokens", json={"region": region, "ttl_s": 600, "uses": 1})
            assert jt.status_code == 201, jt.text
            key = base64.b64encode(secrets.token_bytes(32)).decode()
            r = c.post(
                "/v1/nodes",
                json={
                    "join_token": jt.json()["token"],
                    "region": region,
                    "name": name or f"n-{region.replace(':', '-')}-{secrets.token_hex(2)}",
                    "public_key": key,
                    "endpoint": "192.0.2.10:51820",
                },
            )
            assert r.status_code == 201, r.text
            return r.json()

    def report(self, node: dict[str, Any], peers: list[dict[str, Any]], seq: int | None = None) -> httpx.Response:
        body = {
            "node_id": node["node_id"],
            "seq": next(self._seq) if seq is None else seq,
            "window_start": datetime.now(UTC).isoformat(),
            "window_s": 1.0,
            "peers": peers,
        }
        with self.client(node["node_token"]) as c:
            return c.post("/v1/reports", json=body)

    def feed_links(self, rtts: dict[tuple[str, str], float], loss: dict[tuple[str, str], float] | None = None) -> None:
        """Make GET /v1/links show these RTTs: one node per region reports each pair."""
        loss = loss or {}
        regions = sorted({r for pair in rtts for r in pair})
        with self.client() as c:
            known = {r["id"] for r in c.get("/v1/regions").json()}
        for r in regions:
            if r not in known:
                self.add_region(r)
            if r not in self._feed_nodes:
                n = self.join_node(r)
                self._feed_nodes[r] = (n["node_id"], n["node_token"])
        by_src: dict[str, list[dict[str, Any]]] = {}
        for (a, b), rtt in rtts.items():
            pct = loss.get((a, b), 0.0)
            received = round(100 * (1 - pct / 100))
            by_src.setdefault(a, []).append(
                {
                    "peer_node_id": self._feed_nodes[b][0],
                    "sent": 100,
                    "received": received,
                    "rtt_min_ms": rtt * 0.98,
                    "rtt_p50_ms": rtt,
                    "rtt_p90_ms": rtt * 1.05,
                    "rtt_max_ms": rtt * 1.2,
                    "jitter_ms": 0.0,
                }
            )
        for a, peers in by_src.items():
            node_id, token = self._feed_nodes[a]
            r = self.report({"node_id": node_id, "node_token": token}, peers)
            assert r.status_code == 202, r.text

    def wait_for(self, predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
        return wait_until(predicate, timeout, what, poll=0.1, detail=self.log)


@pytest.fixture(params=backends())
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def database_url(backend: str, tmp_path: Path) -> Iterator[str]:
    url, drop = make_database_url(backend, tmp_path)
    try:
        yield url
    finally:
        drop()


@pytest.fixture
def controller_env() -> dict[str, str]:
    """Extra environment of the `controller` process (MESH_*): override this fixture in a test module."""
    return {}


@pytest.fixture
def controller(database_url: str, tmp_path: Path, controller_env: dict[str, str]) -> Iterator[ControllerProcess]:
    proc = ControllerProcess(database_url, tmp_path, env=controller_env).start()
    try:
        yield proc
    finally:
        proc.kill() if os.environ.get("MESH_TEST_FAST_KILL") else proc.stop()


def client_side_backend(request: pytest.FixtureRequest) -> str:
    """`backend` for modules that test the client side (argv, output, the client library): the
    store behind the API does not change what they check, and tests/api runs every backend."""
    return str(request.param)
