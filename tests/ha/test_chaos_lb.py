"""Chaos through a real load balancer: HAProxy (round robin, health check on /healthz) in front of
three replicas started alike (same flags, no --replica-id) on one PostgreSQL database (a private
cluster: the test restarts it), with synthetic agents joined and reporting through it.

Each agent does the real join and report calls with a real seq counter, keeps every window until
a replica acknowledges it (202, or 409: already stored), retries anything else but a final refusal
(which it counts as dropped), and logs what was acknowledged. Routes flip every two seconds, so a
working leader publishes often. Then: SIGKILL the leader; SIGSTOP the leader for twice the lease
and resume it (its writes must be refused); restart PostgreSQL; restart all three replicas at once.

Measured and printed: acknowledged reports lost (counted in the database against the agents'
logs), windows dropped by agents, the longest time with no replica publishing, and that no two
replicas (process instances) published in the same epoch.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import os
import secrets
import shutil
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from tests.conftest import ADMIN, free_port, wait_until
from tests.ha.conftest import AlikeReplica, PrivatePostgres

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

A, B, C = "aws:us-east-1", "gcp:us-east4", "azure:westeurope"
LEASE_S = 3.0
WINDOW_S = 0.5
NODES_PER_REGION = 2


def say(line: str) -> None:
    print(f"\n[chaos] {line}", flush=True)
    with open(os.environ.get("MESH_TIMINGS_FILE", "/tmp/meshctl-timings.txt"), "a") as f:
        f.write(f"[chaos] {line}\n")


class HAProxy:
    """HAProxy from Debian in the foreground: round robin over the replicas, /healthz checked."""

    def __init__(self, root: Path, backends: list[int]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        servers = "\n".join(f"  server r{i} 127.0.0.1:{p} check" for i, p in enumerate(backends, 1))
        self.cfg = root / "haproxy.cfg"
        self.cfg.write_text(
            "global\n  maxconn 2000\n"
            "defaults\n  mode http\n  timeout connect 1s\n  timeout client 10s\n  timeout server 3s\n"
            "  retries 2\n  option redispatch\n"
            f"frontend mesh\n  bind 127.0.0.1:{self.port}\n  default_backend replicas\n"
            "backend replicas\n  balance roundrobin\n  option httpchk GET /healthz\n"
            "  http-check expect status 200\n  default-server inter 300ms fall 2 rise 1\n"
            f"{servers}\n"
        )
        self.log = root / "haproxy.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> HAProxy:
        exe = shutil.which("haproxy") or shutil.which("/usr/sbin/haproxy")
        if exe is None:
            pytest.fail("HAProxy is not installed: bash scripts/setup-system.sh --test (apt-get install haproxy)")
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([exe, "-db", "-f", str(self.cfg)], stdout=log, stderr=subprocess.STDOUT)
        wait_until(lambda: _answers(f"{self.url}/healthz"), 15, "HAProxy to answer", detail=self.log.read_text)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(5)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def rtt(a: str, b: str) -> float:
    """A<->C flips between slow (relay through B) and fast (direct) every two seconds."""
    if {a, b} == {A, C}:
        return 100.0 if int(time.time() / 2) % 2 == 0 else 30.0
    return 20.0


class Agent:
    """One synthetic node: a real seq counter, windows kept until acknowledged, a log of acks."""

    def __init__(self, lb: str, node: dict[str, Any], region: str, peers: list[tuple[str, str]]) -> None:
        self.lb, self.node, self.region, self.peers = lb, node, region, peers
        self.seq = 0
        self.pending: deque[dict[str, Any]] = deque()
        self.acked: set[int] = set()  # 202
        self.already: set[int] = set()  # 409: a replica says it is stored
        self.dropped: list[tuple[int, int, str]] = []
        self.retries = 0

    def window(self) -> dict[str, Any]:
        self.seq += 1
        start = time.time() - WINDOW_S
        peers = [
            {
                "peer_node_id": pid,
                "sent": 10,
                "received": 10,
                "rtt_p50_ms": rtt(self.region, region),
                "rtt_p90_ms": rtt(self.region, region) * 1.05,
                "jitter_ms": 0.2,
            }
            for pid, region in self.peers
        ]
        return {
            "node_id": self.node["node_id"],
            "seq": self.seq,
            "window_start": datetime.fromtimestamp(start, UTC).isoformat(),
            "window_s": WINDOW_S,
            "peers": peers,
        }

    async def run(self, stop: threading.Event) -> None:
        headers = {"Authorization": f"Bearer {self.node['node_token']}"}
        loop = asyncio.get_running_loop()
        next_window = loop.time()
        async with httpx.AsyncClient(base_url=self.lb, headers=headers, timeout=4) as c:
            while not (stop.is_set() and not self.pending):
                if not stop.is_set() and loop.time() >= next_window:
                    self.pending.append(self.window())
                    next_window += WINDOW_S
                if not self.pending:
                    await asyncio.sleep(0.05)
                    continue
                body = self.pending[0]
                try:
                    r = await c.post("/v1/reports", json=body)
                except httpx.HTTPError:
                    self.retries += 1
                    await asyncio.sleep(0.2)
                    continue
                if r.status_code == 202:
                    self.acked.add(body["seq"])
                elif r.status_code == 409:
                    self.already.add(body["seq"])
                elif r.status_code in (400, 410, 413, 422):
                    self.dropped.append((body["seq"], r.status_code, r.text[:200]))
                else:  # 401/403/429/5xx: keep the window, back off, retry
                    self.retries += 1
                    await asyncio.sleep(0.2)
                    continue
                self.pending.popleft()


class Publications(threading.Thread):
    """Reads every published route table as it appears (pruning cannot hide one)."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.rows: dict[int, tuple[int, str, str, float]] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        last = 0
        while not self.stop.is_set():
            with contextlib.suppress(psycopg.Error), psycopg.connect(self.url, connect_timeout=2) as conn:
                while not self.stop.is_set():
                    q = "select generation, epoch, holder, instance, computed_at from route_tables "
                    for g, e, h, i, at in conn.execute(q + "where generation > %s", (last,)):
                        self.rows[int(g)] = (int(e), str(h), str(i), float(at))
                        last = max(last, int(g))
                    conn.commit()
                    time.sleep(0.1)
            time.sleep(0.2)


