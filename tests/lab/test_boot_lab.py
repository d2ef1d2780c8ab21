"""The boot test: a node's user data, as the Pulumi program renders it, validated and then *run*.

1. The agent wheel and its wheelhouse are built from this repository by the release's own build
   (`tests.stacks.artifacts`: `pip wheel --no-deps .` + stacks/tools/agent_wheelhouse.py, for the
   Python and architecture of this machine's `python3`, which plays the node's).
2. The program runs under Pulumi's mocks (tests/stacks/mockrun.py) for a one-region AWS stack that
   names those artifacts over https and the lab controller's URL; the launch template's user data is
   taken from the resource graph, and `cloud-init schema` (Debian's cloud-init) validates it.
3. It is run as cloud-init would, inside a lab network namespace that can reach only the lab bridge
   (the controller and an https artifact server with a CA made here; no package index): `bootcmd`,
   `write_files` (content, mode, owner), `runcmd` (the install script: real curl over https with
   `--proto =https`, `sha256sum -c`, `python3 -m venv`, pip with `--no-index --require-hashes`).
   The `packages` are not installed (no mirror here): the test checks this machine has them.
4. The agent starts as the unit's `ExecStart` says (the unit file the user data wrote, parsed; its
   `StateDirectory=` made with its mode), with a metadata server at 169.254.169.254 in the namespace
   (`tests.probes.fake_imds.FakeImds` over HTTP, `ImdsServer` of the attested-join lab test) serving
   an AWS identity document signed by a key the controller trusts (MESH_ATTEST_TRUST_DIR) and a join
   policy admitting its account. A second, ordinary lab node (GCP attestation) is its peer.

Redirected, because they would touch this machine: paths under /etc, /opt, /usr/local and /var/lib
go under a temporary root (write_files, the runcmd and ExecStart arguments; the install script's
own MESHCTL_PREFIX for /opt/meshctl; MESH_STATE_DIR for the config's state_dir); `systemctl` is a
stand-in that records its calls (systemd does not run here); the WireGuard interface is named with
the lab's prefix (MESH_INTERFACE) because wireguard-go's socket lives in the host's /var/run.
Not covered: real cloud images and their cloud-init datasource, systemd (sandboxing, capabilities,
restarts), the real metadata services, package mirrors, kernel WireGuard.
"""

from __future__ import annotations

import base64
import datetime
import gzip
import ipaddress
import os
import shlex
import shutil
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshctl.lab.netns import Lab, leftovers, sh
from tests.conftest import ControllerProcess
from tests.lab.test_attested_join_lab import ImdsServer, allow_signers, attested_lab
from tests.probes.fake_imds import FakeImds
from tests.stacks.artifacts import Artifacts, build_agent_artifacts, sha256
from tests.stacks.conftest import run_program, stack_config, user_data_docs

pytestmark = pytest.mark.lab
ADDRESS_CLAIMER = "/usr/local/sbin/meshctl-claim-address"  # stacks/meshstack/cloudinit.py (AWS, staticAddresses)

NODE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # root's PATH on Ubuntu
REDIRECTED = ("/etc/", "/opt/", "/usr/local/", "/var/lib/")
REGION, PEER_REGION = "aws:us-east-1", "gcp:europe-west1"
SYSTEMCTL = '#!/bin/sh\necho "systemctl $*" >> "$SYSTEMCTL_LOG"\n'
SERVER_ONLY = {"fastapi", "starlette", "uvicorn", "sqlalchemy", "alembic", "numba", "numpy", "scipy", "typer", "rich"}


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Artifacts:
    """The release build, for the Python the node's `python3` is (here: this machine's)."""
    python3 = shutil.which("python3", path=NODE_PATH)
    assert python3, "no python3 on the node's PATH"
    version = subprocess.run(
        [python3, "-c", "import sys; print(f'{sys.version_info[0]}.{sys.version_info[1]}')"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    return build_agent_artifacts(tmp_path_factory.mktemp("dist"), version, os.uname().machine)


# --- an https artifact server with its own CA ---------------------------------------------------


def _cert(
    subject: str, key: ec.EllipticCurvePrivateKey, issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    b = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer[0].subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if issuer is not None:
        b = b.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(subject))]), critical=False
        ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    return b.sign(issuer[1] if issuer else key, hashes.SHA256())


