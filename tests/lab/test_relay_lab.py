"""The relayed data plane in meshlab (default topology): overlay packets take the route the table
names, probes keep measuring every direct pair, and local fast reroute bounds an interruption.

Everything is observed as a person would: `meshctl lab exec NODE -- ping|traceroute` in the
nodes' namespaces, the controller's route table and peer lists, `meshctl lab fault|fault-link|heal`.
Figures are printed (`-s`) and appended to $MESH_TIMINGS_FILE.

Interruptions are measured with 50 probes/s (`ping -i 0.02`) over the overlay: the longest gap
between two replies while (a) the relay region of a relayed pair is blackholed and (b) the direct
link of a direct pair loses everything. Local fast reroute: both ends' agents see the same next hop
stop answering its heartbeats (10/s, 3 lost in a row) and switch to the pair's backup at once.
"""

from __future__ import annotations

import itertools
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from meshctl.lab import lab
from tests.conftest import wait_until
from tests.lab.test_meshlab import TOPO, LabUnderTest, require_lab_tools, timing

pytestmark = pytest.mark.lab
SRC, DST = "aws:ap-northeast-1", "aws:us-east-1"  # 168 ms direct, ~128 ms through gcp:asia-northeast1
DIRECT_A, DIRECT_B = "aws:us-east-1", "aws:eu-west-2"  # a direct pair in the default topology (B preferred)
RUNS = 3
PING_S = 6  # each interruption run: 50 probes/s for this long, the fault about 2 s in


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabUnderTest]:
    require_lab_tools()
    for tool in ("traceroute",):
        if not any(os.access(os.path.join(d, tool), os.X_OK) for d in os.environ["PATH"].split(":")):
            pytest.fail(f"{tool} is missing: scripts/setup-system.sh --test")
    t = LabUnderTest(tmp_path_factory.mktemp("relaylab"), prefix=f"rl{os.getpid() % 10000}", net="10.214")
    try:
        t0 = time.monotonic()
        t.meshctl("lab", "up")
        timing(f"relay lab up: {time.monotonic() - t0:.1f} s")
        yield t
    finally:
        t.meshctl("lab", "down", check=False)


def nodes(mesh: LabUnderTest) -> dict[str, dict[str, Any]]:
    """Lab node name -> the controller's node (id, overlay_ip, region)."""
    with mesh.state.client() as c:
        by_wan = lab.nodes_by_wan_ip(c)
    return {n.name: by_wan[n.wan_ip] for n in mesh.state.nodes}


def node_in(mesh: LabUnderTest, region: str) -> str:
    return next(n.name for n in mesh.state.nodes if n.region == region)


def data_path(mesh: LabUnderTest, node_id: str, region: str) -> dict[str, Any]:
    """The data-plane path a node's peer list names toward a region."""
    peers = mesh.get(f"/v1/nodes/{node_id}/peers")
    assert peers["relay_data_plane"], "the lab runs the relayed data plane"
    return next(p for p in peers["paths"] if p["region"] == region)


def probe_ip(mesh: LabUnderTest, node_id: str) -> str:
    return str(mesh.get(f"/v1/nodes/{node_id}/peers")["probe_ip"])


def exec_in(mesh: LabUnderTest, node: str, *cmd: str, timeout: float = 60) -> str:
    return mesh.meshctl("lab", "exec", node, "--", *cmd, timeout=timeout).stdout


def ping_rtts(mesh: LabUnderTest, node: str, dst: str, count: int = 20, source: str | None = None) -> list[float]:
    args = ["ping", "-n", "-c", str(count), "-i", "0.05", *(["-I", source] if source else []), dst]
    out = exec_in(mesh, node, *args)
    return [float(x) for x in re.findall(r"time=([\d.]+) ms", out)]


def traceroute_hops(mesh: LabUnderTest, node: str, dst: str) -> list[str]:
    out = exec_in(mesh, node, "traceroute", "-n", "-q", "1", "-w", "1", "-m", "4", dst)
    return re.findall(r"^\s*\d+\s+(\S+)", out, re.M)


