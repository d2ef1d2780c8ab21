"""The scale simulator: a real controller, and N regions x M synthetic agents in one asyncio process.

No namespaces and no probes on the wire: each synthetic node joins with a join token of its region
(`POST /v1/nodes`, at a given rate), then sends one window every `window_s` exactly as the real
agent does (`probes.agent.close_window` and `probes.reporter`: the same body, `seq` from 0 up, the
node credential as bearer, `X-Mesh-Sent-At`), over keep-alive HTTP/1.1 connections that cost the
simulator little CPU, so the cores go to the controller under test. Each node reports k nodes of
every other region (the design's fan-out), with the RTTs of the Skyplane table
(`meshctl.core.rttdata`; past its 69 regions, copies of them with a 2 ms RTT between copies).

Faults on a schedule: `dark:REGION@T` (the region's nodes stop reporting and every report about
them shows 100% loss) and `lossy:A/B@T` (the A<->B links lose `lossy_percent`); REGION is an id
or its index in the run. Outage-to-drain is the controller's `drain` event time minus the fault's.

What it measures is in `Result`; `meshctl lab simulate` shows it live, `bench.bench_scale` prints
it (and one JSON line). One simulator process: its own CPU and how late it sent windows are in
the result (`sim_cpu_percent`, `sim_lag_p99_ms`), so a run that could not keep up says so.

About 910 lines as one module because most of it is `Simulation`, one run's shared state (fleet,
schedule, counters) and the tasks that read it; it would split first at the measuring side (the
/proc, database and /metrics readers, and the summary) into their own module.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import math
import os
import random
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

from meshctl.client import AsyncClient
from meshctl.core.catalog import lookup
from meshctl.core.rttdata import parse_skyplane_csv

RTT_CSV = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "cloud-rtt-skyplane.csv"
COPY_RTT_MS = 2.0  # between two copies of one Skyplane region (past the table's 69)
PROBES_PER_S = 5  # per target, as the lab's agents
HEALTHZ_BURST = 2000


class SimError(RuntimeError):
    pass


@dataclass(frozen=True)
class Fault:
    kind: str  # "dark" or "lossy"
    regions: tuple[str, ...]
    at_s: float

    def describe(self) -> str:
        return f"{self.kind}:{'/'.join(self.regions)}@{self.at_s:g}"


@dataclass
class SimConfig:
    regions: int = 3
    nodes_per_region: int = 2
    duration_s: float = 30.0
    window_s: float = 5.0
    k: int = 2
    join_rate: float = 0.0  # joins/s; 0: as fast as the controller takes them (8 at a time)
    faults: list[str] = field(default_factory=list)
    lossy_percent: float = 30.0
    database_url: str | None = None
    replicas: int = 1  # controllers on one PostgreSQL store, each node reporting to one of them
    connections: int = 32
    route_qps: float = 20.0
    rtt_csv: Path = RTT_CSV
    controller_env: dict[str, str] = field(default_factory=dict)
    # run the controller of another checkout (its cwd and PYTHONPATH), for a before/after
    controller_tree: Path | None = None
    peer_columns: bool = True  # a report's peers as columns (the agent), or as a list (agents before it)


@dataclass
class Tick:
    """One window of the run, for a live view."""

    t_s: float
    reports_per_s: float
    report_p99_ms: float
    controller_cpu_percent: float
    acknowledged: int
    drained: list[str]
    faults: list[str]


# --- the fleet's shape ---------------------------------------------------------------------


def region_ids(n: int, csv_path: Path) -> tuple[list[str], Callable[[int, int], float]]:
    """n region ids and the RTT (ms) between two of them by index: the Skyplane regions, then copies."""
    table = parse_skyplane_csv(csv_path.read_text())
    base = sorted({a for a, _ in table} | {b for _, b in table})
    ids = [base[i] if i < len(base) else f"{base[i % len(base)]}-s{i // len(base)}" for i in range(n)]

    def rtt(i: int, j: int) -> float:
        a, b = base[i % len(base)], base[j % len(base)]
        return COPY_RTT_MS if a == b else table.get((a, b)) or table.get((b, a)) or 100.0

    return ids, rtt


def parse_fault(text: str, regions: list[str]) -> Fault:
    """`dark:REGION@T` or `lossy:A/B@T`; a region is its id or its index in `regions`."""
    kind, _, rest = text.partition(":")
    where, at, when = rest.rpartition("@")
    if kind not in ("dark", "lossy") or not at or not where:
        raise SimError(f"fault {text!r}: expected dark:REGION@SECONDS or lossy:A/B@SECONDS")
    names = where.split("/")
    if len(names) != (1 if kind == "dark" else 2):
        raise SimError(f"fault {text!r}: dark takes one region, lossy two (A/B)")
    out = []
    for name in names:
        if name.isdigit() and int(name) < len(regions):
            name = regions[int(name)]
        if name not in regions:
            raise SimError(f"fault {text!r}: no region {name!r} in this run (ids or 0..{len(regions) - 1})")
        out.append(name)
    return Fault(kind, tuple(out), float(when))


@dataclass
class SimNode:
    index: int
    region: int
    node_id: str = ""
    token: str = ""
    seq: int = 0
    acked: int = 0
    peers: list[tuple[str, int, float]] = field(default_factory=list)  # (peer id, its region, rtt ms)
    entries: list[PeerEntry] = field(default_factory=list)  # its peers' figures while nothing is faulty
    body_version: int = -1
    peers_json: bytes = b""


PeerEntry = tuple[str, ...]  # one peer's fields (FIELDS) as JSON text, "null" where left out
FIELDS = ("peer_node_id", "sent", "received", "reorders", "duplicates")
RTT_FIELDS = ("rtt_min_ms", "rtt_p50_ms", "rtt_p90_ms", "rtt_max_ms", "jitter_ms")


def peer_entry(peer_id: str, rtt: float, sent: int, loss: float, jitter: float) -> PeerEntry:
    """One peer's figures as `probes.stats.PeerWindow.summary` gives them (made by hand: ~1 us)."""
    received = max(0, sent - round(sent * loss / 100.0))
    head = (f'"{peer_id}"', str(sent), str(received), "0", "0")
    if received <= 0:
        return head + ("null",) * len(RTT_FIELDS)
    return (*head, f"{rtt * 0.98:.4f}", f"{rtt:.4f}", f"{rtt * 1.03:.4f}", f"{rtt * 1.1:.4f}", f"{jitter:.4f}")


