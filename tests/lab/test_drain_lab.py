"""Drains reach the nodes, on meshlab (real agents in network namespaces, real WireGuard):

- a drained region's agents answer 503 on /healthz within 1 s of the drain (curl inside each
  node's namespace, as a load balancer's health check would ask), run their --on-drain hook once
  with the reason in its environment, and answer 200 again after the undrain (--on-undrain once);
- a node drain does the same for one node only;
- a controller that is down (stopped) does not turn them 503: fail static.

Timings are printed (run with `-s`) and appended to $MESH_TIMINGS_FILE. Outage-to-drain before
and after early windows is measured by `python -m bench.bench_outage` (minutes of holds).
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshctl.lab import lab
from tests.conftest import wait_until
from tests.lab.test_meshlab import LabUnderTest, require_lab_tools, timing

pytestmark = pytest.mark.lab
HEALTH_PORT = 9901  # the agent's default --health-listen 0.0.0.0:9901, in each node's namespace


POLLER = """
import sys, time, urllib.request, urllib.error
url, end = f"http://127.0.0.1:{sys.argv[1]}/healthz", time.time() + float(sys.argv[2])
while time.time() < end:
    try:
        code = urllib.request.urlopen(url, timeout=2).status
    except urllib.error.HTTPError as e:
        code = e.code
    except OSError:
        code = 0
    print(f"{time.time():.4f} {code}", flush=True)
    time.sleep(0.02)
"""


def first(proc: subprocess.Popen[str], status: int, after: float) -> float | None:
    """The time of the first answer with `status` at or after `after`, from a `watch` process's output."""
    out, _ = proc.communicate(timeout=60)
    for line in out.splitlines():
        at, code = line.split()
        if float(at) >= after and int(code) == status:
            return float(at)
    return None


class DrainLab(LabUnderTest):
    def __init__(self, tmp: Path, prefix: str, net: str) -> None:
        super().__init__(tmp, prefix, net)
        self.hooks = tmp / "hooks.log"
        line = 'echo "{} $MESH_NODE_ID $MESH_DRAIN_SCOPE $MESH_DRAIN_REASON" >> ' + str(self.hooks)
        # the agents `lab up` starts inherit its environment: MESH_ON_DRAIN / MESH_ON_UNDRAIN are their hooks
        self.env.update(
            MESH_ON_DRAIN=f"sh -c '{line.format('drain')}'", MESH_ON_UNDRAIN=f"sh -c '{line.format('undrain')}'"
        )

    def healthz(self, node: lab.LabNode) -> tuple[int, dict[str, Any]]:
        """GET /healthz from inside the node's namespace, with curl."""
        proc = subprocess.run(
            ["ip", "netns", "exec", node.ns, "curl", "-s", "-m", "2", "-w", "\n%{http_code}",
             f"http://127.0.0.1:{HEALTH_PORT}/healthz"],
            capture_output=True, text=True, timeout=10,
        )  # fmt: skip
        body, _, code = proc.stdout.rpartition("\n")
        return int(code or 0), json.loads(body) if body else {}

    def watch(self, node: lab.LabNode, seconds: float) -> subprocess.Popen[str]:
        """Poll /healthz every 20 ms from inside the node's namespace for `seconds` (one process, no
        spawn per poll): prints "<unix time the answer came> <status>" per answer."""
        return subprocess.Popen(
            ["ip", "netns", "exec", node.ns, sys.executable, "-c", POLLER, str(HEALTH_PORT), str(seconds)],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip

    def hook_lines(self) -> list[str]:
        return self.hooks.read_text().splitlines() if self.hooks.exists() else []

    def node_ids(self) -> dict[str, str]:
        by_endpoint = {n["endpoint"].split(":")[0]: n["id"] for n in self.get("/v1/nodes")}
        return {n.name: by_endpoint[n.wan_ip] for n in self.state.nodes}


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DrainLab]:
    require_lab_tools()
    t = DrainLab(tmp_path_factory.mktemp("drainlab"), prefix=f"dl{os.getpid() % 10000}", net="10.219")
    try:
        t.meshctl("lab", "up")
        wait_until(lambda: all(t.healthz(n)[0] == 200 for n in t.state.nodes), 30, "every agent's /healthz 200")
        yield t
    finally:
        t.meshctl("lab", "down", check=False)