@dataclass
class ArtifactServer:
    """The artifact bucket: serves `root` over https on ip:port; the CA file the node trusts."""

    root: Path
    ip: str
    tmp: Path
    requests: list[tuple[str, str]] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    def start(self) -> ArtifactServer:
        ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
        ca = _cert("meshctl boot test CA", ca_key, None)
        leaf = _cert(self.ip, key, (ca, ca_key))
        (self.tmp / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        (self.tmp / "server.pem").write_bytes(
            leaf.public_bytes(serialization.Encoding.PEM)
            + key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        seen = self.requests

        class Handler(SimpleHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                seen.append((self.client_address[0], self.path))

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.tmp / "server.pem")
        self.server = ThreadingHTTPServer((self.ip, 0), partial(Handler, directory=str(self.root)))
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True).start()
        return self

    @property
    def ca_file(self) -> Path:
        return self.tmp / "ca.pem"

    def url(self, name: str) -> str:
        assert self.server is not None
        return f"https://{self.ip}:{self.server.server_address[1]}/agent/0.1.0/{name}"

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


# --- running user data as cloud-init would ------------------------------------------------------


@dataclass(frozen=True)
class Node:
    """Where node `ns`'s files go (`root`) and how its commands run (in its namespace, clean env)."""

    ns: str
    root: Path
    env: dict[str, str]

    def path(self, p: str) -> str:
        """A path of the node as it is on this machine: under `root` if it would touch the host."""
        return str(self.root / p.lstrip("/")) if p.startswith(REDIRECTED) else p

    def run(self, command: list[str] | str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        """A bootcmd/runcmd entry: a list is an argv, a string goes to `sh -c` (as cloud-init does)."""
        argv = [self.path(a) for a in command] if isinstance(command, list) else ["sh", "-c", command]
        return subprocess.run(
            ["ip", "netns", "exec", self.ns, *argv], env=self.env, capture_output=True, text=True, timeout=timeout
        )

    def write_files(self, entries: list[dict[str, Any]]) -> None:
        for entry in entries:
            assert set(entry) <= {"path", "content", "permissions", "owner", "encoding"}, f"not handled here: {entry}"
            assert entry.get("encoding", "text/plain") in ("text/plain", "gz+b64"), entry["encoding"]
            target = Path(self.path(entry["path"]))
            assert str(target).startswith(str(self.root)), f"{entry['path']} would be written on this machine"
            target.parent.mkdir(parents=True, exist_ok=True)
            content = entry.get("content", "")
            if entry.get("encoding") == "gz+b64":  # as cloud-init's write_files decodes it
                content = gzip.decompress(base64.b64decode(content)).decode()
            target.write_text(content)
            target.chmod(int(entry.get("permissions", "0644"), 8))
            assert entry.get("owner", "root:root") == "root:root"  # this test runs as root: already so


def service_section(unit: str) -> dict[str, list[str]]:
    """`[Service]` of a systemd unit: key -> its values in order (keys may repeat)."""
    section, out = "", {}
    for raw in unit.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
        elif section == "Service":
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def installed(package: str) -> bool:
    r = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True)
    return r.returncode == 0 and r.stdout.endswith(" installed")


# --- the lab ------------------------------------------------------------------------------------


@dataclass
class BootLab:
    lab: Lab
    ctl: ControllerProcess
    artifacts: ArtifactServer
    imds: FakeImds
    peer_imds: FakeImds
    tmp: Path
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    imds_servers: list[ImdsServer] = field(default_factory=list)

    def start_agent(self, argv: list[str], env: dict[str, str] | None, log: str) -> None:
        out = open(self.tmp / log, "ab")  # noqa: SIM115 - closed with the process at the end
        self.processes.append(subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT))

    def nodes(self) -> dict[str, dict[str, Any]]:
        with self.ctl.client() as c:
            return {n["region"]: n for n in c.get("/v1/nodes").json()}