def peers_json(entries: list[PeerEntry], columns: bool) -> bytes:
    """A report's `peers` as the agent sends them (`probes.reporter.with_peer_columns`), or as
    the list of objects an older agent sends."""
    names = (*FIELDS, *RTT_FIELDS)
    if columns:
        cols = (f'"{name}": [' + ",".join(e[i] for e in entries) + "]" for i, name in enumerate(names))
        return ("{" + ", ".join(cols) + "}").encode()
    rows = (
        "{" + ", ".join(f'"{name}": {v}' for name, v in zip(names, e, strict=True) if v != "null") + "}"
        for e in entries
    )
    return ("[" + ",".join(rows) + "]").encode()


# --- a raw keep-alive connection -----------------------------------------------------------


class RawConn:
    """HTTP/1.1 on one keep-alive connection, requests pre-built as bytes: little client CPU."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def send(self, request: bytes) -> int:
        """The status of the answer; a kept-alive connection the server closed meanwhile (uvicorn
        closes one idle for 5 s) is opened again and the request sent once more, as HTTP clients do."""
        reused = self.writer is not None
        try:
            return await self._send(request)
        except (OSError, asyncio.IncompleteReadError, IndexError, ValueError):
            self.close()
            if not reused:
                raise
        return await self._send(request)

    async def _send(self, request: bytes) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        try:
            self.writer.write(request)
            status_line = await self.reader.readline()
            length = 0
            while (line := await self.reader.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await self.reader.readexactly(length)
            return int(status_line.split()[1])
        except (OSError, asyncio.IncompleteReadError, IndexError, ValueError):
            self.close()
            raise

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


class _Joined(msgspec.Struct):
    """What a synthetic node keeps of `POST /v1/nodes`'s answer (the rest is skipped)."""

    node_id: str
    node_token: str


