"""Two agents 40 ms apart each way (the userspace WAN router): the agent's RTT against irtt and
ping on the same overlay path, in the same run, and the probe bytes on the wire."""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from meshctl.lab.netns import Lab, leftovers, sh, write_join_token
from tests.conftest import ControllerProcess, free_port

pytestmark = pytest.mark.lab
REGIONS = ["aws:us-east-1", "gcp:asia-southeast1"]
ONE_WAY_MS = 40.0


def timing(line: str) -> None:
    print(f"\n[agent] {line}", flush=True)
    with open(os.environ.get("MESH_TIMINGS_FILE", "/tmp/meshctl-timings.txt"), "a") as f:
        f.write(f"[agent] {line}\n")


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    for tool in ("wireguard-go", "irtt", "ping", "nft"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is missing: apt-get install wireguard-go wireguard-tools irtt iputils-ping nftables")
    if os.geteuid() != 0:
        pytest.fail("lab tests need root (network namespaces)")
    tmp = tmp_path_factory.mktemp("accuracy")
    lab = Lab(prefix=f"ma{os.getpid() % 100000}", net="10.215")
    lab.down()
    procs: list[subprocess.Popen[bytes]] = []
    ctl = ControllerProcess(
        f"sqlite:///{tmp / 'c.db'}", tmp, host=lab.host_ip, port=free_port(), env={"MESH_STALE_AFTER_S": "5"}
    )
    try:
        lab.up(2)
        lab.add_wan(2)
        router = subprocess.Popen(lab.router_argv("--delay-ms", str(ONE_WAY_MS)), stdout=subprocess.PIPE)
        procs.append(router)
        assert router.stdout is not None and b"wan router" in router.stdout.readline()
        lab.route_wan_into_tun()
        ctl.url = f"http://{lab.host_ip}:{ctl.port}"
        ctl.start()
        for i, region in enumerate(REGIONS):
            ctl.add_region(region)
            with ctl.client() as c:
                token = c.post("/v1/join-tokens", json={"region": region, "ttl_s": 600, "uses": 1}).json()["token"]
            log = open(tmp / f"agent{i}.log", "wb")  # noqa: SIM115 - lives as long as the agent
            token_file = write_join_token(tmp / f"node{i}", token)  # a 0600 file: no secret in argv
            argv = lab.agent_argv(i, ctl.url, region, str(tmp / f"node{i}"), window="2", join_token_file=token_file)
            procs.append(subprocess.Popen(argv, stdout=log, stderr=log))
        nodes = ctl.wait_for(
            lambda: (
                len(ctl.client().get("/v1/nodes").json()) == 2
                and {n["region"]: n for n in ctl.client().get("/v1/nodes").json()}
            ),
            timeout=30,
            what="both agents joined",
        )
        yield {"lab": lab, "ctl": ctl, "nodes": nodes, "tmp": tmp}
    finally:
        ctl.kill()
        lab.down(procs)
        assert leftovers(lab.prefix) == []


def ping_p50(ns: str, ip: str, count: int) -> float:
    out = sh("ping", "-c", str(count), "-i", "0.2", ip, ns=ns, check=False).stdout
    times = [float(t) for t in re.findall(r"time=([\d.]+) ms", out)]
    assert len(times) >= count * 0.9, out[-500:]
    return statistics.median(times)


def test_agent_rtt_matches_irtt_and_ping(pair: dict[str, Any]) -> None:
    lab, ctl, nodes, tmp = pair["lab"], pair["ctl"], pair["nodes"], pair["tmp"]
    src_ns, dst_ip = lab.namespaces[0], nodes[REGIONS[1]]["overlay_ip"]
    ctl.wait_for(
        lambda: sh("ping", "-c", "1", "-W", "1", dst_ip, ns=src_ns, check=False).returncode == 0,
        timeout=30,
        what="overlay up through the WAN router",
    )
    server = subprocess.Popen(
        ["ip", "netns", "exec", lab.namespaces[1], "irtt", "server", "-b", f"{dst_ip}:2112"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    agent_p50s: list[float] = []
    stop = threading.Event()

    def collect() -> None:
        seen: set[str] = set()
        while not stop.is_set():
            for link in ctl.client().get("/v1/links").json()["links"]:
                key = f"{link['rtt_p50_ms']}-{link['age_s'] // 2}"
                if (link["src"], link["dst"]) == (REGIONS[0], REGIONS[1]) and link["fresh"] and key not in seen:
                    seen.add(key)
                    agent_p50s.append(link["rtt_p50_ms"])
            time.sleep(1.0)

    collector = threading.Thread(target=collect)
    collector.start()
    try:
        time.sleep(1)
        out = tmp / "irtt.json"
        irtt = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                src_ns,
                "irtt",
                "client",
                "-q",
                "-i",
                "100ms",
                "-d",
                "10s",
                "-o",
                str(out),
                f"{dst_ip}:2112",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        ping = ping_p50(src_ns, dst_ip, 45)
        irtt.wait(timeout=30)
        irtt_p50 = json.loads(out.read_text())["stats"]["rtt"]["median"] / 1e6
    finally:
        stop.set()
        collector.join()
        server.kill()
    agent = statistics.median(agent_p50s)
    timing(
        f"RTT p50 over the overlay with {ONE_WAY_MS:.0f} ms each way: agent (STAMP) {agent:.2f} ms "
        f"({len(agent_p50s)} windows), irtt {irtt_p50:.2f} ms, ping {ping:.2f} ms"
    )
    for name, ref in (("irtt", irtt_p50), ("ping", ping)):
        assert abs(agent - ref) <= max(0.5, 0.02 * ref), f"agent {agent:.2f} ms vs {name} {ref:.2f} ms"
    assert 2 * ONE_WAY_MS <= agent < 2 * ONE_WAY_MS + 5


def test_probe_traffic_per_target(pair: dict[str, Any]) -> None:
    lab = pair["lab"]
    ns, ifname = lab.namespaces[0], f"{lab.prefix}w0"
    rules = (
        f"add table inet meshprobe\n"
        f"add chain inet meshprobe out {{ type filter hook output priority 0; }}\n"
        f"add chain inet meshprobe in {{ type filter hook input priority 0; }}\n"
        f'add rule inet meshprobe out oifname "{ifname}" udp dport 862 counter\n'
        f'add rule inet meshprobe in iifname "{ifname}" udp sport 862 counter\n'
    )
    subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=rules, text=True, check=True)
    seconds = 10.0
    time.sleep(seconds)
    listing = sh("nft", "list", "table", "inet", "meshprobe", ns=ns).stdout
    counted = [int(b) for b in re.findall(r"counter packets \d+ bytes (\d+)", listing)]
    assert len(counted) == 2, listing
    out_kbit, back_kbit = (8 * b / seconds / 1000 for b in counted)
    timing(
        f"probe traffic to one target at the default 5 packets/s: {out_kbit:.2f} kbit/s out, "
        f"{back_kbit:.2f} kbit/s back (IP bytes on the overlay interface; {counted} bytes in {seconds:.0f} s)"
    )
    assert 0 < out_kbit < 4.0 and 0 < back_kbit < 4.0