@pytest.fixture
def boot_lab(tmp_path: Path, artifacts: Artifacts) -> Iterator[BootLab]:
    lab, ctl, aws, gcp = attested_lab(tmp_path, "bt", "10.223")
    bucket = tmp_path / "bucket" / "agent" / "0.1.0"
    bucket.mkdir(parents=True)
    for f in (artifacts.wheel, artifacts.wheelhouse):
        shutil.copy(f, bucket / f.name)
    server = ArtifactServer(tmp_path / "bucket", lab.host_ip, tmp_path)
    # the booted node's public address (endpoint: auto) is what its metadata service says
    imds = FakeImds("aws", aws=aws, public_ip=lab.node_ip(0))
    t = BootLab(lab, ctl, server, imds, FakeImds("gcp", gcp=gcp), tmp_path)
    try:
        lab.up(2)
        server.start()
        ctl.start()
        for region in (REGION, PEER_REGION):
            ctl.add_region(region)
        allow_signers(ctl, "boot", REGION)
        for i, imds in enumerate((t.imds, t.peer_imds)):
            t.imds_servers.append(ImdsServer(lab.node_ns(i), imds).start())
        yield t
    finally:
        for p in t.processes:
            p.kill()
            p.wait()
        for srv in t.imds_servers:
            srv.stop()
        server.stop()
        ctl.kill()
        lab.down()
        assert leftovers(lab.prefix) == [], "the lab left something behind"
        for log in sorted(tmp_path.glob("*.log")):
            print(f"--- {log.name} (tail) ---\n{log.read_text(errors='replace')[-1500:]}")