@pytest.fixture(params=["alike", "named"], ids=["without-replica-ids", "with-replica-ids"])
def lab(pg_url: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[list[AlikeReplica], HAProxy]]:
    named = request.param == "named"
    replicas = [AlikeReplica(pg_url, tmp_path, f"chaos{i}", explicit_id=named) for i in (1, 2, 3)]
    for r in replicas:
        r.extra_env["MESH_LEASE_S"] = str(LEASE_S)
    lb = HAProxy(tmp_path, [r.port for r in replicas])
    try:
        for r in replicas:
            r.spawn()
        for r in replicas:
            r.wait_ready(60)
        lb.start()
        yield replicas, lb
    finally:
        lb.stop()
        for r in replicas:
            if r.proc is not None and r.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(r.proc.pid, signal.SIGCONT)
            r.kill()


def leader(replicas: list[AlikeReplica]) -> AlikeReplica | None:
    found = []
    for r in replicas:
        with contextlib.suppress(httpx.HTTPError):
            if r.proc is not None and httpx.get(f"{r.url}/healthz", timeout=1).json()["leader"]:
                found.append(r)
    return found[0] if len(found) == 1 else None


def test_chaos_through_haproxy(
    lab: tuple[list[AlikeReplica], HAProxy], pg_url: str, private_pg: PrivatePostgres
) -> None:
    replicas, lb = lab
    t_start = time.monotonic()
    admin = httpx.Client(base_url=lb.url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=10)
    for region in (A, B, C):
        assert admin.put(f"/v1/regions/{region}", json={"lat": 0, "lon": 0}).status_code in (200, 201)
    nodes: list[tuple[dict[str, Any], str]] = []
    for region in (A, B, C):
        for n in range(NODES_PER_REGION):
            jt = admin.post("/v1/join-tokens", json={"region": region, "ttl_s": 600, "uses": 1})
            assert jt.status_code == 201, jt.text
            body = {
                "join_token": jt.json()["token"],
                "region": region,
                "name": f"chaos-{region.split(':')[1]}-{n}",
                "public_key": base64.b64encode(secrets.token_bytes(32)).decode(),
                "endpoint": f"192.0.2.{len(nodes) + 1}:51820",
            }
            joined = httpx.post(f"{lb.url}/v1/nodes", json=body, timeout=10)
            assert joined.status_code == 201, joined.text
            nodes.append((joined.json(), region))
    agents = [
        Agent(lb.url, node, region, [(o["node_id"], r) for o, r in nodes if o["node_id"] != node["node_id"]])
        for node, region in nodes
    ]
    stop = threading.Event()

    async def run_agents() -> None:
        await asyncio.gather(*(a.run(stop) for a in agents))

    agents_thread = threading.Thread(target=asyncio.run, args=(run_agents(),), daemon=True)
    agents_thread.start()
    pubs = Publications(pg_url)
    pubs.start()

    phases = [("steady", time.time())]

    def first() -> AlikeReplica:
        return wait_until(lambda: leader(replicas), 20, "one leader")

    time.sleep(4)
    # 1. SIGKILL the leader; start it again (alike) once another leads
    victim = first()
    phases.append(("SIGKILL", time.time()))
    last_epoch = max((e for e, _, _, _ in list(pubs.rows.values())), default=0)
    victim.kill()
    wait_until(lambda: leader([r for r in replicas if r is not victim]), 15, "takeover after SIGKILL")
    # the new leader publishes (routes flip every 2 s) before the next step pauses it
    wait_until(lambda: any(e > last_epoch for e, _, _, _ in list(pubs.rows.values())), 15, "the new leader's table")
    victim.start(60)
    say(f"SIGKILLed leader {victim.log_path.stem}; another took over; it came back")

    # 2. SIGSTOP the leader for twice the lease, then resume it: its writes must be refused
    paused = first()
    phases.append(("SIGSTOP", time.time()))
    assert paused.proc is not None
    os.kill(paused.proc.pid, signal.SIGSTOP)
    time.sleep(2 * LEASE_S)
    os.kill(paused.proc.pid, signal.SIGCONT)
    wait_until(lambda: "stepping down" in paused.log(), 10, "the resumed leader to step down")
    say(f"SIGSTOPped leader {paused.log_path.stem} for {2 * LEASE_S:g} s: it stepped down on resuming")

    # 3. restart PostgreSQL
    phases.append(("PostgreSQL restart", time.time()))
    private_pg.stop()
    time.sleep(1.0)
    private_pg.start()
    first()
    say("PostgreSQL restarted: a leader again")

    # 4. restart all three replicas at once
    phases.append(("restart of all replicas", time.time()))
    for r in replicas:
        assert r.proc is not None
        r.proc.send_signal(signal.SIGTERM)
    for r in replicas:
        assert r.proc is not None
        r.proc.wait(15)
        r.proc = None
    for r in replicas:
        r.spawn()
    for r in replicas:
        r.wait_ready(60)
    first()
    say("all three replicas restarted at once: a leader again")
    time.sleep(3)

    stop.set()
    agents_thread.join(30)
    assert not agents_thread.is_alive(), "agents could not deliver their last windows"
    pubs.stop.set()
    pubs.join(5)
    elapsed = time.monotonic() - t_start

    with psycopg.connect(pg_url) as conn:
        stored = {(str(n), int(q)) for n, q in conn.execute("select node_id, seq from reports")}
        tables = [
            (int(g), int(e), str(h), str(i), float(at))
            for g, e, h, i, at in conn.execute(
                "select generation, epoch, holder, instance, computed_at from route_tables order by generation"
            )
        ]
    for g, e, h, i, at in tables:
        pubs.rows.setdefault(g, (e, h, i, at))
    acked = {(a.node["node_id"], q) for a in agents for q in a.acked}
    already = {(a.node["node_id"], q) for a in agents for q in a.already}
    lost = acked - stored
    dropped = [d for a in agents for d in a.dropped]
    rows = sorted(pubs.rows.items())
    times = [at for _, (_, _, _, at) in rows]
    gap, gap_at = max(((b - a, a) for a, b in itertools.pairwise(times)), default=(0.0, 0.0))
    during = [name for name, at in phases if at <= gap_at + 0.5][-1]
    per_epoch: dict[int, set[tuple[str, str]]] = {}
    for _, (epoch, holder, instance, _) in rows:
        per_epoch.setdefault(epoch, set()).add((holder, instance))
    shared = {e: who for e, who in per_epoch.items() if len(who) > 1}
    epochs_in_order = [e for _, (e, _, _, _) in rows]

    say(
        f"{len(agents)} agents, {sum(a.seq for a in agents)} windows, {len(acked)} acknowledged (202) "
        f"+ {len(already)} answered 409, {sum(a.retries for a in agents)} retries, in {elapsed:.0f} s"
    )
    say(f"acknowledged reports lost: {len(lost)}; windows dropped by agents: {len(dropped)}")
    say(
        f"longest time with no replica publishing: {gap:.1f} s, during the {during} "
        f"(lease {LEASE_S:g} s; routes flip every 2 s)"
    )
    say(
        f"{len(rows)} route tables published in {len(per_epoch)} epochs by "
        f"{len({w for ws in per_epoch.values() for w in ws})} replica processes; epochs shared: {len(shared)}"
    )
    assert not lost, sorted(lost)[:10]
    assert not already - stored
    assert not dropped, dropped[:5]
    assert not shared, shared
    assert epochs_in_order == sorted(epochs_in_order), "an older leader published after a newer one"
    assert len(per_epoch) >= 4  # start, after the kill, after the pause, after the restarts