def test_1_relayed_ping_follows_the_route_and_probes_stay_direct(mesh: LabUnderTest) -> None:
    def relayed() -> dict[str, Any] | None:
        r = mesh.get(f"/v1/routes/{SRC}/{DST}")
        path = r.get("path") or []
        if len(path) != 3:
            return None
        links = {(x["src"], x["dst"]): x for x in mesh.get("/v1/links")["links"] if x["fresh"]}
        legs = [(path[0], path[1]), (path[1], path[2])]
        true = all(
            leg in links and abs(links[leg]["rtt_p50_ms"] - TOPO.rtt(*leg)) <= max(1.0, 0.03 * TOPO.rtt(*leg))
            for leg in legs
        )
        return r if true else None

    route = wait_until(
        relayed, 90, f"{SRC} -> {DST} relayed, its two links within max(1 ms, 3%) of the topology", poll=1.0
    )
    by_name = nodes(mesh)
    src, dst = node_in(mesh, SRC), node_in(mesh, DST)
    src_id, dst_id = by_name[src]["id"], by_name[dst]["id"]

    def carried() -> tuple[dict[str, Any], dict[str, Any]] | None:
        """(route, path) when the peer list names the route's relay: the route is read again each
        time, as two relays of about the same cost may take turns while the samples settle."""
        r, p = mesh.get(f"/v1/routes/{SRC}/{DST}"), data_path(mesh, src_id, DST)
        return (r, p) if len(r.get("path") or []) == 3 and p["primary"]["relay_region"] == r["path"][1] else None

    route, path = wait_until(
        carried,
        10,
        "the peer list carries the route's relay",
        detail=lambda: f"route {mesh.get(f'/v1/routes/{SRC}/{DST}').get('path')}; path {data_path(mesh, src_id, DST)}",
    )
    relay_region = route["path"][1]
    assert data_path(mesh, dst_id, SRC)["primary"] == path["primary"]  # the same relay node both ways
    assert path["backup"] is not None and path["backup"]["relay_region"] != relay_region
    relay_node = next(n for n in by_name.values() if n["id"] == path["primary"]["relay_node"])
    assert relay_node["region"] == relay_region

    relayed_rtts = ping_rtts(mesh, src, by_name[dst]["overlay_ip"])
    direct_rtts = ping_rtts(mesh, src, probe_ip(mesh, dst_id), source=probe_ip(mesh, src_id))
    relayed_ms, direct_ms = statistics.median(relayed_rtts), statistics.median(direct_rtts)
    timing(
        f"overlay ping {SRC} -> {DST}: {relayed_ms:.1f} ms through {relay_region} (route estimate "
        f"{route['rtt_ms']:.1f} ms, {100 * (relayed_ms / route['rtt_ms'] - 1):+.1f}%); direct (probe addresses) "
        f"{direct_ms:.1f} ms, topology {TOPO.rtt(SRC, DST):.0f} ms"
    )
    assert len(relayed_rtts) >= 18 and len(direct_rtts) >= 18
    assert abs(relayed_ms - route["rtt_ms"]) <= 0.05 * route["rtt_ms"], (relayed_ms, route)
    assert relayed_ms < 0.95 * direct_ms, "relayed traffic must not take the direct path"

    hops = traceroute_hops(mesh, src, by_name[dst]["overlay_ip"])
    timing(f"traceroute {by_name[dst]['overlay_ip']} from {src}: {' -> '.join(hops)}")
    assert hops[:2] == [relay_node["overlay_ip"], by_name[dst]["overlay_ip"]], hops

    # probes still measure every direct pair while traffic is relayed: the matrix is complete
    links = mesh.get("/v1/links")["links"]
    fresh = {(x["src"], x["dst"]) for x in links if x["fresh"]}
    assert len(fresh) == len(TOPO.regions) * (len(TOPO.regions) - 1)
    direct_link = next(x for x in links if (x["src"], x["dst"]) == (SRC, DST))
    assert abs(direct_link["rtt_p50_ms"] - TOPO.rtt(SRC, DST)) <= 0.1 * TOPO.rtt(SRC, DST), direct_link