def test_user_data_boots_a_node_that_joins_by_attestation_gets_peers_and_reports(boot_lab: BootLab) -> None:
    t, art = boot_lab, boot_lab.artifacts
    started = time.monotonic()
    (wheel_path,) = art.root.glob("agent/0.1.0/*.whl")
    (wheelhouse_path,) = art.root.glob("agent/0.1.0/*.tar.gz")

    # 2. the user data the program renders for a node of a one-region AWS stack naming these artifacts
    cfg = stack_config("aws")
    mesh = cfg["meshctl-stacks:mesh"]
    mesh.update(
        controllerUrl=t.ctl.url,
        regions=[{"region": REGION, "nodes": 1}],
        agentWheelUrl=art.url(wheel_path.name),
        agentWheelSha256=sha256(wheel_path),
        agentWheelhouseUrl=art.url(wheelhouse_path.name),
        agentWheelhouseSha256=sha256(wheelhouse_path),
    )
    result = run_program("dev-aws", cfg)
    assert result["error"] is None, result.get("traceback")
    ((text, _),) = user_data_docs(result)
    assert "token" not in text.lower() and t.ctl.admin_token not in text, "no join token: the node attests"
    (t.tmp / "user-data.yaml").write_text(text)
    schema = subprocess.run(
        ["cloud-init", "schema", "--config-file", str(t.tmp / "user-data.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert schema.returncode == 0 and "Valid cloud-config" in schema.stdout, schema.stdout + schema.stderr
    doc = yaml.safe_load(text)
    assert set(doc) <= {"package_update", "packages", "bootcmd", "write_files", "runcmd"}, f"not run here: {set(doc)}"
    missing = [p for p in doc.get("packages", []) if not installed(p)]
    assert missing == [], f"packages the user data installs are missing on this machine: {missing}"

    # 3. run it in node 0's namespace, as cloud-init would: bootcmd, write_files, runcmd
    root, stubs = t.tmp / "node0-root", t.tmp / "node0-stubs"
    stubs.mkdir()
    (stubs / "systemctl").write_text(SYSTEMCTL)
    (stubs / "systemctl").chmod(0o755)
    (root / "tmp").mkdir(parents=True)
    node = Node(
        t.lab.node_ns(0),
        root,
        {
            "PATH": f"{stubs}:{NODE_PATH}",
            "HOME": str(root / "root"),
            "TMPDIR": str(root / "tmp"),
            "LANG": "C.UTF-8",
            "MESHCTL_PREFIX": str(root / "opt" / "meshctl"),  # the install script's own knob
            "CURL_CA_BUNDLE": str(art.ca_file),  # the artifact bucket's CA (a real one is in ca-certificates)
            "PIP_CONFIG_FILE": os.devnull,  # a fresh node has no pip configuration
            "SYSTEMCTL_LOG": str(t.tmp / "systemctl.log"),
        },
    )
    for command in doc.get("bootcmd", []):
        r = node.run(command)
        assert r.returncode == 0, f"bootcmd {command}: {r.stdout}{r.stderr}"
    node.write_files(doc["write_files"])
    for command in doc["runcmd"]:
        r = node.run(command)
        assert r.returncode == 0, f"runcmd {command}: {r.stdout}{r.stderr}"
        if command[0] == ADDRESS_CLAIMER:  # AWS staticAddresses: this lab's metadata service has no role
            assert "keeping the launch-time public IPv4" in r.stderr, r.stderr
    assert doc["runcmd"][0][0] == ADDRESS_CLAIMER, "the Elastic IP claim runs before the agent is installed"
    installed_at = time.monotonic() - started
    ns_ip = t.lab.node_ip(0)
    assert sorted(path for ip, path in art.requests if ip == ns_ip) == sorted(
        f"/agent/0.1.0/{p.name}" for p in (wheel_path, wheelhouse_path)
    ), "the node fetched exactly the wheel and the wheelhouse, over https from the bucket"
    assert (t.tmp / "systemctl.log").read_text().splitlines() == [
        "systemctl daemon-reload",
        "systemctl enable --now meshctl-agent.service",
    ]
    pip = node.path("/opt/meshctl/bin/pip")
    freeze = subprocess.run([pip, "list", "--format=freeze"], capture_output=True, text=True, env=node.env).stdout
    packages = {line.split("==")[0].lower() for line in freeze.splitlines()}
    assert "meshctl" in packages and not packages & SERVER_ONLY, packages

    # 4. start the agent as the unit would: its ExecStart, its StateDirectory
    unit_file = next(f["path"] for f in doc["write_files"] if f["path"].endswith("/meshctl-agent.service"))
    service = service_section(Path(node.path(unit_file)).read_text())
    (exec_start,) = service["ExecStart"]
    argv = [node.path(a) for a in shlex.split(exec_start)]
    config = yaml.safe_load(Path(node.path(argv[argv.index("--config") + 1])).read_text())
    (state_name,) = service["StateDirectory"]
    assert config["state_dir"] == f"/var/lib/{state_name}", "the agent's state is where systemd makes it"
    state_dir = Path(node.path(config["state_dir"]))
    state_dir.mkdir(parents=True, mode=int(service["StateDirectoryMode"][0], 8))
    agent_env = {
        "PATH": NODE_PATH,
        "LANG": "C.UTF-8",
        "MESH_STATE_DIR": str(state_dir),
        "MESH_INTERFACE": f"{t.lab.prefix}w0",
    }
    t.start_agent(["ip", "netns", "exec", node.ns, *argv], agent_env, "node0-agent.log")
    peer_argv = t.lab.agent_argv(
        1, t.ctl.url, PEER_REGION, str(t.tmp / "node1"), window="1", endpoint=f"{t.lab.node_ip(1)}:51820"
    )
    t.start_agent(peer_argv, None, "node1-agent.log")

    # the node joins by attestation, gets its peer on its WireGuard interface, and reports
    joined = t.ctl.wait_for(lambda: len(t.nodes()) == 2 and t.nodes(), timeout=40, what="both nodes joined")
    me, peer = joined[REGION], joined[PEER_REGION]
    assert me["endpoint"] == f"{ns_ip}:51820", "endpoint: auto came from the metadata service"
    assert t.imds.tokens and t.imds.violations == [], t.imds.violations  # IMDSv2, as the launch template asks
    with t.ctl.client() as c:
        events = c.get("/v1/events", params={"limit": 1000}).json()
    assert [e for e in events if e["kind"] == "join_refused"] == []

    def wg_peers() -> list[str]:
        out = sh("wg", "show", f"{t.lab.prefix}w0", "peers", ns=node.ns, check=False).stdout
        return out.split()

    t.ctl.wait_for(lambda: peer["public_key"] in wg_peers(), timeout=30, what="the peer on the booted node's wg")
    reporting = t.ctl.wait_for(
        lambda: (n := t.nodes()[REGION])["reports_accepted"] > 0 and n, timeout=40, what="the booted node's reports"
    )
    assert reporting["up"], reporting
    print(f"boot test: installed in {installed_at:.1f} s, joined and reporting at {time.monotonic() - started:.1f} s")
