"""Nodes join the lab controller by their cloud identity, with no join token, then probe and report.

Each node namespace has its own "metadata service": `tests.probes.fake_imds.FakeImds` (AWS in one, GCP
in the other) served over HTTP on 169.254.169.254:80 *inside* that namespace (the address on its
loopback, the listening socket made by a thread that entered the namespace), signing with keys this
test made; the controller trusts those keys (MESH_ATTEST_TRUST_DIR) and a join policy made through the
API admits the accounts. The agents start with no join token at all.

Root and wireguard-go are needed (the suite fails loudly elsewhere rather than skipping).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

from meshctl.attest.testing import AwsSigner, GcpSigner, write_trust_dir
from meshctl.lab.netns import Lab, leftovers, sh
from tests.conftest import ControllerProcess, free_port
from tests.probes.fake_imds import FakeImds

pytestmark = pytest.mark.lab
CLONE_NEWNET = 0x40000000
METADATA_IP = "169.254.169.254"
NODES = [("aws", "aws:us-east-1"), ("gcp", "gcp:europe-west1")]  # the signers' default region and zone


class ImdsServer:
    """`imds` over HTTP at 169.254.169.254:80 in namespace `ns`."""

    def __init__(self, ns: str, imds: FakeImds) -> None:
        self.ns, self.imds = ns, imds
        self.server: HTTPServer | None = None
        self.error: str | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> ImdsServer:
        sh("ip", "addr", "add", f"{METADATA_IP}/32", "dev", "lo", ns=self.ns)
        self._thread.start()
        assert self._ready.wait(10) and self.error is None, self.error
        return self

    def _run(self) -> None:
        imds = self.imds

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                if length:
                    self.rfile.read(length)
                headers = {k.lower(): v for k, v in self.headers.items()}
                status, extra, body = imds.answer(self.command, f"http://{METADATA_IP}{self.path}", headers)
                data = body.encode()
                self.send_response(status)
                for k, v in extra.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_PUT = _answer

            def log_message(self, format: str, *args: Any) -> None:
                pass

        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(f"/var/run/netns/{self.ns}", os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:  # this thread only: the test process stays where it is
                    raise OSError(ctypes.get_errno(), "setns")
            finally:
                os.close(fd)
            self.server = HTTPServer((METADATA_IP, 80), Handler)
        except Exception as exc:
            self.error = f"metadata server in {self.ns}: {exc}"
            self._ready.set()
            return
        self._ready.set()
        self.server.serve_forever(poll_interval=0.2)

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


def attested_lab(
    tmp_path: Path, prefix: str, net: str, **env: str
) -> tuple[Lab, ControllerProcess, AwsSigner, GcpSigner]:
    """A lab (down, not yet up) and a controller on its host side that trusts a fresh AWS and GCP
    signer (`write_trust_dir`); `env`: more of the controller's MESH_* settings."""
    if os.geteuid() != 0 or shutil.which("wireguard-go") is None:
        pytest.fail("lab tests need root and wireguard-go (apt-get install wireguard-go wireguard-tools)")
    aws, gcp = AwsSigner("us-east-1"), GcpSigner()
    trust = write_trust_dir(tmp_path / "trust", aws=[aws], gcp=gcp)
    lab = Lab(prefix=f"{prefix}{os.getpid() % 100000}", net=net)
    lab.down()
    port = free_port()
    env = {"MESH_ATTEST_TRUST_DIR": str(trust), "MESH_PUBLIC_URL": f"http://{lab.host_ip}:{port}", **env}
    ctl = ControllerProcess(f"sqlite:///{tmp_path / 'c.db'}", tmp_path, host=lab.host_ip, port=port, env=env)
    return lab, ctl, aws, gcp


