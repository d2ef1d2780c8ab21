"""Three agents in network namespaces over wireguard-go, joined to a real controller, with the
userspace WAN router giving each region pair its own delay.

Root and wireguard-go are needed (CI has both; the suite fails loudly elsewhere rather than
skipping).
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshctl.lab.netns import Lab, leftovers, sh, write_join_token
from tests.conftest import ControllerProcess, free_port

pytestmark = pytest.mark.lab
REGIONS = ["aws:us-east-1", "gcp:europe-west3", "azure:japaneast"]
ONE_WAY_MS = {(0, 1): 10.0, (0, 2): 20.0, (1, 2): 30.0}  # per node pair, both directions


class Node:
    def __init__(self, lab: Lab, i: int, region: str, controller: ControllerProcess, tmp: Path) -> None:
        self.i, self.region, self.lab = i, region, lab
        self.ns = lab.namespaces[i]
        self.ifname = f"{lab.prefix}w{i}"
        self.state = tmp / f"node{i}"
        self.controller = controller
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = tmp / f"agent{i}.log"

    def start(self, join_token: str | None = None) -> None:
        """Start the agent; a join token goes to a 0600 file in its state directory, never into its argv."""
        token_file = write_join_token(self.state, join_token) if join_token is not None else None
        args = self.lab.agent_argv(
            self.i,
            self.controller.url,
            self.region,
            str(self.state),
            window="1",
            probe_rate="10",
            join_token_file=token_file,
        )
        assert join_token is None or join_token not in " ".join(args)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=log)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def ping(self, ip: str, count: int = 3) -> bool:
        return sh("ping", "-c", str(count), "-i", "0.2", "-W", "1", ip, ns=self.ns, check=False).returncode == 0


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ControllerProcess, list[Node]]]:
    if os.geteuid() != 0 or shutil.which("wireguard-go") is None:
        pytest.fail("lab tests need root and wireguard-go (apt-get install wireguard-go wireguard-tools)")
    tmp = tmp_path_factory.mktemp("agents")
    lab = Lab(prefix=f"mt{os.getpid() % 100000}", net="10.214")
    lab.down()
    nodes: list[Node] = []
    ctl = ControllerProcess(
        f"sqlite:///{tmp / 'c.db'}", tmp, host=lab.host_ip, port=free_port(), env={"MESH_STALE_AFTER_S": "5"}
    )
    router: subprocess.Popen[bytes] | None = None
    try:
        lab.up(len(REGIONS))
        lab.add_wan(len(REGIONS))
        pairs: list[str] = []
        for (a, b), ms in ONE_WAY_MS.items():
            pairs += ["--pair", lab.wan_ip(a), lab.wan_ip(b), str(ms), "--pair", lab.wan_ip(b), lab.wan_ip(a), str(ms)]
        router = subprocess.Popen(lab.router_argv(*pairs), stdout=subprocess.PIPE)
        assert router.stdout is not None and b"wan router" in router.stdout.readline()
        lab.route_wan_into_tun()
        ctl.url = f"http://{lab.host_ip}:{ctl.port}"
        ctl.start()
        for i, region in enumerate(REGIONS):
            ctl.add_region(region)
            with ctl.client() as c:
                token = c.post("/v1/join-tokens", json={"region": region, "ttl_s": 600, "uses": 1}).json()["token"]
            node = Node(lab, i, region, ctl, tmp)
            node.start(token)
            nodes.append(node)
        yield ctl, nodes
    finally:
        for n in nodes:
            n.stop()
        ctl.kill()
        lab.down([router] if router is not None else [])
        assert leftovers(lab.prefix) == [], "the lab left something behind"
        for n in nodes:
            if n.log.exists():
                print(f"--- agent {n.i} log tail ---\n{n.log.read_text()[-1500:]}")


def nodes_by_region(ctl: ControllerProcess) -> dict[str, dict[str, Any]]:
    with ctl.client() as c:
        return {n["region"]: n for n in c.get("/v1/nodes").json()}


def test_join_distinct_addresses_and_overlay_ping(mesh: tuple[ControllerProcess, list[Node]]) -> None:
    ctl, nodes = mesh
    joined = ctl.wait_for(
        lambda: len(nodes_by_region(ctl)) == 3 and nodes_by_region(ctl), timeout=30, what="three nodes joined"
    )
    ips = [joined[r]["overlay_ip"] for r in REGIONS]
    assert len(set(ips)) == 3
    for node in nodes:
        for ip in ips:
            if ip != joined[node.region]["overlay_ip"]:
                ctl.wait_for(functools.partial(node.ping, ip, 1), timeout=20, what=f"ping {ip} from {node.ns}")
    key_mode = oct((nodes[0].state / "wg-private.key").stat().st_mode & 0o777)
    assert key_mode == "0o600"
    private = (nodes[0].state / "wg-private.key").read_text().strip()
    with ctl.client() as c:
        assert private not in c.get("/v1/nodes").text, "the private key never reaches the controller"
    fetch = "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:9464/metrics').read().decode())"
    metrics = sh(sys.executable, "-c", fetch, ns=nodes[0].ns).stdout
    assert "mesh_agent_probes_sent_total" in metrics and "mesh_agent_reports_delivered_total" in metrics


def test_links_measured_between_every_region(mesh: tuple[ControllerProcess, list[Node]]) -> None:
    ctl, _ = mesh

    def links() -> dict[tuple[str, str], dict[str, Any]]:
        with ctl.client() as c:
            return {(x["src"], x["dst"]): x for x in c.get("/v1/links").json()["links"] if x["fresh"]}

    def expected(src: str, dst: str) -> float:
        i, j = sorted((REGIONS.index(src), REGIONS.index(dst)))
        return 2 * ONE_WAY_MS[(i, j)]

    def within(x: dict[str, Any]) -> bool:  # 10% or 2 ms, plus up to 2 ms the userspace router adds
        want = expected(x["src"], x["dst"])
        return x["loss_percent"] == 0 and abs(x["rtt_p50_ms"] - want) <= max(2.0, 0.1 * want) + 2.0

    def clean() -> dict[tuple[str, str], dict[str, Any]] | None:
        now = links()
        return now if len(now) == 6 and all(within(x) for x in now.values()) else None

    try:
        found = ctl.wait_for(clean, timeout=40, what="6 fresh loss-free links (first windows may lose to handshakes)")
    except AssertionError:
        print({k: (v["rtt_p50_ms"], v["loss_percent"], v["samples"]) for k, v in links().items()})
        raise
    assert {(a, b) for a in REGIONS for b in REGIONS if a != b} == set(found)
    shown = ", ".join(
        f"{a.split(':')[1]}->{b.split(':')[1]} {x['rtt_p50_ms']:.1f} (injected {expected(a, b):.0f})"
        for (a, b), x in sorted(found.items())
    )
    print(f"\n[agent] measured region RTTs, ms: {shown}")


def test_controller_down_tunnels_stay_and_spooled_windows_arrive(mesh: tuple[ControllerProcess, list[Node]]) -> None:
    ctl, nodes = mesh
    target = nodes_by_region(ctl)[REGIONS[1]]["overlay_ip"]
    ctl.stop()
    time.sleep(2)
    assert nodes[0].ping(target), "the overlay answers with the controller down"
    nodes[1].stop()
    nodes[1].start()  # restart while the controller is away: tunnel back from disk
    time.sleep(3)
    assert nodes[0].ping(target), "a restarted agent brings its tunnel back from disk"
    time.sleep(2)
    spooled = [len(list((n.state / "spool").glob("*.json"))) for n in nodes]
    assert all(s > 0 for s in spooled), spooled
    ctl.start()

    def delivered() -> bool | list[tuple[int, int, int]]:
        by = nodes_by_region(ctl)
        counts = [
            (by[r]["reports_accepted"], by[r]["last_seq"] + 1, len(list((n.state / "spool").glob("*.json"))))
            for n, r in zip(nodes, REGIONS, strict=True)
        ]
        return all(accepted == windows and spooled == 0 for accepted, windows, spooled in counts) and counts

    counts = ctl.wait_for(delivered, timeout=60, what="every spooled window delivered exactly once")
    print(f"\n[agent] after the outage: (accepted, windows made, still spooled) per node: {counts}")


def test_rotate_key(mesh: tuple[ControllerProcess, list[Node]]) -> None:
    ctl, nodes = mesh
    before = nodes_by_region(ctl)[REGIONS[2]]
    r = subprocess.run(
        [sys.executable, "-m", "meshctl", "agent", "rotate-key", "--state-dir", str(nodes[2].state)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 0, r.stderr
    after = ctl.wait_for(
        lambda: (n := nodes_by_region(ctl)[REGIONS[2]])["public_key"] != before["public_key"] and n,
        timeout=15,
        what="new public key registered",
    )

    def peers_of_node0() -> str:
        return sh("wg", "show", nodes[0].ifname, "peers", ns=nodes[0].ns).stdout

    ctl.wait_for(lambda: after["public_key"] in peers_of_node0(), timeout=40, what="node 0 follows the new key")
    assert before["public_key"] not in peers_of_node0()
    ctl.wait_for(lambda: nodes[0].ping(after["overlay_ip"], 1), timeout=20, what="reach the node on its new key")
