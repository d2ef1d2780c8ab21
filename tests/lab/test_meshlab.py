"""meshlab end to end: the default topology (9 regions, 3 clouds, 12 nodes) with real WireGuard
packets through the userspace WAN, driven by the `meshctl lab` commands a user types.

The tests run in order on one lab: convergence, relay, outage, fail static, controller SIGKILL,
flapping, and last the teardown, which must leave nothing behind. Timings are printed (run with
`-s`) and appended to $MESH_TIMINGS_FILE (default /tmp/meshctl-timings.txt).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from meshctl.lab import lab
from meshctl.lab.demo import event_time
from meshctl.lab.netns import existing_namespaces, leftovers, sh
from meshctl.lab.topology import load_topology
from tests.conftest import wait_until

pytestmark = pytest.mark.lab
TOPO = load_topology()
HOLD_S = float(lab.CONTROLLER_ENV["MESH_HOLD_S"])


def timing(line: str) -> None:
    print(f"\n[lab] {line}", flush=True)
    with open(os.environ.get("MESH_TIMINGS_FILE", "/tmp/meshctl-timings.txt"), "a") as f:
        f.write(f"[lab] {line}\n")


class LabUnderTest:
    def __init__(self, tmp: Path, prefix: str, net: str) -> None:
        self.dir = tmp / "lab"
        self.prefix = prefix
        self.env = dict(
            os.environ,
            MESH_LAB_DIR=str(self.dir),
            MESH_LAB_PREFIX=prefix,
            MESH_LAB_NET=net,
            MESHCTL_CONFIG=str(tmp / "meshctl.yaml"),
            COLUMNS="120",
        )

    def meshctl(self, *args: str, check: bool = True, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [sys.executable, "-m", "meshctl", *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"meshctl {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def json(self, *args: str) -> Any:
        return json.loads(self.meshctl("-o", "json", *args).stdout)

    @property
    def state(self) -> lab.LabState:
        st = lab.LabState.load(self.dir)
        assert st is not None, "no lab.json"
        return st

    def api(self) -> httpx.Client:
        st = self.state
        return httpx.Client(base_url=st.url, headers={"Authorization": f"Bearer {st.token}"}, timeout=10)

    def get(self, path: str, **params: Any) -> Any:
        with self.api() as c:
            r = c.get(path, params=params)
            r.raise_for_status()
            return r.json()

    def events_after(self, since: int) -> list[dict[str, Any]]:
        return list(self.get("/v1/events", since=str(since), limit=1000))

    def last_event_id(self) -> int:
        rows = self.get("/v1/events", limit=1)
        return int(rows[-1]["id"]) if rows else 0

    def route(self, src: str, dst: str) -> list[str]:
        return list(self.get(f"/v1/routes/{src}/{dst}")["path"])

    def overlay_ips(self) -> dict[str, str]:
        """Lab node name -> overlay address."""
        with self.state.client() as c:
            by_wan = lab.nodes_by_wan_ip(c)
        return {n.name: by_wan[n.wan_ip]["overlay_ip"] for n in self.state.nodes}


def require_lab_tools() -> None:
    if os.geteuid() != 0:
        pytest.fail("lab tests need root (network namespaces)")
    for tool in ("wireguard-go", "wg", "nft", "ping"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is missing: apt-get install wireguard-go wireguard-tools nftables iputils-ping")


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabUnderTest]:
    require_lab_tools()
    t = LabUnderTest(tmp_path_factory.mktemp("meshlab"), prefix=f"ml{os.getpid() % 10000}", net="10.216")
    try:
        t0 = time.monotonic()
        up = t.meshctl("lab", "up")
        steady = "steady" if "steady: all" in up.stderr else "still settling"  # `up` waits for true links
        timing(
            f"lab up (12 namespaces, wireguard-go, agents, controller, all joined, links {steady}): "
            f"{time.monotonic() - t0:.1f} s"
        )
        yield t
    finally:
        t.meshctl("lab", "down", check=False)
        for log in sorted((t.dir / "logs").glob("*.log"))[:3]:
            print(f"--- {log.name} (tail) ---\n{lab.log_tail(log, 8)}")


def test_1_convergence(mesh: LabUnderTest) -> None:
    """Every region pair measured within 10% (or 2 ms) of the topology's real-world RTT."""
    t0 = time.monotonic()
    state = mesh.state
    try:
        wait_until(lambda: lab.converged(state)["ok"], 120, "all 72 region pairs within 10% or 2 ms", poll=1.0)
    except AssertionError:
        print(json.dumps(lab.converged(state), indent=1))
        raise
    took = time.monotonic() - t0
    links = {(x["src"], x["dst"]): x for x in mesh.get("/v1/links")["links"]}
    errors = sorted(
        (abs(x["rtt_p50_ms"] - TOPO.rtt(a, b)), a, b, x["rtt_p50_ms"]) for (a, b), x in links.items() if x["fresh"]
    )
    assert len(errors) == len(TOPO.regions) * (len(TOPO.regions) - 1)
    worst = errors[-1]
    median = errors[len(errors) // 2][0]
    timing(
        f"convergence: {len(errors)} region pairs within 10% or 2 ms of the topology {took:.1f} s after `lab up` "
        f"returned; |error| median {median:.2f} ms, worst {worst[0]:.2f} ms ({worst[1]} -> {worst[2]}: "
        f"{worst[3]:.1f} vs {TOPO.rtt(worst[1], worst[2]):.1f} ms)"
    )
    status = mesh.meshctl("lab", "status").stdout
    assert status.count("running") >= 14, status  # controller, router, 12 agents
    matrix = mesh.meshctl("matrix").stdout  # the lab is the current context: plain meshctl works
    assert "a.ue1" in matrix and "g.ew2" in matrix and "z.jae" in matrix


def _reroute(mesh: LabUnderTest, a: str, b: str, kind: str, value: str) -> None:
    # the starting point: direct (a window with a lost probe may have sent it through a relay a
    # moment ago, as it should; the fault is applied to a direct pair)
    wait_until(lambda: mesh.route(a, b) == [a, b], 30, f"{a}->{b} direct before the fault")
    applied = mesh.json("lab", "fault-link", a, b, kind, value)["applied_at"]
    path = wait_until(lambda: (p := mesh.route(a, b)) != [a, b] and p, 15, f"{a}->{b} through a relay")
    rerouted = time.time() - applied
    assert len(path) in (3, 4) and path[0] == a and path[-1] == b
    explained = mesh.get(f"/v1/routes/{a}/{b}", explain="true")
    direct = [c for c in explained["candidates"] if c["path"] == [a, b]]
    # the direct link costs more, or has no cost at all: a window whose probes to the peer were all
    # lost (an early window, closed on misses in a row, can hold only those) makes it dead for now
    assert not direct or direct[0]["cost"] is None or direct[0]["cost"] > explained["cost"], explained
    healed = mesh.json("lab", "heal")["applied_at"]
    wait_until(lambda: mesh.route(a, b) == [a, b], 20, f"{a}->{b} direct again")
    back = time.time() - healed
    timing(
        f"relay: {a} <-> {b} {kind} {value}: routed via {' -> '.join(path[1:-1])} {rerouted:.1f} s after the fault "
        f"(observed by polling); healed: direct again after {back:.1f} s"
    )


def test_2_relay_around_a_slow_or_lossy_link(mesh: LabUnderTest) -> None:
    _reroute(mesh, "aws:us-east-1", "aws:eu-west-2", "delay", "100")
    _reroute(mesh, "gcp:asia-northeast1", "azure:japaneast", "loss", "30")


def test_3_outage_drains_within_5s_and_comes_back_after_the_hold(mesh: LabUnderTest) -> None:
    routes = mesh.get("/v1/routes")["routes"]
    relays: dict[str, int] = {}
    for r in routes:
        for x in r["path"][1:-1]:
            relays[x] = relays.get(x, 0) + 1
    victim = max(relays, key=lambda k: relays[k]) if relays else next(iter(TOPO.regions))
    metro = mesh.get(f"/v1/regions/{victim}")["metro"]
    since = mesh.last_event_id()
    applied = mesh.json("lab", "fault", victim, "blackhole")["applied_at"]

    def drained() -> dict[str, Any] | None:
        return next((e for e in mesh.events_after(since) if e["kind"] == "drain" and e["region"] == victim), None)

    drain = wait_until(drained, 15, f"{victim} drained")
    fault_to_drain = event_time(drain) - applied
    assert fault_to_drain <= 5.0, f"drained {fault_to_drain:.1f} s after the fault"
    assert "observing regions see" in drain["reason"] or "stopped reporting" in drain["reason"], drain
    for _ in range(5):  # while drained: never a relay, never a placement
        table = mesh.get("/v1/routes")["routes"]
        assert not [r for r in table if victim in r["path"][1:-1]], f"{victim} still relays"
        near = mesh.get("/v1/placement", near=victim)
        assert near["region"] != victim
        region = mesh.get(f"/v1/regions/{near['region']}")
        assert region["metro"] == metro and region["cloud"] != victim.split(":")[0], (near, region)
        info = mesh.get(f"/v1/regions/{victim}")
        assert info["state"] == "drained"
        by_location = mesh.get("/v1/placement", lat=info["lat"], lon=info["lon"])
        assert by_location["region"] != victim
        time.sleep(1)
    healed = mesh.json("lab", "heal")["applied_at"]

    def undrained() -> dict[str, Any] | None:
        return next((e for e in mesh.events_after(int(drain["id"])) if e["kind"] == "undrain"), None)

    undrain = wait_until(undrained, HOLD_S + 30, f"{victim} back")
    assert undrain["region"] == victim
    held = event_time(undrain) - event_time(drain)
    after_heal = event_time(undrain) - healed
    assert held >= HOLD_S
    assert after_heal <= HOLD_S + 10, f"back {after_heal:.1f} s after the heal"
    timing(
        f"outage: {victim} blackholed -> drained {fault_to_drain:.2f} s after the fault ({drain['reason']}); "
        f"new sessions near it went to {near['region']} (same metro, {metro}); healed -> back after "
        f"{after_heal:.1f} s (drained {held:.1f} s, hold {HOLD_S:.0f} s)"
    )


def _routes_quiet(mesh: LabUnderTest, quiet_s: float, timeout: float) -> None:
    """Wait until the route table has not moved for `quiet_s`: the agents then hold it. (A cut that
    lands while a change is still on its way leaves a relay without it: see the README's fail static.)"""
    moved = {"generation": -1, "at": time.time()}

    def quiet() -> bool:
        generation = mesh.get("/v1/status")["generation"]
        if generation != moved["generation"]:
            moved.update(generation=generation, at=time.time())
        return time.time() - moved["at"] >= quiet_s

    wait_until(quiet, timeout, f"a route table that did not move for {quiet_s:g} s", poll=0.5)


def test_4_fail_static_when_the_controller_is_cut_off(mesh: LabUnderTest) -> None:
    _routes_quiet(mesh, 4.0, 90)  # the previous test's heal may still be moving routes
    since = mesh.last_event_id()
    overlay = mesh.overlay_ips()
    a, b = mesh.state.nodes[0], mesh.state.nodes[-1]
    cut = mesh.json("lab", "fault-controller")["applied_at"]
    try:
        _fail_static(mesh, since, overlay, a, b, cut)
    finally:
        mesh.json("lab", "heal")  # also when it failed: the next tests need the controller back


def _fail_static(
    mesh: LabUnderTest, since: int, overlay: dict[str, str], a: lab.LabNode, b: lab.LabNode, cut: float
) -> None:
    freeze = wait_until(
        lambda: next((e for e in mesh.events_after(since) if e["kind"] == "freeze"), None), 20, "a freeze event"
    )
    time.sleep(1)
    frozen = mesh.get("/v1/routes")
    time.sleep(max(0.0, cut + 12 - time.time()))  # past the report timeout (5 s) plus the stale-link age (5 s)
    after = mesh.get("/v1/routes")
    assert all(r["reachable"] for r in after["routes"]), "fail static: routes stay usable"
    paths = {(r["src"], r["dst"]): r["path"] for r in after["routes"]}
    assert paths == {(r["src"], r["dst"]): r["path"] for r in frozen["routes"]}, "nothing moves while frozen"
    status = mesh.get("/v1/status")
    assert any("frozen" in x for x in status["alerts"]), status["alerts"]
    assert sh("ping", "-c", "3", "-i", "0.2", "-W", "2", overlay[b.name], ns=a.ns, check=False).returncode == 0
    healed = mesh.json("lab", "heal")["applied_at"]
    unfreeze = wait_until(
        lambda: next((e for e in mesh.events_after(int(freeze["id"])) if e["kind"] == "unfreeze"), None),
        30,
        "unfreeze",
    )
    time.sleep(3)
    drains = [e for e in mesh.events_after(since) if e["kind"] in ("drain", "degraded")]
    assert drains == [], drains
    timing(
        f"fail static: controller cut off from all 12 agents -> froze after {event_time(freeze) - cut:.1f} s, "
        f"drained nothing for {healed - cut:.0f} s, kept all {len(after['routes'])} routes; "
        f"reconnected -> unfrozen after {event_time(unfreeze) - healed:.1f} s"
    )


def _stored_seqs(db: Path) -> dict[str, list[int]]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("select node_id, seq from reports order by node_id, seq").fetchall()
    out: dict[str, list[int]] = {}
    for node_id, seq in rows:
        out.setdefault(node_id, []).append(seq)
    return out


def _node_id(mesh: LabUnderTest, node: lab.LabNode) -> str:
    return next(n["id"] for n in mesh.get("/v1/nodes") if n["endpoint"].startswith(f"{node.wan_ip}:"))


def test_5_controller_sigkill(mesh: LabUnderTest) -> None:
    state = mesh.state
    overlay = mesh.overlay_ips()
    a = state.nodes[0]
    b = next(n for n in state.nodes if n.region != a.region and TOPO.rtt(a.region, n.region) < 5)  # same metro
    drain_region = state.nodes[-1].region
    with mesh.api() as c:
        r = c.post(f"/v1/regions/{drain_region}/drain", json={"reason": "maintenance before the kill"})
        assert r.status_code == 200, r.text
    ping = subprocess.Popen(  # 10 a second, across the kill and the restart, until stopped
        ["ip", "netns", "exec", a.ns, "ping", "-i", "0.1", "-W", "2", overlay[b.name]],
        stdout=subprocess.PIPE,
        text=True,
    )
    time.sleep(1)
    pid = int((Path(state.dir) / "pids" / "controller.pid").read_text())
    acked_before = {n["id"]: n["reports_accepted"] for n in mesh.get("/v1/nodes")}
    os.kill(pid, signal.SIGKILL)
    killed = time.time()
    time.sleep(3)
    mesh.meshctl("lab", "up")  # restarts what died: the controller, on the same SQLite file
    restarted = time.time()
    made = {n.name: int(Path(n.state_dir, "seq").read_text()) for n in state.nodes}  # windows so far
    ids = {n.name: _node_id(mesh, n) for n in state.nodes}

    def caught_up() -> bool:  # delivery is in order: the last seq made before the restart is in
        last = {n["id"]: n["last_seq"] for n in mesh.get("/v1/nodes")}
        return all(last[ids[name]] is not None and last[ids[name]] >= seq - 1 for name, seq in made.items())

    wait_until(caught_up, 30, "every window made while the controller was down delivered")
    replayed = time.time()
    time.sleep(1)
    ping.send_signal(signal.SIGINT)
    out, _ = ping.communicate(timeout=10)
    sent = int(re.search(r"(\d+) packets transmitted", out).group(1))  # type: ignore[union-attr]
    answered = {int(x) for x in re.findall(r"icmp_seq=(\d+)", out)}
    got = len(answered)
    # every echo answered, in an unbroken run; only the one in flight when ping was stopped may lack a reply
    assert answered == set(range(1, max(answered) + 1)) and max(answered) >= sent - 1, out[-300:]
    assert sent >= 10 * (replayed - killed), "pings covered the whole episode"
    region = mesh.get(f"/v1/regions/{drain_region}")
    assert region["state"] == "drained" and region["drain"]["reason"] == "maintenance before the kill"
    nodes = {n["id"]: n for n in mesh.get("/v1/nodes")}  # read before the database: agents keep reporting
    stored = _stored_seqs(Path(state.dir) / "controller.db")
    for node_id, n in nodes.items():
        seqs = stored[node_id]
        assert seqs == list(range(len(seqs))), f"{node_id}: gaps or repeats in stored windows"
        assert len(seqs) >= acked_before[node_id], f"{node_id}: acknowledged windows lost"
        assert n["reports_accepted"] <= len(seqs) <= n["reports_accepted"] + 3, (n, len(seqs))
    with mesh.api() as c:
        c.delete(f"/v1/regions/{drain_region}/drain").raise_for_status()
    timing(
        f"controller SIGKILL: restarted by `lab up` {restarted - killed:.1f} s after the kill (3 s of it waiting); "
        f"windows made meanwhile all in {replayed - restarted:.1f} s later; overlay ping {got}/{sent} answered; "
        "manual drain intact; "
        f"{sum(len(s) for s in stored.values())} windows stored, every node's seqs contiguous, none lost, none twice"
    )


def test_6_flapping_causes_at_most_one_drain(mesh: LabUnderTest) -> None:
    state = mesh.state
    flapper, (x, y) = "azure:uksouth", ("aws:ap-northeast-1", "gcp:us-east4")
    since = mesh.last_event_id()
    t0 = time.time()
    try:
        for _ in range(5):  # 2.5 s bad, 2.5 s good, for 25 s: a region and a link
            lab.fault(state, flapper, "blackhole")
            lab.fault_link(state, x, y, "loss", 100)
            time.sleep(2.5)
            lab.heal(state)
            time.sleep(2.5)
    finally:
        lab.heal(state)
    events = mesh.events_after(since)
    drains = [e for e in events if e["kind"] == "drain"]
    undrains = [e for e in events if e["kind"] == "undrain"]
    assert len(drains) <= 1 and all(e["region"] == flapper for e in drains), drains
    assert not undrains, "a flapping region is not let back in while it flaps"
    changes = [e for e in events if e["kind"] == "route_change"]
    timing(
        f"flapping: {flapper} blackholed and {x} <-> {y} lost, on and off every 2.5 s for {time.time() - t0:.0f} s: "
        f"{len(drains)} drain, 0 undrains, {len(changes)} route-table changes"
    )
    if drains:
        wait_until(
            lambda: next((e for e in mesh.events_after(since) if e["kind"] == "undrain"), None),
            HOLD_S + 30,
            f"{flapper} back once stable",
        )


def test_7_down_leaves_nothing_behind(mesh: LabUnderTest) -> None:
    t0 = time.monotonic()
    out = mesh.meshctl("lab", "down")
    assert "nothing left behind" in out.stderr
    assert leftovers(mesh.prefix) == []
    assert lab.lab_processes(mesh.dir, []) == []
    assert not list(Path("/var/run/wireguard").glob(f"{mesh.prefix}*"))
    cfg = (Path(mesh.env["MESHCTL_CONFIG"])).read_text()
    assert "lab" not in cfg.split("contexts:")[1], cfg
    timing(f"lab down: everything removed in {time.monotonic() - t0:.1f} s")


def test_failed_up_removes_everything(tmp_path: Path) -> None:
    """An agent that cannot start its tunnel fails `lab up`, which then removes all it made."""
    require_lab_tools()
    t = LabUnderTest(tmp_path, prefix=f"mf{os.getpid() % 10000}", net="10.217")
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "wireguard-go").write_text("#!/bin/sh\necho 'wireguard-go: refusing (test)' >&2\nexit 1\n")
    (fake / "wireguard-go").chmod(0o755)
    t.env["PATH"] = f"{fake}:{t.env['PATH']}"
    small = tmp_path / "small.yaml"
    small.write_text(
        "name: two\nregions:\n  aws:us-east-1: {nodes: 1}\n  gcp:us-east4: {nodes: 1}\n"
        "rtt_ms:\n  - [aws:us-east-1, gcp:us-east4, 2.9]\n"
    )
    try:
        r = t.meshctl("lab", "up", "--topology", str(small), check=False)
        assert r.returncode == 1 and "agent" in r.stderr and "exited" in r.stderr, r.stderr
        assert "WireGuard" in r.stderr or "wireguard-go" in r.stderr, r.stderr  # the agent's own error, shown
        assert leftovers(t.prefix) == [] and lab.lab_processes(t.dir, []) == []
    finally:
        t.meshctl("lab", "down", check=False)


def test_killed_up_is_cleaned_by_down(tmp_path: Path) -> None:
    """`lab up` killed half-way (SIGKILL: no chance to clean up): `lab down` still removes it all."""
    require_lab_tools()
    t = LabUnderTest(tmp_path, prefix=f"mk{os.getpid() % 10000}", net="10.218")
    proc = subprocess.Popen([sys.executable, "-m", "meshctl", "lab", "up"], env=t.env, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: (Path(t.dir) / "pids" / "controller.pid").exists(), 60, "the controller started")
        time.sleep(1.5)  # agents starting, wireguard-go interfaces appearing
        proc.kill()
        proc.wait()
        assert existing_namespaces(t.prefix), "the lab was half built"
        r = t.meshctl("lab", "down")
        assert "nothing left behind" in r.stderr, r.stderr
        assert leftovers(t.prefix) == [] and lab.lab_processes(t.dir, []) == []
    finally:
        proc.kill()
        t.meshctl("lab", "down", check=False)
