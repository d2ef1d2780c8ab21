"""`meshctl lab exec NODE -- CMD ...`: a command in a lab node's namespace, as a person would type it.

A two-region lab of one node each (the default 12-node lab of test_meshlab is module-scoped and
torn down by its last test, so it cannot be shared across modules): `lab up` hands it over only
once both directed links measure what the topology says, then every check goes through the
`meshctl` command line: the node's addresses, a ping of the peer's overlay address, stdin, stdout,
stderr and the exit code passed through, and the errors for an unknown node and for no lab.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.lab.test_meshlab import LabUnderTest, require_lab_tools, timing

pytestmark = pytest.mark.lab
RTT_MS = 30.0
TOPOLOGY = f"""name: two
regions:
  aws:us-east-1: {{nodes: 1}}
  aws:eu-west-2: {{nodes: 1}}
rtt_ms:
  - [aws:us-east-1, aws:eu-west-2, {RTT_MS}]
"""


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabUnderTest]:
    require_lab_tools()
    tmp = tmp_path_factory.mktemp("labexec")
    t = LabUnderTest(tmp, prefix=f"mx{os.getpid() % 10000}", net="10.211")
    (tmp / "two.yaml").write_text(TOPOLOGY)
    try:
        t0 = time.monotonic()
        up = t.meshctl("lab", "up", "--topology", str(tmp / "two.yaml"), "--steady-timeout", "40")
        timing(f"lab up, 2 regions, returned steady: {time.monotonic() - t0:.1f} s")
        # `up` waited for the measurements to be true, and says so
        assert "steady: all 2 directed links within max(1 ms, 3%)" in up.stderr, up.stderr
        yield t
    finally:
        t.meshctl("lab", "down", check=False)


def test_exec_runs_in_the_nodes_namespace(two: LabUnderTest) -> None:
    overlay = two.overlay_ips()
    a, b = two.state.nodes
    r = two.meshctl("lab", "exec", a.name, "--", "ip", "-br", "addr")
    assert r.returncode == 0
    assert re.search(rf"\b{re.escape(a.wan_ip)}/", r.stdout), r.stdout  # its own WAN veth
    assert re.search(rf"\b{re.escape(overlay[a.name])}/", r.stdout), r.stdout  # its WireGuard interface
    assert b.wan_ip not in r.stdout and overlay[b.name] not in r.stdout
    ident = two.meshctl("lab", "exec", a.name, "--", "ip", "netns", "identify")
    assert ident.stdout.strip() == a.ns


def test_ping_the_peers_overlay_address_by_region(two: LabUnderTest) -> None:
    overlay = two.overlay_ips()
    a, b = two.state.nodes
    r = two.meshctl("lab", "exec", a.region, "--", "ping", "-c", "3", "-i", "0.2", "-W", "2", overlay[b.name])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "3 received" in r.stdout, r.stdout
    rtts = [float(x) for x in re.findall(r"time=([\d.]+) ms", r.stdout)]
    timing(f"lab exec ping {a.region} -> {b.region} over the overlay: {rtts} ms (topology {RTT_MS} ms)")
    assert min(rtts) >= RTT_MS - 1.0  # the WAN's delay is in it: it went through the lab's router


def test_stdin_stdout_stderr_and_exit_code_pass_through(two: LabUnderTest) -> None:
    a = two.state.nodes[0]
    assert two.meshctl("lab", "exec", a.name, "--", "sh", "-c", "exit 7", check=False).returncode == 7
    r = two.meshctl("lab", "exec", a.name, "--", "sh", "-c", "echo out; echo err >&2; exit 3", check=False)
    assert (r.returncode, r.stdout, r.stderr) == (3, "out\n", "err\n")
    echoed = subprocess.run(
        [sys.executable, "-m", "meshctl", "lab", "exec", a.name, "--", "cat"],
        input="hello from stdin\n",
        env=two.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert echoed.returncode == 0 and echoed.stdout == "hello from stdin\n"


def test_unknown_node_names_the_known_ones(two: LabUnderTest) -> None:
    r = two.meshctl("lab", "exec", "aws-us-west-2-1", "--", "true", check=False)
    assert r.returncode == 1
    assert "'aws-us-west-2-1' is not a node or region of this lab" in r.stderr, r.stderr
    for node in two.state.nodes:
        assert node.name in r.stderr and node.region in r.stderr
    no_command = two.meshctl("lab", "exec", two.state.nodes[0].name, check=False)
    assert no_command.returncode == 1 and "give a command" in no_command.stderr


def test_no_lab_up(tmp_path: Path) -> None:
    t = LabUnderTest(tmp_path, prefix="mxnone", net="10.210")
    r = t.meshctl("lab", "exec", "aws-us-east-1-1", "--", "true", check=False)
    assert r.returncode == 1 and "no lab in" in r.stderr and "meshctl lab up" in r.stderr, r.stderr