def test_1_a_drained_region_answers_503_within_1s_runs_the_hook_once_and_comes_back(mesh: DrainLab) -> None:
    state = mesh.state
    by_region: dict[str, list[lab.LabNode]] = {}
    for n in state.nodes:
        by_region.setdefault(n.region, []).append(n)
    # a region with two nodes, active now (a loaded machine may have the lab drain one by itself)
    active = {r["id"] for r in mesh.get("/v1/regions") if r["state"] == "active"}
    region = max(by_region, key=lambda r: (r in active, len(by_region[r]), r))
    nodes, others = by_region[region], [n for n in state.nodes if n.region != region]
    wait_until(lambda: all(mesh.healthz(n)[0] == 200 for n in nodes), 30, f"{region}'s agents 200")
    ids = mesh.node_ids()
    before = len(mesh.hook_lines())
    watchers = [mesh.watch(n, 4.0) for n in nodes]
    time.sleep(0.5)
    with mesh.api() as c:
        sent_at = time.time()
        r = c.post(f"/v1/regions/{region}/drain", json={"reason": "provider incident 4711"})
        assert r.status_code == 200, r.text
    # from sending the drain to the first 503 each agent answered (the POST itself returns after the
    # recompute it asks for, which may take a second on a loaded machine: the agents do not wait for it)
    to_503 = {n.name: (first(w, 503, sent_at) or math.inf) - sent_at for n, w in zip(nodes, watchers, strict=True)}
    assert max(to_503.values()) < 1.0, to_503
    code, body = mesh.healthz(nodes[0])
    assert code == 503
    assert body["status"] == "drained" and body["scope"] == "region" and body["reason"] == "provider incident 4711"
    still_active = {r["id"] for r in mesh.get("/v1/regions") if r["state"] == "active"}
    assert all(mesh.healthz(n)[0] == 200 for n in others if n.region in still_active)  # other regions untouched
    wait_until(lambda: len(mine(mesh, ids, nodes, before)) >= len(nodes), 10, "the drain hooks")
    time.sleep(2)  # several long polls and windows later: still once each
    expected = sorted(f"drain {ids[n.name]} region provider incident 4711" for n in nodes)
    assert sorted(mine(mesh, ids, nodes, before)) == expected

    watchers = [mesh.watch(n, 4.0) for n in nodes]
    time.sleep(0.5)
    with mesh.api() as c:
        sent_at = time.time()
        assert c.delete(f"/v1/regions/{region}/drain").status_code == 200
    to_200 = {n.name: (first(w, 200, sent_at) or math.inf) - sent_at for n, w in zip(nodes, watchers, strict=True)}
    assert max(to_200.values()) < 1.0, to_200
    wait_until(lambda: len(mine(mesh, ids, nodes, before)) >= 2 * len(nodes), 10, "the undrain hooks")
    time.sleep(1)
    assert sorted(mine(mesh, ids, nodes, before)) == sorted([*expected, *(f"undrain {ids[n.name]}  " for n in nodes)])
    timing(
        f"drain reaches the nodes: {region} drained -> /healthz 503 on its {len(nodes)} agents after "
        f"{', '.join(f'{v * 1000:.0f}' for v in sorted(to_503.values()))} ms (polled inside each namespace), "
        "hook once each; "
        f"undrained -> 200 after {', '.join(f'{v * 1000:.0f}' for v in sorted(to_200.values()))} ms"
    )


def mine(mesh: DrainLab, ids: dict[str, str], nodes: list[lab.LabNode], before: int) -> list[str]:
    """Hook lines of these nodes since `before` lines."""
    wanted = {ids[n.name] for n in nodes}
    return [line for line in mesh.hook_lines()[before:] if line.split(" ")[1] in wanted]


def test_2_a_node_drain_reaches_that_node_only(mesh: DrainLab) -> None:
    state = mesh.state
    active = {r["id"] for r in mesh.get("/v1/regions") if r["state"] == "active"}
    node, other = [n for n in state.nodes if n.region in active][:2]
    wait_until(lambda: mesh.healthz(node)[0] == mesh.healthz(other)[0] == 200, 30, "both agents 200")
    node_id = mesh.node_ids()[node.name]
    before = len(mesh.hook_lines())
    watcher = mesh.watch(node, 3.0)
    time.sleep(0.5)
    with mesh.api() as c:
        sent_at = time.time()
        assert c.post(f"/v1/nodes/{node_id}/drain", json={"reason": "kernel update"}).status_code == 200
    took = (first(watcher, 503, sent_at) or math.inf) - sent_at
    assert took < 1.0
    assert mesh.healthz(node)[1]["scope"] == "node"
    assert mesh.healthz(other)[0] == 200 or mesh.get(f"/v1/regions/{other.region}")["state"] == "drained"
    wait_until(lambda: mine(mesh, {node.name: node_id}, [node], before), 10, "the node's drain hook")
    assert mine(mesh, {node.name: node_id}, [node], before) == [f"drain {node_id} node kernel update"]
    with mesh.api() as c:
        assert c.delete(f"/v1/nodes/{node_id}/drain").status_code == 200
    wait_until(lambda: mesh.healthz(node)[0] == 200, 5, "the node 200 again")
    timing(f"node drain: /healthz 503 on that node after {took * 1000:.0f} ms; its neighbours stay 200")


def test_3_a_controller_that_is_down_does_not_turn_them_503(mesh: DrainLab) -> None:
    state = mesh.state
    # what each agent says before (a loaded machine may have the lab drain a region by itself)
    before = {n.name: mesh.healthz(n) for n in state.nodes}
    pid = int((Path(state.dir) / "pids" / "controller.pid").read_text())
    os.kill(pid, signal.SIGTERM)
    stopped = time.monotonic()
    wait_until(lambda: not lab.alive(pid, state.marker), 15, "the controller stopped")
    answers: list[tuple[str, int, dict[str, Any]]] = []
    while time.monotonic() - stopped < 8:  # over several windows, long polls and report retries
        answers += [(n.name, *mesh.healthz(n)) for n in state.nodes]
    assert not [a for a in answers if a[2].get("status") == "controller_unreachable"], answers
    changed = [a for a in answers if a[1] != before[a[0]][0]]
    assert not changed, changed  # every agent answers as it did: the controller's absence changes nothing
    mesh.meshctl("lab", "up")  # restarts what died: the controller
    ok = sum(1 for a in answers if a[1] == 200)
    timing(
        f"fail static: controller stopped {time.monotonic() - stopped:.0f} s: {len(answers)} /healthz answers "
        f"from {len(state.nodes)} agents, each as before the stop ({ok} of them 200; grace 300 s)"
    )