def longest_gap(mesh: LabUnderTest, node: str, dst: str, fault: list[str]) -> float:
    """Ping at 50/s for PING_S seconds with the fault applied about 2 s in (healed after); the longest
    gap between two replies from just before the fault on (the fault must fall well inside the ping)."""
    cmd = [sys.executable, "-m", "meshctl", "lab", "exec", node, "--"]
    cmd += ["ping", "-n", "-D", "-i", "0.02", "-W", "1", "-c", str(PING_S * 50), dst]
    proc = subprocess.Popen(cmd, env=mesh.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(2.0)
        applied = float(mesh.json(*fault)["applied_at"])
        out, err = proc.communicate(timeout=PING_S + 60)
    finally:
        if proc.poll() is None:
            proc.kill()
        mesh.meshctl("lab", "heal")
    stamps = [float(x) for x in re.findall(r"^\[(\d+\.\d+)\].*bytes from", out, re.M)]
    assert len(stamps) > 50, out[-2000:] + err[-2000:]
    assert stamps[0] < applied - 0.3 and stamps[-1] > applied + 3.0, ("fault outside the ping", applied, stamps[::50])
    after = [s for s in stamps if s >= applied - 0.3]
    return max(b - a for a, b in itertools.pairwise(after))


def summary(gaps: list[float]) -> str:
    return (
        f"median {statistics.median(gaps):.2f} s, worst {max(gaps):.2f} s (runs: {', '.join(f'{g:.2f}' for g in gaps)})"
    )


def test_2_interruption_relay_region_blackholed(mesh: LabUnderTest) -> None:
    by_name = nodes(mesh)
    src, dst = node_in(mesh, SRC), node_in(mesh, DST)
    gaps, relays = [], []
    since = mesh.last_event_id()
    for _ in range(RUNS):
        path = wait_until(
            lambda: (p := data_path(mesh, by_name[src]["id"], DST))["primary"]["relay_region"] and p,
            30,
            f"{SRC} -> {DST} relayed",
            poll=0.5,
        )
        relay = path["primary"]["relay_region"]
        relays.append(f"{relay} (backup {(path['backup'] or {}).get('relay_region') or 'direct'})")
        gaps.append(longest_gap(mesh, src, by_name[dst]["overlay_ip"], ["lab", "fault", relay, "blackhole"]))
        time.sleep(2)
    timing(
        f"media interruption, relay region blackholed ({SRC} -> {DST}, 50 probes/s): longest gap {summary(gaps)}; "
        f"relays: {'; '.join(relays)} (RON: ~20 s; DNS failover: 30-90 s plus TTL)"
    )
    # each end said so in its next report: a `reroute` event names the node and the region it moved
    ends = {by_name[src]["id"], by_name[dst]["id"]}
    moved = wait_until(
        lambda: [e for e in mesh.events_after(since) if e["kind"] == "reroute" and e["node_id"] in ends],
        10,
        "reroute events from both ends",
    )
    timing(f"reroute event: {moved[0]['reason']}")
    assert statistics.median(gaps) < 1.0 and max(gaps) < 3.0, gaps


def test_3_interruption_direct_link_lost_and_traffic_back_on_heal(mesh: LabUnderTest) -> None:
    by_name = nodes(mesh)
    a = node_in(mesh, DIRECT_A)
    a_id = by_name[a]["id"]

    used: set[str] = set()

    def direct_pair() -> tuple[str, dict[str, Any]] | None:
        """A region DIRECT_A reaches directly (DIRECT_B first), active, with a backup relay; a fresh
        one each run, so no run waits for the last one's link to be trusted again."""
        active = {r["id"] for r in mesh.get("/v1/regions") if r["state"] == "active"}
        for p in sorted(mesh.get(f"/v1/nodes/{a_id}/peers")["paths"], key=lambda p: p["region"] != DIRECT_B):
            b = p["region"]
            usable = (
                b not in used
                and p["primary"]["relay_region"] is None
                and (p["backup"] or {}).get("relay_node")
                and b in active
            )
            if usable and mesh.route(DIRECT_A, b) == [DIRECT_A, b] and mesh.route(b, DIRECT_A) == [b, DIRECT_A]:
                return b, p
        return None

    # from a whole mesh: a relay region the last test blackholed may still be drained (its hold),
    # and a pair direct only while it is would go back to the cheaper relay, not to the direct link
    wait_until(
        lambda: all(r["state"] == "active" for r in mesh.get("/v1/regions")), 60, "every region active", poll=1.0
    )
    gaps, pairs = [], []
    for _ in range(RUNS):
        region, path = wait_until(direct_pair, 40, f"a direct pair from {DIRECT_A} with a backup relay", poll=1.0)
        used.add(region)
        dst_ip = by_name[node_in(mesh, region)]["overlay_ip"]
        pairs.append(f"{region} (backup {path['backup']['relay_region']})")
        fault = ["lab", "fault-link", DIRECT_A, region, "loss", "100"]
        gaps.append(longest_gap(mesh, a, dst_ip, fault))
        healed = time.monotonic()

    # when the (last) link heals, the traffic comes back to it (one hop on traceroute)
    def why() -> str:  # what the controller and the node say, when the traffic did not come back
        path = data_path(mesh, a_id, region)
        routes = mesh.route(DIRECT_A, region), mesh.route(region, DIRECT_A)
        explained = mesh.get(f"/v1/routes/{DIRECT_A}/{region}", explain="true")
        return (
            f"routes {routes}; {a}'s path: {path}; traceroute {traceroute_hops(mesh, a, dst_ip)};"
            f" explained: {explained.get('reason')} {explained.get('candidates', [])[:3]}"
        )

    wait_until(
        lambda: traceroute_hops(mesh, a, dst_ip)[:1] == [dst_ip], 40, "traffic direct again", poll=0.5, detail=why
    )
    back = time.monotonic() - healed
    timing(
        f"media interruption, direct link 100% loss ({DIRECT_A} <-> {'; '.join(pairs)}, 50 probes/s): longest gap "
        f"{summary(gaps)}; traffic direct again {back:.1f} s after the last heal"
    )
    assert statistics.median(gaps) < 1.0 and max(gaps) < 3.0, gaps