def allow_signers(ctl: ControllerProcess, prefix: str, aws_region: str) -> None:
    """Join policies for the signers' AWS account (us-east-1 -> `aws_region`) and GCP project."""
    with ctl.client() as c:
        for policy in (
            {"id": f"{prefix}-aws", "cloud": "aws", "accounts": ["111122223333"], "regions": {"us-east-1": aws_region}},
            {"id": f"{prefix}-gcp", "cloud": "gcp", "accounts": ["mesh-prod"], "any_region": True},
        ):
            r = c.post("/v1/join-policies", json=policy)
            assert r.status_code == 201, r.text


@pytest.fixture
def lab_mesh(tmp_path: Path) -> Iterator[tuple[ControllerProcess, list[FakeImds], list[Path]]]:
    lab, ctl, aws, gcp = attested_lab(tmp_path, "at", "10.215", MESH_STALE_AFTER_S="5")
    url = ctl.url
    servers: list[ImdsServer] = []
    agents: list[subprocess.Popen[bytes]] = []
    states = [tmp_path / f"node{i}" for i in range(len(NODES))]
    imdses = [FakeImds("aws", aws=aws), FakeImds("gcp", gcp=gcp)]
    try:
        lab.up(len(NODES))
        ctl.start()
        for _, region in NODES:
            ctl.add_region(region)
        allow_signers(ctl, "lab", NODES[0][1])
        for i, ((_, region), imds) in enumerate(zip(NODES, imdses, strict=True)):
            servers.append(ImdsServer(lab.node_ns(i), imds).start())
            argv = lab.agent_argv(
                i, url, region, str(states[i]), window="1", probe_rate="10", endpoint=f"{lab.node_ip(i)}:51820"
            )
            assert not any("join-token" in a for a in argv), argv  # no token of any kind
            log = open(tmp_path / f"agent{i}.log", "ab")  # noqa: SIM115 - closed when the test ends
            agents.append(subprocess.Popen(argv, stdout=log, stderr=log))
        yield ctl, imdses, [tmp_path / f"agent{i}.log" for i in range(len(NODES))]
    finally:
        for p in agents:
            p.kill()
            p.wait()
        for srv in servers:
            srv.stop()
        ctl.kill()
        lab.down()
        assert leftovers(lab.prefix) == [], "the lab left something behind"
        for i in range(len(NODES)):
            log_path = tmp_path / f"agent{i}.log"
            if log_path.exists():
                print(f"--- agent {i} log tail ---\n{log_path.read_text()[-1500:]}")


def test_nodes_join_by_attestation_then_probe_and_report(
    lab_mesh: tuple[ControllerProcess, list[FakeImds], list[Path]],
) -> None:
    ctl, imdses, _logs = lab_mesh

    def nodes() -> dict[str, dict[str, Any]]:
        with ctl.client() as c:
            return {n["region"]: n for n in c.get("/v1/nodes").json()}

    joined = ctl.wait_for(lambda: len(nodes()) == 2 and nodes(), timeout=40, what="both nodes joined by attestation")
    assert set(joined) == {region for _, region in NODES}
    assert all(imds.violations == [] for imds in imdses), [imds.violations for imds in imdses]
    assert imdses[0].tokens, "the AWS node used an IMDSv2 session token"
    assert imdses[1].audiences == [ctl.url], "the GCP token was asked for this controller"
    with ctl.client() as c:
        events = c.get("/v1/events", params={"limit": 1000}).json()
    assert [e for e in events if e["kind"] == "join_refused"] == []
    assert sum(e["kind"] == "join" for e in events) == 2

    def links() -> set[tuple[str, str]]:
        with ctl.client() as c:
            return {(x["src"], x["dst"]) for x in c.get("/v1/links").json()["links"] if x["fresh"]}

    both = {(NODES[0][1], NODES[1][1]), (NODES[1][1], NODES[0][1])}
    ctl.wait_for(lambda: links() >= both, timeout=60, what="fresh links both ways from the attested nodes' reports")
    reporting = nodes()
    assert all(n["reports_accepted"] > 0 and n["up"] for n in reporting.values()), reporting