# --- the controller process ----------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Controller:
    proc: subprocess.Popen[bytes]
    url: str
    token: str
    database_url: str
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_controller(
    database_url: str | None,
    workdir: Path,
    env: dict[str, str],
    replica_id: str = "sim",
    token: str | None = None,
    tree: Path | None = None,
) -> Controller:
    """`meshctl serve` on a free port (SQLite in `workdir` unless `database_url`), ready to answer;
    `tree`: the meshctl of that checkout (started there, on its PYTHONPATH)."""
    import httpx

    port, token = free_port(), token or secrets.token_urlsafe(24)
    url = database_url or f"sqlite:///{workdir / 'controller.db'}"
    log = workdir / f"controller-{replica_id}.log"
    argv = [sys.executable, "-m", "meshctl", "serve", "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--database-url", url, "--replica-id", replica_id, "--log-level", "warning"]
    with open(log, "ab") as out:
        where = {} if tree is None else {"PYTHONPATH": str(tree)}
        proc = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "MESH_ADMIN_TOKEN": token, **where, **env},
            cwd=tree,
        )
    ctl = Controller(proc, f"http://127.0.0.1:{port}", token, url, log)
    deadline = time.monotonic() + 300  # a 2-core machine at load 40: minutes seen
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SimError(f"the controller exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(ctl.url + "/healthz", timeout=1).status_code == 200:
                return ctl
        time.sleep(0.2)
    ctl.stop()
    raise SimError(f"the controller did not answer /healthz within 300 s:\n{log.read_text()[-3000:]}")


def start_replicas(cfg: SimConfig, database_url: str | None, workdir: Path) -> list[Controller]:
    """`cfg.replicas` controllers on one store, sharing the admin token (replica ids sim-1, sim-2, ...)."""
    if cfg.replicas == 1:
        return [start_controller(database_url, workdir, cfg.controller_env, tree=cfg.controller_tree)]
    token = secrets.token_urlsafe(24)
    out: list[Controller] = []
    try:
        for i in range(cfg.replicas):
            out.append(
                start_controller(
                    database_url, workdir, cfg.controller_env, f"sim-{i + 1}", token, tree=cfg.controller_tree
                )
            )
    except BaseException:
        for ctl in out:
            ctl.stop()
        raise
    return out


def _is_postgresql(url: str | None) -> bool:
    return url is not None and url.startswith(("postgresql", "postgres://"))


def _sa_url(url: str) -> str:
    """The URL for SQLAlchemy with psycopg 3 (the lab may not import the store's `make_engine`:
    it drives the mesh from outside, the import contracts say so)."""
    if url.startswith(("postgresql://", "postgres://")):  # the driver installed is psycopg 3
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


@contextlib.contextmanager
def fresh_database(server_url: str) -> Iterator[str]:
    """A new, empty database on the PostgreSQL server of `server_url` for one run, dropped after it:
    a run's stored count is its own (and a bench never writes into the database it was pointed at)."""
    import sqlalchemy as sa

    name = f"meshsim_{secrets.token_hex(6)}"
    engine = sa.create_engine(_sa_url(server_url), isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as c:
            c.execute(sa.text(f'CREATE DATABASE "{name}"'))
        base, _, _ = server_url.partition("?")
        yield base.rsplit("/", 1)[0] + "/" + name
    finally:
        with contextlib.suppress(Exception), engine.connect() as c:
            c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        engine.dispose()


def proc_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_mib(pid: int, key: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def db_bytes(database_url: str) -> int:
    """The database's size on disk: the SQLite file with its WAL, or pg_database_size."""
    if database_url.startswith("sqlite"):
        path = Path(database_url.split(":///", 1)[1])
        return sum(p.stat().st_size for p in (path, Path(f"{path}-wal")) if p.exists())
    return _scalar(database_url, "select pg_database_size(current_database())")


def stored_reports(database_url: str) -> int:
    """Rows in the store's `reports` table (every accepted window is one)."""
    return _scalar(database_url, "select count(*) from reports")


def stored_by_node(database_url: str) -> dict[str, int]:
    """Accepted windows per node, as the store has them (whichever replica took them)."""
    import sqlalchemy as sa

    engine = sa.create_engine(_sa_url(database_url))
    try:
        with engine.connect() as c:
            rows = c.execute(sa.text("select node_id, count(*) from reports group by node_id"))
            return {str(node): int(n) for node, n in rows}
    finally:
        engine.dispose()


def _scalar(database_url: str, sql: str) -> int:
    import sqlalchemy as sa

    engine = sa.create_engine(_sa_url(database_url))
    try:
        with engine.connect() as c:
            return int(c.execute(sa.text(sql)).scalar_one())
    finally:
        engine.dispose()


def recompute_histogram(metrics_text: str) -> tuple[dict[float, float], float, float]:
    """(cumulative bucket counts by upper bound, count, sum) of mesh_route_recompute_seconds."""
    buckets: dict[float, float] = {}
    count = total = 0.0
    for line in metrics_text.splitlines():
        if line.startswith("mesh_route_recompute_seconds_bucket"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            buckets[math.inf if le == "+Inf" else float(le)] = float(line.rsplit(" ", 1)[1])
        elif line.startswith("mesh_route_recompute_seconds_count "):
            count = float(line.split()[1])
        elif line.startswith("mesh_route_recompute_seconds_sum "):
            total = float(line.split()[1])
    return buckets, count, total


def histogram_quantile(q: float, before: dict[float, float], after: dict[float, float]) -> float:
    """Prometheus' histogram_quantile over the increase between two scrapes (seconds)."""
    bounds = sorted(after)
    inc = [after[b] - before.get(b, 0.0) for b in bounds]
    if not inc or inc[-1] <= 0:
        return float("nan")
    rank, lower, prev = q * inc[-1], 0.0, 0.0
    for b, c in zip(bounds, inc, strict=True):
        if c >= rank:
            if math.isinf(b):
                return lower
            return lower + (b - lower) * (rank - prev) / max(c - prev, 1e-12)
        lower, prev = b, c
    return lower


def pct(xs: list[float], q: int) -> float:
    if len(xs) < 2:
        return xs[0] * 1000 if xs else float("nan")
    return statistics.quantiles(xs, n=100)[q - 1] * 1000


# --- the run -------------------------------------------------------------------------------


class Simulation:
    def __init__(
        self, cfg: SimConfig, on_tick: Callable[[Tick], None] | None = None, say: Callable[[str], None] = print
    ):
        self.cfg = cfg
        self.on_tick = on_tick
        self.say = say
        self.regions, self.rtt = region_ids(cfg.regions, cfg.rtt_csv)
        self.base = [r.rsplit("-s", 1)[0] if r.rsplit("-s", 1)[-1].isdigit() else r for r in self.regions]
        self.faults = sorted((parse_fault(f, self.regions) for f in cfg.faults), key=lambda f: f.at_s)
        self.nodes = [SimNode(i, i // cfg.nodes_per_region) for i in range(cfg.regions * cfg.nodes_per_region)]
        self.dark: dict[int, float] = {}  # region index -> when it went dark
        self.lossy: dict[tuple[int, int], float] = {}  # region pair -> when it began losing
        self.fault_version = 0
        self.fault_times: dict[str, float] = {}  # fault -> wall time it began
        self.drains: dict[str, float] = {}  # region -> time of its first drain event after its fault
        self.latencies: list[float] = []
        self.lags: list[float] = []
        self.codes: dict[int, int] = {}
        self.route_lat: list[float] = []
        self.route_errors = 0
        self.send_errors = 0
        self.rng = random.Random(18)
        self.sent = round(PROBES_PER_S * cfg.window_s)  # probes per target per window
        self.backlog = 0
        self.offered = 0  # windows the fleet closed (a dark node closes none)
        self.peer_columns = cfg.peer_columns  # as the agent: columns, until a controller refuses them

    # peers: k nodes of each other region, spread so every node is probed about as often
    def assign_peers(self) -> None:
        m, k = self.cfg.nodes_per_region, min(self.cfg.k, self.cfg.nodes_per_region)
        for n in self.nodes:
            for r in range(self.cfg.regions):
                if r == n.region:
                    continue
                for j in range(k):
                    peer = self.nodes[r * m + (n.index + j) % m]
                    rtt = self.rtt(n.region, r) * (1 + self.rng.random() * 0.02)
                    n.peers.append((peer.node_id, r, rtt))
                    n.entries.append(peer_entry(peer.node_id, rtt, self.sent, 0.0, 0.2 + self.rng.random() * 0.3))

    def body(self, n: SimNode, due: float) -> bytes:
        """The window that closed at `due`: a fault that began within it shows in part of its probes."""
        w = self.cfg.window_s
        straddles = any(due - w < began < due for began in (*self.dark.values(), *self.lossy.values()))
        if n.body_version != self.fault_version or straddles:  # only the entries about faulty regions change
            entries = n.entries
            if self.dark or self.lossy:
                entries = list(entries)
                for i, (pid, r, rtt) in enumerate(n.peers):
                    loss = 0.0
                    if r in self.dark:
                        loss = 100.0 * min(1.0, max(0.0, (due - self.dark[r]) / w))
                    lossy = self.lossy.get((n.region, r), self.lossy.get((r, n.region)))
                    if lossy is not None:
                        loss = max(loss, self.cfg.lossy_percent * min(1.0, max(0.0, (due - lossy) / w)))
                    if loss:
                        entries[i] = peer_entry(pid, rtt, self.sent, loss, 0.5)
            peers = peers_json(entries, self.peer_columns)
            if not straddles:
                n.peers_json, n.body_version = peers, self.fault_version
        else:
            peers = n.peers_json
        start = datetime.fromtimestamp(due - w, UTC).isoformat()
        head = json.dumps({"node_id": n.node_id, "seq": n.seq, "window_start": start, "window_s": w})
        return head[:-1].encode() + b', "peers": ' + peers + b"}"

    def request(self, n: SimNode, body: bytes) -> bytes:
        head = (
            f"POST /v1/reports HTTP/1.1\r\nHost: {self.host}\r\nAuthorization: Bearer {n.token}\r\n"
            f"X-Mesh-Sent-At: {time.time():.3f}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        return head.encode() + body

    async def join(self, c: AsyncClient) -> float:
        m = self.cfg.nodes_per_region
        sem = asyncio.Semaphore(8)

        async def put(i: int, rid: str) -> None:
            info = lookup(self.base[i])
            lat, lon = (info.lat, info.lon) if info else ((i * 37) % 150 - 75.0, (i * 71) % 360 - 180.0)
            async with sem:
                await c.put_region(rid, lat=lat, lon=lon)

        await asyncio.gather(*(put(i, r) for i, r in enumerate(self.regions)))
        tokens = await asyncio.gather(*(c.create_join_token(r, ttl_s=3600, uses=m) for r in self.regions))
        t0 = time.monotonic()
        interval = 1.0 / self.cfg.join_rate if self.cfg.join_rate > 0 else 0.0

        done = [0]

        # A real agent decodes its peer list (every other node) on its own machine; this process
        # plays 3,000 of them on the controller's, so it reads each answer (~1 MB at 3,000 nodes)
        # off a keep-alive connection as bytes and decodes only what it keeps (a C decoder that
        # still checks the whole body), lest its own HTTP client be what the join rate measures.
        decode = msgspec.json.Decoder(_Joined).decode
        conns: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
        for _ in range(8):  # 8 joins in flight
            conns.put_nowait(await asyncio.open_connection(self.host, self.port))

        async def post(body: bytes) -> tuple[int, bytes]:
            head = (
                f"POST /v1/nodes HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            )
            reader, writer = await conns.get()
            try:
                writer.write(head.encode() + body)
                status = int((await reader.readline()).split()[1])
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                return status, await reader.readexactly(length)
            finally:
                conns.put_nowait((reader, writer))

        async def one(n: SimNode) -> None:
            if interval:
                await asyncio.sleep(max(0.0, t0 + n.index * interval - time.monotonic()))
            body = {
                "join_token": str(tokens[n.region].token),
                "region": self.regions[n.region],
                "name": f"sim-{n.index}",
                "public_key": base64.b64encode(n.index.to_bytes(32, "big")).decode(),
                "endpoint": f"192.0.2.{n.index % 250 + 1}:51820",
            }
            status, data = await post(json.dumps(body).encode())
            if status != 201:
                raise SimError(f"join of sim-{n.index}: {status} {data[:300]!r}")
            joined = decode(data)
            n.node_id, n.token = joined.node_id, joined.node_token
            done[0] += 1
            if done[0] % max(1, len(self.nodes) // 5) == 0 and done[0] < len(self.nodes):
                self.say(f"joined {done[0]}/{len(self.nodes)} ({done[0] / (time.monotonic() - t0):.0f}/s)")

        try:
            await asyncio.gather(*(one(n) for n in self.nodes))
        finally:
            while not conns.empty():
                conns.get_nowait()[1].close()
        return time.monotonic() - t0

    async def metrics_text(self, ctl: Controller) -> str:
        import httpx

        async with httpx.AsyncClient(base_url=ctl.url, headers={"Authorization": f"Bearer {ctl.token}"}) as h:
            return (await h.get("/metrics", timeout=30)).text

    async def recompute_figures(self, ctls: list[Controller]) -> tuple[dict[float, float], float, float]:
        """The recompute histogram summed over the replicas (only the leader's moves)."""
        buckets: dict[float, float] = {}
        count = total = 0.0
        for ctl in ctls:
            b, n, t = recompute_histogram(await self.metrics_text(ctl))
            for k, v in b.items():
                buckets[k] = buckets.get(k, 0.0) + v
            count, total = count + n, total + t
        return buckets, count, total

    async def healthz_rate(self) -> float:
        req = f"GET /healthz HTTP/1.1\r\nHost: {self.host}\r\n\r\n".encode()
        left = [HEALTHZ_BURST]

        async def worker() -> None:
            conn = RawConn(self.host, self.port)
            while left[0] > 0:
                left[0] -= 1
                await conn.send(req)
            conn.close()

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(16)))
        return HEALTHZ_BURST / (time.perf_counter() - t0)

    async def sender(self, queue: asyncio.Queue[tuple[SimNode, float] | None], port: int) -> None:
        conn = RawConn(self.host, port)
        while (item := await queue.get()) is not None:
            n, due = item
            req = self.request(n, self.body(n, due))
            self.lags.append(max(0.0, time.time() - due))
            while True:  # as the agent: a window is retried until the controller answers
                t0 = time.perf_counter()
                try:
                    code = await conn.send(req)
                except (OSError, asyncio.IncompleteReadError, IndexError, ValueError):
                    self.send_errors += 1
                    await asyncio.sleep(0.5)
                    continue
                if code == 422 and b'"peers": {' in req:
                    # as the agent, to a controller older than peers as columns: the list from now on
                    if self.peer_columns:
                        self.peer_columns, self.fault_version = False, self.fault_version + 1
                    req = self.request(n, self.body(n, due))
                    continue
                self.latencies.append(time.perf_counter() - t0)
                self.codes[code] = self.codes.get(code, 0) + 1
                if code in (202, 409) or (code < 500 and code not in (408, 429)):
                    break
                await asyncio.sleep(0.5)
            if code == 202:
                n.acked += 1
            n.seq += 1
        conn.close()

    async def drained(self, queue: asyncio.Queue[Any]) -> None:
        while not queue.empty():
            await asyncio.sleep(0.1)

    async def node_clock(self, n: SimNode, t0: float, end: float, queues: list[asyncio.Queue[Any]]) -> None:
        """One window every window_s, phases spread over the window across the fleet."""
        w = self.cfg.window_s
        due = t0 + w * (1 + n.index / len(self.nodes))
        while due < end:
            await asyncio.sleep(max(0.0, due - time.time()))
            if n.region not in self.dark:
                self.offered += 1
                await queues[n.index % len(queues)].put((n, due))  # each node reports to one replica
            due += w

    async def fault_clock(self, t0: float) -> None:
        for f in self.faults:
            await asyncio.sleep(max(0.0, t0 + f.at_s - time.time()))
            idx = [self.regions.index(r) for r in f.regions]
            if f.kind == "dark":
                self.dark.setdefault(idx[0], time.time())
            else:
                self.lossy.setdefault((idx[0], idx[1]), time.time())
            self.fault_version += 1
            self.fault_times[f.describe()] = time.time()
            self.say(f"fault: {f.describe()}")

    async def watch_events(self, c: AsyncClient, since: int) -> None:
        while True:
            try:
                events = await c.events(since=since, limit=500, wait=2.0)
            except Exception:
                await asyncio.sleep(1)
                continue
            for e in events:
                since = max(since, e.id)
                if e.kind == "drain" and e.region and e.region not in self.drains:
                    self.drains[e.region] = e.ts.timestamp()

    async def query_routes(self, clients: list[AsyncClient]) -> None:
        if self.cfg.route_qps <= 0 or len(self.regions) < 2:
            return
        interval = 1.0 / self.cfg.route_qps
        nxt = time.monotonic()
        while True:
            nxt += interval
            await asyncio.sleep(max(0.0, nxt - time.monotonic()))
            a, b = self.rng.sample(self.regions, 2)
            c = clients[len(self.route_lat) % len(clients)]  # spread as a load balancer would
            t0 = time.perf_counter()
            try:
                await c.fetch_route(a, b)
                self.route_lat.append(time.perf_counter() - t0)
            except Exception:
                self.route_errors += 1

    async def run(self, ctls: list[Controller]) -> dict[str, Any]:
        cfg = self.cfg
        ctl = ctls[0]  # joins, events and GET /healthz; reports go to every replica
        self.host, port = ctl.url.removeprefix("http://").split(":")
        self.port = int(port)
        pids = [x.pid for x in ctls]
        async with contextlib.AsyncExitStack() as stack:
            clients = [await stack.enter_async_context(AsyncClient(x.url, x.token, timeout=30.0)) for x in ctls]
            c = clients[0]
            join_s = await self.join(c)
            self.assign_peers()
            self.say(f"joined {len(self.nodes)} nodes in {join_s:.1f} s ({len(self.nodes) / join_s:.0f} joins/s)")
            hz_cpu0 = proc_cpu_seconds(ctl.pid)
            healthz = await self.healthz_rate()
            healthz_cpu_ms = 1000 * (proc_cpu_seconds(ctl.pid) - hz_cpu0) / HEALTHZ_BURST
            self.say(f"GET /healthz: {healthz:.0f} req/s ({HEALTHZ_BURST} requests, 16 connections)")
            newest = await c.events(limit=1)
            bg = [asyncio.create_task(self.watch_events(c, newest[-1].id if newest else 0))]
            buckets0, ticks0, sum0 = await self.recompute_figures(ctls)
            db0 = db_bytes(ctl.database_url)
            queues: list[asyncio.Queue[tuple[SimNode, float] | None]] = [asyncio.Queue() for _ in ctls]
            per = max(4, cfg.connections // len(ctls))
            senders = [
                asyncio.create_task(self.sender(q, int(x.url.rsplit(":", 1)[1])))
                for q, x in zip(queues, ctls, strict=True)
                for _ in range(per)
            ]
            cpu0, wall0, own0 = sum(map(proc_cpu_seconds, pids)), time.time(), time.process_time()
            end = wall0 + cfg.duration_s
            clocks = [asyncio.create_task(self.node_clock(n, wall0, end, queues)) for n in self.nodes]
            bg += [asyncio.create_task(self.fault_clock(wall0)), asyncio.create_task(self.query_routes(clients))]
            await self.live(pids, wall0, end)
            await asyncio.gather(*clocks)
            # what the controller has not taken within two windows of the end stays in the agents'
            # spools (not lost, not acknowledged): counted as the backlog
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*(self.drained(q) for q in queues)), 2 * cfg.window_s)
            for q in queues:
                while not q.empty():
                    q.get_nowait()
                    self.backlog += 1
                for _ in range(per):
                    await q.put(None)
            await asyncio.gather(*senders)
            elapsed = time.time() - wall0
            cpu = sum(map(proc_cpu_seconds, pids)) - cpu0
            own = time.process_time() - own0
            rss = sum(proc_mib(p) for p in pids)
            rss_peak = sum(proc_mib(p, "VmHWM") for p in pids)
            await asyncio.sleep(0.5)
            buckets1, ticks1, sum1 = await self.recompute_figures(ctls)
            for t in bg:
                t.cancel()
        # the store's count, whichever replica took a window
        accepted = stored_by_node(ctl.database_url)
        db1 = db_bytes(ctl.database_url)
        acked = sum(n.acked for n in self.nodes)
        lost = sum(max(0, n.acked - accepted.get(n.node_id, 0)) for n in self.nodes)
        stored = stored_reports(ctl.database_url)
        ticks = ticks1 - ticks0
        outage = {}
        for f in self.faults:
            if f.kind == "dark":
                r = f.regions[0]
                began = self.fault_times.get(f.describe())
                outage[r] = round(self.drains[r] - began, 2) if began and r in self.drains else None
        peers = len(self.nodes[0].peers) if self.nodes else 0
        ncpu = os.cpu_count() or 1
        rate = acked / elapsed
        return {
            "regions": cfg.regions,
            "replicas": len(ctls),
            "nodes": len(self.nodes),
            "k": cfg.k,
            "window_s": cfg.window_s,
            "duration_s": round(elapsed, 1),
            "database": "sqlite" if ctl.database_url.startswith("sqlite") else "postgresql",
            "peers_per_report": peers,
            "report_kib": round(len(self.body(self.nodes[0], time.time())) / 1024, 1),
            "joins_per_s": round(len(self.nodes) / join_s, 1),
            "join_s": round(join_s, 2),
            "healthz_per_s": round(healthz),
            "offered_reports_per_s": round(self.offered / elapsed, 1),
            "offered": self.offered,
            "reports_per_s": round(rate, 1),
            "ratio_reports_healthz": round(rate / healthz, 3),
            # offered load below capacity makes the ratio above a floor; the controller's CPU per
            # request (everything it did during the run, recompute included, per acknowledged report)
            # against its CPU per GET /healthz is a ratio that does not depend on the offered load
            "healthz_cpu_ms": round(healthz_cpu_ms, 3),
            "report_cpu_ms": round(1000 * cpu / acked, 3) if acked else None,
            "ratio_cpu_healthz_report": round(healthz_cpu_ms * acked / (1000 * cpu), 3) if acked and cpu else None,
            "acknowledged": acked,
            "stored": stored,
            "lost": lost,
            "backlog": self.backlog,
            "codes": {str(k): v for k, v in sorted(self.codes.items())},
            "send_errors": self.send_errors,
            "report_p50_ms": round(pct(self.latencies, 50), 1),
            "report_p99_ms": round(pct(self.latencies, 99), 1),
            "sim_lag_p99_ms": round(pct(self.lags, 99), 1),
            "recompute_ticks": int(ticks),
            "recompute_ms_p50": round(1000 * histogram_quantile(0.5, buckets0, buckets1), 1),
            "recompute_ms_mean": round(1000 * (sum1 - sum0) / ticks, 1) if ticks else None,
            "controller_cpu_percent": round(100 * cpu / elapsed / ncpu, 1),
            "controller_cpu_cores": round(cpu / elapsed, 2),
            "cpus": ncpu,
            "controller_rss_mib": round(rss),
            "controller_rss_peak_mib": round(rss_peak),
            "sim_cpu_percent": round(100 * own / elapsed, 1),
            "outage_to_drain_s": outage,
            "drained": sorted(self.drains),
            "route_queries": len(self.route_lat),
            "route_errors": self.route_errors,
            "route_p99_ms": round(pct(self.route_lat, 99), 1),
            "db_bytes_start": db0,
            "db_bytes_end": db1,
            "db_mib_per_hour": round((db1 - db0) / elapsed * 3600 / 2**20, 1),
            "loadavg_1m": round(os.getloadavg()[0], 2),
        }

    async def live(self, pids: list[int], t0: float, end: float) -> None:
        """Every window until the end: a Tick for the live view."""
        last_n, last_cpu, last_t = 0, sum(map(proc_cpu_seconds, pids)), time.time()
        while (now := time.time()) < end:
            await asyncio.sleep(min(self.cfg.window_s, end - now))
            now, cpu = time.time(), sum(map(proc_cpu_seconds, pids))
            lat = self.latencies[last_n:]
            acked = sum(n.acked for n in self.nodes)
            if self.on_tick is not None:
                self.on_tick(
                    Tick(
                        t_s=now - t0,
                        reports_per_s=len(lat) / (now - last_t),
                        report_p99_ms=pct(lat, 99),
                        controller_cpu_percent=100 * (cpu - last_cpu) / (now - last_t) / (os.cpu_count() or 1),
                        acknowledged=acked,
                        drained=sorted(self.drains),
                        faults=list(self.fault_times),
                    )
                )
            last_n, last_cpu, last_t = len(self.latencies), cpu, now


def simulate(
    cfg: SimConfig, on_tick: Callable[[Tick], None] | None = None, say: Callable[[str], None] = print
) -> dict[str, Any]:
    """Start the controller(s), run the fleet against them for `cfg.duration_s`, stop them; the
    measurements. On PostgreSQL every run gets a database of its own on that server."""
    sim = Simulation(cfg, on_tick, say)  # parses the faults before anything starts
    if cfg.replicas < 1:
        raise SimError("replicas: at least 1")
    if cfg.replicas > 1 and not _is_postgresql(cfg.database_url):
        raise SimError("several replicas share one PostgreSQL store: give --database-url postgresql://...")
    workdir = Path(tempfile.mkdtemp(prefix="meshsim-"))
    with contextlib.ExitStack() as stack:
        url = cfg.database_url
        if url is not None and _is_postgresql(url):
            url = stack.enter_context(fresh_database(url))
        ctls = start_replicas(cfg, url, workdir)
        for ctl in ctls:
            say(f"controller pid {ctl.pid} at {ctl.url}, database {ctl.database_url}, log {ctl.log}")
        try:
            result = asyncio.run(sim.run(ctls))
        finally:
            for ctl in ctls:
                ctl.stop()
    shutil.rmtree(workdir, ignore_errors=True)  # kept (with the controllers' logs) when the run failed
    return result


def summary(r: dict[str, Any]) -> list[str]:
    """The run in words, one figure per line, with the issue's targets beside them."""
    saturated = r["reports_per_s"] >= 0.95 * r["offered_reports_per_s"]
    drains = ", ".join(f"{k} {v} s" if v is not None else f"{k} not drained" for k, v in r["outage_to_drain_s"].items())
    return [
        f"fleet: {r['regions']} regions x {r['nodes'] // max(1, r['regions'])} nodes = {r['nodes']} nodes, k={r['k']},"
        f" {r['peers_per_report']} peers/report ({r['report_kib']} KiB), {r['window_s']:g} s windows, {r['database']}"
        + (f", {r['replicas']} replicas" if r.get("replicas", 1) > 1 else ""),
        f"joins: {r['joins_per_s']}/s ({r['nodes']} in {r['join_s']} s; target >= 200/s)",
        f"GET /healthz on the same server: {r['healthz_per_s']} req/s",
        f"reports accepted: {r['reports_per_s']}/s of {r['offered_reports_per_s']}/s offered;"
        f" ratio to /healthz {r['ratio_reports_healthz']} (target >= 0.5"
        + ("; the controller took all it was offered, so this is a floor, not its capacity)" if saturated else ")"),
        f"controller CPU per request: GET /healthz {r['healthz_cpu_ms']} ms, report {r['report_cpu_ms']} ms"
        f" (everything during the run per acknowledged report): ratio {r['ratio_cpu_healthz_report']}",
        f"report latency: p50 {r['report_p50_ms']} ms, p99 {r['report_p99_ms']} ms (target < 100);"
        f" simulator lag p99 {r['sim_lag_p99_ms']} ms, its CPU {r['sim_cpu_percent']}% of one core",
        f"recompute per tick: p50 {r['recompute_ms_p50']} ms, mean {r['recompute_ms_mean']} ms over"
        f" {r['recompute_ticks']} ticks (target < 100)",
        ("controllers (all replicas)" if r.get("replicas", 1) > 1 else "controller")
        + f": CPU {r['controller_cpu_percent']}% of {r['cpus']} cores ({r['controller_cpu_cores']} cores;"
        f" target < 70%), RSS {r['controller_rss_mib']} MiB (peak {r['controller_rss_peak_mib']})",
        f"route queries: {r['route_queries']}, p99 {r['route_p99_ms']} ms (target < 20), {r['route_errors']} failed",
        f"outage-to-drain: {drains or 'no dark fault'}",
        f"database: {r['db_bytes_start'] / 2**20:.1f} -> {r['db_bytes_end'] / 2**20:.1f} MiB,"
        f" {r['db_mib_per_hour']} MiB/hour at this rate",
        f"acknowledged {r['acknowledged']}, stored {r['stored']}, lost {r['lost']} (must be 0); not yet sent at the"
        f" end (the agents' spools): {r['backlog']}; codes {r['codes']},"
        f" {r['send_errors']} connection errors",
        f"load average (1 min) at the end: {r['loadavg_1m']}",
    ]
