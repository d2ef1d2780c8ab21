"""What the real agent costs on a node of the issue-18 fleet: CPU, memory and probe traffic.

Issue 18: the agent on a node of that fleet (150 regions, ~300 targets, and as many nodes probing
it) under 5% of one core and under 60 MiB, its probe traffic stated per node; measured in a
namespace with the real agent, not the simulator. How:

- a real controller (`meshctl serve`, SQLite, the relayed data plane off) on a host bridge;
- --regions regions of the Skyplane table (`../shared/data`) and --targets-per-region (k) synthetic
  nodes in each, registered and joined through the API as `bench.bench_scale` does (its
  `meshctl.lab.simulate.Simulation.join`);
- the real agent (`python -m probes run`, started as `meshctl lab` starts one) in namespace A: it
  joins its region with a join-token file, brings up wireguard-go, probes k nodes of every other
  region by STAMP and reports every --window seconds;
- the synthetic nodes have no WireGuard: their probe and overlay addresses live in namespace F,
  reached from A by /32 routes over a veth (more specific than the overlay routes on the agent's
  WireGuard interface). A fleet process in F (this module with --fleet) reflects the agent's probes
  on every one of those addresses (`probes.stamp.reflect`, so the agent takes the replies), and
  each synthetic node of another region probes the agent: as much as the agent probes it (each
  probe it reflects is answered by one of its own within a second: in a fleet of such agents a
  node is probed as much as it probes, whatever rate, budget or schedule the agent has), or
  --rate a second each when given (the agent then gets --probe-rate too);
- once the agent's first report is accepted and --warmup has passed, over --seconds: the agent's
  CPU (utime and stime from /proc/PID/stat; its children and wireguard-go apart), VmRSS and
  VmHWM, packets and bytes in and out of A's veth to F (all of its probe traffic: probes, replies
  to them, probes from others and its reflections), its own counters (/metrics), UDP
  receive-buffer drops in A, reports accepted, and the fresh links the controller made of them.

The agent, the fleet and this process run under SCHED_RR priority 1 (--sched; the controller too
until the fleet has joined, then at nice -10): on a shared 2-core machine a time-shared process
can wait for a CPU most of the time (a nice-0 busy loop got 3% of a core at load 12 here, one at
nice -10 18%), and a starved agent sends and reflects less, so its CPU reads low. The time its
event loop waited for a CPU is printed; a run where it did not keep up says so. What scheduling
cannot give back is a warm cache: on a loaded machine every wake-up starts cold, so compare
figures taken on different days by their ratios (--before), not as they are.

Left out: the probe traffic does not cross WireGuard here (the synthetic peers have no tunnels), so
wireguard-go's figure is an interface with R x k peers and no traffic, not the encryption a node
does (the traffic through WireGuard is estimated from the packet counts: 60 bytes of WireGuard and
outer headers per packet, the inner packet padded to 16); and the peer list holds R x k peers
where a node of the 150 x 20 fleet holds ~3,000 (it probes the same ~300 either way).

    sudo .venv/bin/python -m bench.bench_agent [--regions 150] [--targets-per-region 2] [--rate R]
        [--seconds 30] [--warmup 15] [--window 5] [--before DIR] [--sched rr|nice|none] [-o json]

`--before DIR` first runs the same measurement with the agent of another tree (an older checkout
in DIR, started with cwd and PYTHONPATH there; the controller and the fleet stay this tree's),
then this tree's, and prints both side by side with the ratios before/after. The first line is the
machine's speed (a 10M-step Python loop: CPU and wall seconds, and the load average), so figures
from different days can be compared. With `-o json` the last line is one JSON object. Needs root
and wireguard-go; about 70 s (2 minutes with --before); every namespace, link and process it made
is removed at the end, also after Ctrl-C or a failure (the temporary directory with the logs is
then kept).

Some 940 lines, one module because its parts only make sense together: the two namespaces and
their routes, the fleet process (its reflector and its probers), the agent's start and stop, and
the readings with their side-by-side table; the joins and the lab's namespaces are reused.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import heapq
import json
import os
import random
import resource
import secrets
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from meshctl.client import AsyncClient, Client
from meshctl.lab.lab import LabError, log_tail, wait_for
from meshctl.lab.netns import Lab, leftovers, sh, write_join_token
from meshctl.lab.simulate import Controller, SimConfig, Simulation, free_port, proc_cpu_seconds, proc_mib
from probes.config import AgentConfig
from probes.stamp import MalformedPacket, SenderPacket, parse_reflector, reflect, to_ntp

REPO = Path(__file__).resolve().parents[1]
NET = "10.230"  # a /16 of its own: the tests use 10.210-10.219, meshlab 10.213
A_SIDE, F_SIDE = f"{NET}.200.1", f"{NET}.200.2"  # the veth between the agent's namespace and the fleet's, /30
METRICS_PORT = 9464
EARLY = "mesh_agent_early_windows_total"
AGENT_DEFAULTS: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(AgentConfig)}
WG_OVERHEAD = 60  # bytes a WireGuard data packet adds: outer IPv4 20, UDP 8, header 16, tag 16
ETHERNET = 14  # a veth counts frames: the IP packet and its Ethernet header


class BenchError(RuntimeError):
    """The bench cannot go on; the message says why."""


def say(line: str) -> None:
    print(line, flush=True)


STARTED = time.monotonic()


def step(line: str) -> None:
    """A progress line, with the seconds since the start."""
    say(f"[{time.monotonic() - STARTED:5.1f} s] {line}")


SCHED = ("rr", "nice", "none")  # see --sched
NICE = -10


def scheduled(argv: list[str], how: str) -> list[str]:
    """`argv` under SCHED_RR priority 1 when `how` is rr (its threads and children inherit it); else as
    this process is (at nice -10 after `prioritise`)."""
    return ["chrt", "--rr", "1", *argv] if how == "rr" else argv


def prioritise(how: str) -> None:
    """This process (and what it starts from now on): SCHED_RR 1 for rr, nice -10 for nice."""
    if how == "rr":
        os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(1))
    elif how == "nice":
        os.setpriority(os.PRIO_PROCESS, 0, NICE)


def demote(pid: int) -> None:
    """Every thread of a process back to time sharing, at nice -10 (from SCHED_RR)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            os.sched_setscheduler(int(task.name), os.SCHED_OTHER, os.sched_param(0))
            os.setpriority(os.PRIO_PROCESS, int(task.name), NICE)


def speed() -> dict[str, float]:
    """The machine today: a 10M-step Python loop, its CPU seconds (the core's speed) and wall seconds
    (more when other processes had the cores), and the load average."""
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(10_000_000):
        pass
    return {
        "loop_10m_s": round(time.process_time() - c0, 3),
        "loop_10m_wall_s": round(time.perf_counter() - t0, 3),
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }


# --- the fleet process (in namespace F) ------------------------------------------------------


MIRROR_SPREAD_S = 1.0  # a mirrored probe leaves within this long after the agent's probe it answers


class FleetLoop:
    """The synthetic nodes, one thread (run in namespace F by this module with --fleet SPEC).

    A STAMP reflector on every address in spec["reflect"], and a prober on every address in
    spec["probers"] that sends the agent (spec["agent"]) test packets: spec["rate"] a second each,
    their phases spread evenly; or, with no rate, as many as the agent sends it (each probe of the
    agent's that it reflects is answered by one of its own, at a random moment within
    MIRROR_SPREAD_S): in a fleet where every node runs the same agent, a node is probed as much as
    it probes, whatever rates, budget or schedule that agent has. Each line on stdin is answered
    with one JSON line of counters; the end of stdin ends it.
    """

    def __init__(self, spec: dict[str, Any]) -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (resource.getrlimit(resource.RLIMIT_NOFILE)[1],) * 2)
        self.port, self.agent = int(spec["port"]), str(spec["agent"])
        self.rate: float | None = spec["rate"]
        self.sel = selectors.DefaultSelector()
        self.probers = {ip: self._udp(ip, 0) for ip in spec["probers"]}
        for sock in self.probers.values():
            self.sel.register(sock, selectors.EVENT_READ, ("reply", sock, None))
        for ip in spec["reflect"]:
            sock = self._udp(ip, self.port)
            self.sel.register(sock, selectors.EVENT_READ, ("reflect", sock, self.probers.get(ip)))
        self.sel.register(sys.stdin.fileno(), selectors.EVENT_READ, ("control", None, None))
        self.n = {"sent": 0, "replies": 0, "reflected": 0, "malformed": 0}
        self.owed: list[tuple[float, int, socket.socket]] = []  # mirrored probes: (due, tie, prober)
        self.late_max = 0.0  # how late a probe left (since the last reading): did the fleet keep up?

    @staticmethod
    def _udp(ip: str, port: int) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        sock.bind((ip, port))
        return sock

    def send(self, prober: socket.socket, due: float, now: float) -> None:
        self.late_max = max(self.late_max, now - due)
        pkt = SenderPacket(seq=self.n["sent"] & 0xFFFFFFFF, timestamp=to_ntp(time.time())).encode()
        with contextlib.suppress(BlockingIOError, OSError):
            prober.sendto(pkt, (self.agent, self.port))
        self.n["sent"] += 1

    def run(self) -> None:
        probers = list(self.probers.values())
        step = 1.0 / (self.rate * len(probers)) if self.rate and probers else None
        fixed = 0  # probes sent on the fixed schedule
        say("ready")
        t0 = time.monotonic()
        while True:
            now = time.monotonic()
            while step is not None and t0 + fixed * step <= now:
                self.send(probers[fixed % len(probers)], t0 + fixed * step, now)
                fixed += 1
            while self.owed and self.owed[0][0] <= now:
                due, _, prober = heapq.heappop(self.owed)
                self.send(prober, due, now)
            dues = ([t0 + fixed * step] if step is not None else []) + ([self.owed[0][0]] if self.owed else [])
            for key, _ in self.sel.select(max(0.001, min(dues, default=now + 1.0) - time.monotonic())):
                kind, sock, mirror = key.data
                if kind == "control":
                    if not self.control():
                        return
                else:
                    self.receive(sock, kind == "reflect", mirror)

    def control(self) -> bool:
        data = os.read(sys.stdin.fileno(), 4096)
        for _ in range(data.count(b"\n")):
            say(json.dumps({**self.n, "cpu_s": time.process_time(), "late_ms_max": round(self.late_max * 1000, 1)}))
            self.late_max = 0.0
        return bool(data)

    def receive(self, sock: socket.socket, reflector: bool, mirror: socket.socket | None) -> None:
        while True:
            try:
                data, addr = sock.recvfrom(2048)
            except (BlockingIOError, InterruptedError):
                return
            if not reflector:  # a reply to one of our probes
                try:
                    parse_reflector(data)
                    self.n["replies"] += 1
                except MalformedPacket:
                    self.n["malformed"] += 1
                continue
            received = time.time()
            reply = reflect(data, received, time.time(), self.n["reflected"])
            if reply is None:
                self.n["malformed"] += 1
                continue
            with contextlib.suppress(BlockingIOError, OSError):
                sock.sendto(reply, addr)
                self.n["reflected"] += 1
            if self.rate is None and mirror is not None:
                due = time.monotonic() + random.uniform(0.0, MIRROR_SPREAD_S)
                heapq.heappush(self.owed, (due, self.n["reflected"], mirror))


class FleetProcess:
    """The fleet process in namespace F, and its counters on request."""

    def __init__(self, ns: str, spec: dict[str, Any], tmp: Path, label: str, sched: str) -> None:
        path = tmp / f"fleet-{label}.json"
        path.write_text(json.dumps(spec))
        self.log = tmp / f"fleet-{label}.log"
        argv = ["ip", "netns", "exec", ns, sys.executable, "-m", "bench.bench_agent", "--fleet", str(path)]
        with open(self.log, "ab") as err:
            self.proc = subprocess.Popen(
                scheduled(argv, sched), cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True
            )
        if self._line() != "ready":
            raise BenchError(f"the fleet did not start:\n{log_tail(self.log)}")

    def _line(self) -> str:
        assert self.proc.stdout is not None
        return self.proc.stdout.readline().strip()

    def counters(self) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        line = self._line()
        if not line:
            raise BenchError(f"the fleet exited:\n{log_tail(self.log)}")
        data: dict[str, Any] = json.loads(line)
        return data

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# --- the mesh: controller, synthetic nodes, namespaces ---------------------------------------


def start_controller(lab: Lab, tmp: Path) -> Controller:
    """`meshctl serve` on the host bridge (the agent's namespace reaches it there), SQLite, data plane off.

    (`meshctl.lab.simulate.start_controller` listens on 127.0.0.1, which no namespace reaches.)"""
    port, token = free_port(), secrets.token_urlsafe(24)
    url = f"sqlite:///{tmp / 'controller.db'}"
    log = tmp / "controller.log"
    argv = [sys.executable, "-m", "meshctl", "serve", "--host", lab.host_ip, "--port", str(port)]
    argv += ["--database-url", url, "--replica-id", "bench-agent", "--log-level", "warning"]
    env = {**os.environ, "MESH_ADMIN_TOKEN": token, "MESH_RELAY_DATA_PLANE": "false"}
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=env)
    ctl = Controller(proc, f"http://{lab.host_ip}:{port}", token, url, log)

    def healthy() -> bool:
        if proc.poll() is not None:
            raise LabError(f"the controller exited ({proc.returncode}):\n{log_tail(log)}")
        return httpx.get(ctl.url + "/healthz", timeout=1).status_code == 200

    try:
        wait_for(healthy, 120, "the controller's /healthz")
    except BaseException:
        ctl.stop()
        raise
    return ctl


@dataclass(frozen=True)
class FakeNode:
    node_id: str
    region: str
    probe_ip: str
    overlay_ip: str


@dataclass
class Fleet:
    """The synthetic nodes as the controller has them, and where the agent joins."""

    region: str  # the agent's
    nodes: list[FakeNode]
    overlay_cidr: str
    probe_cidr: str | None
    join_s: float

    @property
    def probers(self) -> list[FakeNode]:
        """The nodes that probe the agent: those of other regions (no node probes its own region)."""
        return [n for n in self.nodes if n.region != self.region]


def join_fleet(ctl: Controller, c: Client, regions: int, k: int) -> Fleet:
    """Register the regions and join k synthetic nodes in each, as bench_scale does; their addresses."""
    sim = Simulation(SimConfig(regions=regions, nodes_per_region=k), say=step)
    sim.host, port = ctl.url.removeprefix("http://").split(":")
    sim.port = int(port)

    async def join() -> float:
        async with AsyncClient(ctl.url, ctl.token, timeout=60.0) as ac:
            return await sim.join(ac)

    join_s = asyncio.run(join())
    # every node's probe address: a peer list holds every node but the one that asks
    first, second = (c.peers(n.node_id) for n in sim.nodes[:2])
    entries = {p.node_id: p for p in second.peers} | {p.node_id: p for p in first.peers}
    nodes = [FakeNode(p.node_id, p.region, p.probe_ip or p.overlay_ip, p.overlay_ip) for p in entries.values()]
    if len(nodes) != len(sim.nodes):
        raise BenchError(f"the peer lists name {len(nodes)} nodes, {len(sim.nodes)} joined")
    return Fleet(sim.regions[0], nodes, first.overlay_cidr, first.probe_cidr, join_s)


@dataclass
class Net:
    """Namespace A (the agent: Lab node 0, on the host bridge) and F (the fleet), a veth between them."""

    lab: Lab
    a_ns: str = ""
    f_ns: str = ""
    a_if: str = ""
    f_if: str = ""

    def up(self) -> None:
        lab = self.lab
        lab.up(1)
        self.a_ns, self.f_ns = lab.node_ns(0), f"{lab.prefix}f"
        self.a_if, self.f_if = f"{lab.prefix}x", f"{lab.prefix}y"
        sh("ip", "netns", "add", self.f_ns)
        lab.namespaces.append(self.f_ns)
        sh("ip", "link", "add", self.a_if, "type", "veth", "peer", "name", self.f_if)
        sh("ip", "link", "set", self.a_if, "netns", self.a_ns)
        sh("ip", "link", "set", self.f_if, "netns", self.f_ns)
        sh("ip", "addr", "add", f"{A_SIDE}/30", "dev", self.a_if, ns=self.a_ns)
        sh("ip", "addr", "add", f"{F_SIDE}/30", "dev", self.f_if, ns=self.f_ns)
        for ns, ifname in ((self.a_ns, self.a_if), (self.f_ns, self.f_if)):
            sh("ip", "link", "set", "lo", "up", ns=ns)
            sh("ip", "link", "set", ifname, "up", ns=ns)
            # replies come back on the veth to addresses routed elsewhere by the overlay's prefixes
            for conf in ("all", "default", "lo", ifname):
                sh("sysctl", "-qw", f"net.ipv4.conf.{conf}.rp_filter=0", ns=ns)

    def route(self, fleet: Fleet, tmp: Path) -> None:
        """Each synthetic node's addresses on F's loopback, /32 routes to them in A; the overlay back."""
        a_lines, f_lines = [], []
        for n in fleet.nodes:
            for ip in dict.fromkeys((n.probe_ip, n.overlay_ip)):
                a_lines.append(f"route replace {ip}/32 via {F_SIDE} dev {self.a_if}")
                f_lines.append(f"address add {ip}/32 dev lo")
        for cidr in filter(None, (fleet.overlay_cidr, fleet.probe_cidr)):
            f_lines.append(f"route replace {cidr} via {A_SIDE} dev {self.f_if}")
        for ns, lines in ((self.a_ns, a_lines), (self.f_ns, f_lines)):
            batch = tmp / f"routes-{ns}.txt"
            batch.write_text("\n".join(lines) + "\n")
            sh("ip", "-batch", str(batch), ns=ns)

    def veth_counters(self) -> dict[str, int]:
        """Frames and bytes out of (tx) and into (rx) A's veth to the fleet."""
        stats = json.loads(sh("ip", "-j", "-s", "link", "show", "dev", self.a_if, ns=self.a_ns).stdout)[0]["stats64"]
        return {f"{d}_{k}": int(stats[d][k]) for d in ("tx", "rx") for k in ("bytes", "packets")}

    def udp_counters(self) -> dict[str, int]:
        """/proc/net/snmp's Udp line in A (InDatagrams, RcvbufErrors, ...)."""
        rows = [line.split() for line in sh("cat", "/proc/net/snmp", ns=self.a_ns).stdout.splitlines()]
        head, values = [r for r in rows if r and r[0] == "Udp:"][:2]
        return {k: int(v) for k, v in zip(head[1:], values[1:], strict=True)}


# --- one agent, measured ---------------------------------------------------------------------


def proc_times(pid: int) -> tuple[float, float, float]:
    """(utime, stime, cutime + cstime) of a process, seconds: its own CPU in Python and the
    interpreter (user) and in system calls (system), and its reaped children's."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    hz = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / hz, int(fields[12]) / hz, (int(fields[13]) + int(fields[14])) / hz


def wakeups(pid: int) -> int:
    """Voluntary context switches of the process's main thread (the agent's event loop): its wake-ups."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("voluntary_ctxt_switches:"):
            return int(line.split()[1])
    return 0


def runqueue_wait_s(pid: int) -> float:
    """Seconds the process's main thread (the agent's event loop) has waited, runnable, for a CPU."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9


def parse_metrics(text: str) -> dict[str, float]:
    """The unlabelled samples of a Prometheus text page."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and "{" not in line:
            name, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                out[name] = float(value)
    return out


@dataclass
class Snapshot:
    """The counters at one moment; `at` says when each source was read (monotonic): proc, metrics,
    veth, udp, fleet (a rate is taken over its own source's interval, as the reads take a while)."""

    at: dict[str, float]
    user: float
    system: float
    children: float
    wakeups: int
    waited: float
    wg: float
    accepted: int
    veth: dict[str, int]
    udp: dict[str, int]
    metrics: dict[str, float]
    fleet: dict[str, Any]
    log_lines: int


@dataclass
class AgentRun:
    """One tree's agent in namespace A, from its join to its end."""

    label: str
    tree: Path
    net: Net
    ctl: Controller
    c: Client
    fleet: Fleet
    args: argparse.Namespace
    tmp: Path
    proc: subprocess.Popen[bytes] | None = None
    fleet_proc: FleetProcess | None = None
    node_id: str = ""
    peers: int = 0
    targets: int = 0
    rss_samples: list[float] = field(default_factory=list)

    @property
    def log(self) -> Path:
        return self.tmp / f"agent-{self.label}.log"

    def start(self) -> None:
        state = self.tmp / f"state-{self.label}"
        token = self.c.create_join_token(self.fleet.region, ttl_s=600, uses=1).token
        assert token is not None
        argv = self.net.lab.agent_argv(
            0,
            self.ctl.url,
            self.fleet.region,
            str(state),
            window=f"{self.args.window:g}",
            probe_rate=None if self.args.rate is None else f"{self.args.rate:g}",
            targets_per_region=str(self.args.targets_per_region),
            join_token_file=write_join_token(state, token),
            metrics_listen=f"{self.net.lab.node_ip(0)}:{METRICS_PORT}",  # read from the host, over the bridge
        )
        env = dict(os.environ)
        if self.tree != REPO:
            env["PYTHONPATH"] = str(self.tree)
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                scheduled(argv, self.args.sched), cwd=self.tree, env=env, stdout=out, stderr=subprocess.STDOUT
            )
        credential = state / "credential.json"
        wait_for(lambda: self._alive() and credential.exists(), 60, f"the {self.label} agent's join")
        self.node_id = json.loads(credential.read_text())["node_id"]
        peers = self.c.peers(self.node_id)
        if not peers.probe_ip:
            raise BenchError("the agent's peer list has no probe address (probe_cidr off?)")
        self.peers = len(peers.peers)
        self.targets = len({(p.region, p.node_id) for p in peers.peers if p.region != self.fleet.region})
        step(
            f"[{self.label}] joined as {self.node_id} (probe address {peers.probe_ip}): {self.peers} peers,"
            f" {self.targets} of them targets"
        )
        spec = {
            "agent": peers.probe_ip,
            "port": AGENT_DEFAULTS["stamp_port"],
            "rate": self.args.rate,
            "reflect": [n.probe_ip for n in self.fleet.nodes],
            "probers": [n.probe_ip for n in self.fleet.probers],
        }
        self.fleet_proc = FleetProcess(self.net.f_ns, spec, self.tmp, self.label, self.args.sched)
        timeout = 60 + 3 * self.args.window
        wait_for(
            lambda: self._alive() and self.c.node(self.node_id).reports_accepted >= 1,
            timeout,
            f"the {self.label} agent's first accepted report",
        )

    def _alive(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            code = self.proc.returncode if self.proc else None
            raise LabError(f"the {self.label} agent exited ({code}):\n{log_tail(self.log, 25)}")
        return True

    def wg_pid(self) -> int:
        pids = self.net.lab.wireguard_pids()
        if len(pids) != 1:
            raise BenchError(f"expected one wireguard-go of the agent, found {pids}")
        return pids[0]

    def snapshot(self) -> Snapshot:
        assert self.proc is not None and self.fleet_proc is not None
        self._alive()
        pid, wg = self.proc.pid, self.wg_pid()
        at = {"proc": time.monotonic()}
        user, system, children = proc_times(pid)
        woke, waited, wg_cpu = wakeups(pid), runqueue_wait_s(pid), proc_cpu_seconds(wg)
        at["metrics"] = time.monotonic()
        metrics = httpx.get(f"http://{self.net.lab.node_ip(0)}:{METRICS_PORT}/metrics", timeout=5).text
        at["veth"] = time.monotonic()
        veth = self.net.veth_counters()
        at["udp"] = time.monotonic()
        udp = self.net.udp_counters()
        at["fleet"] = time.monotonic()
        fleet = self.fleet_proc.counters()
        return Snapshot(
            at=at,
            user=user,
            system=system,
            children=children,
            wakeups=woke,
            waited=waited,
            wg=wg_cpu,
            accepted=self.c.node(self.node_id).reports_accepted,
            veth=veth,
            udp=udp,
            metrics=parse_metrics(metrics),
            fleet=fleet,
            log_lines=len(self.log.read_bytes().splitlines()),
        )

    def measure(self) -> dict[str, Any]:
        assert self.proc is not None and self.fleet_proc is not None
        step(f"[{self.label}] first report accepted; warming up {self.args.warmup:g} s")
        self._pause(self.args.warmup)
        step(f"[{self.label}] measuring {self.args.seconds:g} s")
        s0 = self.snapshot()
        fleet_cpu0 = proc_cpu_seconds(self.fleet_proc.proc.pid)
        self._pause(self.args.seconds, sample=True)
        s1 = self.snapshot()
        fleet_cpu1 = proc_cpu_seconds(self.fleet_proc.proc.pid)
        links = {x.dst for x in self.c.links().links if x.src == self.fleet.region and x.fresh}
        new_log = self.log.read_bytes().splitlines()[s0.log_lines : s1.log_lines]
        return self.figures(s0, s1, fleet_cpu1 - fleet_cpu0, len(links), new_log)

    def _pause(self, seconds: float, sample: bool = False) -> None:
        assert self.proc is not None
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            time.sleep(min(1.0, left))
            self._alive()
            if sample:
                self.rss_samples.append(proc_mib(self.proc.pid))

    def figures(self, s0: Snapshot, s1: Snapshot, fleet_cpu: float, links: int, new_log: list[bytes]) -> dict[str, Any]:
        assert self.proc is not None
        span = {source: s1.at[source] - s0.at[source] for source in s0.at}
        dt = span["proc"]

        def rate(source: str, a: float, b: float) -> float:
            return round((b - a) / span[source], 1)

        def metric(name: str) -> float:
            return rate("metrics", s0.metrics.get(name, 0.0), s1.metrics.get(name, 0.0))

        v0, v1, veth_s = s0.veth, s1.veth, span["veth"]  # a second, on A's veth to the fleet:
        pkts_out = (v1["tx_packets"] - v0["tx_packets"]) / veth_s
        pkts_in = (v1["rx_packets"] - v0["rx_packets"]) / veth_s
        ip_out = (v1["tx_bytes"] - v0["tx_bytes"]) / veth_s - ETHERNET * pkts_out
        ip_in = (v1["rx_bytes"] - v0["rx_bytes"]) / veth_s - ETHERNET * pkts_in

        def through_wg(ip_bytes: float, packets: float) -> float:
            """Bytes a second on the wire had these packets crossed WireGuard (inner padded to 16)."""
            return (-(-ip_bytes / packets // 16) * 16 + WG_OVERHEAD) * packets if packets else 0.0

        sent, reflected = metric("mesh_agent_probes_sent_total"), metric("mesh_agent_reflected_total")
        offered = rate("fleet", s0.fleet["sent"], s1.fleet["sent"])
        # the fleet sends what --rate says, or as much as the agent sends (mirrored)
        fleet_target = sent if self.args.rate is None else self.args.rate * len(self.fleet.probers)
        waited = 100 * (s1.waited - s0.waited) / dt
        drops = s1.udp["RcvbufErrors"] - s0.udp["RcvbufErrors"]
        udp_in = s1.udp["InDatagrams"] - s0.udp["InDatagrams"]  # in the time
        starved = waited > 10 or drops > 0.001 * udp_in
        kept_up = not starved and reflected >= 0.9 * offered and offered >= 0.9 * fleet_target
        warnings = [line.decode(errors="replace") for line in new_log if b" WARNING " in line or b" ERROR " in line]
        return {
            "label": self.label,
            "tree": str(self.tree),
            "seconds": round(dt, 1),
            "peers": self.peers,
            "targets": self.targets,
            "probers": len(self.fleet.probers),
            "rate": "mirrored" if self.args.rate is None else self.args.rate,
            "cpu_percent": round(100 * (s1.user + s1.system - s0.user - s0.system) / dt, 2),
            "cpu_user_percent": round(100 * (s1.user - s0.user) / dt, 2),
            "cpu_system_percent": round(100 * (s1.system - s0.system) / dt, 2),
            "wakeups_per_s": rate("proc", s0.wakeups, s1.wakeups),
            "waited_percent": round(waited, 1),
            "children_cpu_percent": round(100 * (s1.children - s0.children) / dt, 2),
            "wireguard_go_cpu_percent": round(100 * (s1.wg - s0.wg) / dt, 2),
            "rss_mib": round(proc_mib(self.proc.pid), 1),
            "rss_max_mib": round(max(self.rss_samples, default=float("nan")), 1),
            "rss_peak_mib": round(proc_mib(self.proc.pid, "VmHWM"), 1),
            "kept_up": kept_up,
            "probes_per_s_sent": sent,
            "probes_per_s_per_target": round(sent / max(1, self.targets), 2),
            "replies_per_s": metric("mesh_agent_probe_replies_total"),
            "reflections_per_s": reflected,
            "reflector_dropped_per_s": metric("mesh_agent_reflector_dropped_total"),
            "early_windows": round(s1.metrics.get(EARLY, 0.0) - s0.metrics.get(EARLY, 0.0)),
            "packets_per_s_out": round(pkts_out, 1),
            "packets_per_s_in": round(pkts_in, 1),
            "bytes_per_s_out": round(ip_out),
            "bytes_per_s_in": round(ip_in),
            "kbit_per_s_out": round(8 * ip_out / 1000, 1),
            "kbit_per_s_in": round(8 * ip_in / 1000, 1),
            "kbit_per_s_out_per_target": round(8 * ip_out / 1000 / max(1, self.targets), 2),
            "wg_kbit_per_s_out": round(8 * through_wg(ip_out, pkts_out) / 1000, 1),
            "wg_kbit_per_s_in": round(8 * through_wg(ip_in, pkts_in) / 1000, 1),
            "udp_in_per_s": round(udp_in / span["udp"], 1),
            "udp_rcvbuf_errors": drops,
            "reports_accepted": s1.accepted - s0.accepted,
            "windows_in_seconds": round(dt / self.args.window, 1),
            "links_fresh": links,
            "other_regions": self.args.regions - 1,
            "fleet_probes_per_s": offered,
            "fleet_target_per_s": round(fleet_target, 1),
            "fleet_replies_per_s": rate("fleet", s0.fleet["replies"], s1.fleet["replies"]),
            "fleet_reflected_per_s": rate("fleet", s0.fleet["reflected"], s1.fleet["reflected"]),
            "fleet_malformed": s1.fleet["malformed"] - s0.fleet["malformed"],
            "fleet_cpu_percent": round(100 * fleet_cpu / dt, 1),
            "fleet_late_ms_max": s1.fleet["late_ms_max"],
            "agent_log_lines": len(new_log),
            "agent_warnings": warnings[-5:],
        }

    def stop(self) -> None:
        """The agent, its fleet and its wireguard-go gone, and its node removed from the controller."""
        if self.fleet_proc is not None:
            self.fleet_proc.stop()
            self.fleet_proc = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            self.proc = None
        for pid in self.net.lab.wireguard_pids():  # it outlives the agent that started it
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGTERM)
        wg = f"{self.net.lab.prefix}w0"
        wait_for(lambda: sh("ip", "link", "show", wg, ns=self.net.a_ns, check=False).returncode != 0, 10, f"{wg} gone")
        if self.node_id:
            self.c.remove_node(self.node_id)
            self.node_id = ""


# --- the run ---------------------------------------------------------------------------------


def bench(args: argparse.Namespace, before: Path | None) -> dict[str, Any]:
    """Set up, measure each tree's agent in turn (before, then this tree), take everything down."""
    tmp = Path(tempfile.mkdtemp(prefix="bench-agent-"))
    lab = Lab(prefix=f"ba{os.getpid() % 100000}", net=NET)
    net = Net(lab)
    ctl: Controller | None = None
    runs: list[AgentRun] = []
    done = False
    try:
        net.up()
        # set up at the agent's priority (a busy machine took 30 s to start a controller); then the
        # controller is time-shared (it only has to keep up), and this process keeps it (it sleeps
        # but for its readings, and a reading delayed after its time stamp would skew the rates)
        prioritise(args.sched)
        ctl = start_controller(lab, tmp)
        step(f"controller pid {ctl.pid} at {ctl.url}; namespaces {net.a_ns} (agent), {net.f_ns} (fleet); logs {tmp}")
        with Client(ctl.url, ctl.token, timeout=60.0) as c:
            fleet = join_fleet(ctl, c, args.regions, args.targets_per_region)
            step(
                f"fleet: {args.regions} regions x {args.targets_per_region} synthetic nodes = {len(fleet.nodes)}"
                f" joined in {fleet.join_s:.1f} s; the agent joins {fleet.region};"
                f" {len(fleet.probers)} of them probe it, "
                + ("as much as it probes them (mirrored)" if args.rate is None else f"{args.rate:g}/s each")
            )
            net.route(fleet, tmp)
            if args.sched == "rr":
                demote(ctl.pid)
            trees = [("before", before)] if before else []
            results = {}
            for label, tree in [*trees, ("after", REPO)]:
                run = AgentRun(label, tree, net, ctl, c, fleet, args, tmp)
                runs.append(run)
                step(f"[{label}] starting the agent of {tree}")
                run.start()
                results[label] = run.measure()
                run.stop()
        done = True
        return {"join_s": round(fleet.join_s, 2), "region": fleet.region, **results}
    finally:
        for run in runs:
            if run.fleet_proc is not None:
                run.fleet_proc.stop()
        if ctl is not None:
            ctl.stop()
        lab.down([r.proc for r in runs if r.proc is not None])
        left = leftovers(lab.prefix)
        if left:
            say(f"warning: left behind: {left}")
        if done and not left:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            say(f"logs kept in {tmp}")


ROWS: tuple[tuple[str, str, str], ...] = (
    ("agent CPU, % of one core (target < 5)", "cpu_percent", "{:.2f}"),
    ("  user / system (system calls), % of a core", "cpu_user_percent", "{:.2f}"),
    ("  its event loop's wake-ups/s", "wakeups_per_s", "{:.0f}"),
    ("  its children (wg, ip), % of a core", "children_cpu_percent", "{:.2f}"),
    ("  its event loop waited for a CPU, % of the time", "waited_percent", "{:.1f}"),
    ("wireguard-go CPU, % of a core (no traffic here)", "wireguard_go_cpu_percent", "{:.2f}"),
    ("agent VmRSS at the end, MiB (target < 60)", "rss_mib", "{:.1f}"),
    ("  highest VmRSS sampled / VmHWM, MiB", "rss_max_mib", "{:.1f}"),
    ("  VmHWM (peak), MiB", "rss_peak_mib", "{:.1f}"),
    ("peers / targets / nodes probing it", "peers", "{}"),
    ("probes sent/s (its /metrics) / per target", "probes_per_s_sent", "{:.1f}"),
    ("replies to them received/s", "replies_per_s", "{:.1f}"),
    ("probes of others reflected/s", "reflections_per_s", "{:.1f}"),
    ("  reflector dropped/s", "reflector_dropped_per_s", "{:.1f}"),
    ("  UDP receive-buffer drops in A", "udp_rcvbuf_errors", "{}"),
    ("  early windows", "early_windows", "{}"),
    ("packets/s out / in (A's veth)", "packets_per_s_out", "{:.0f}"),
    ("probe traffic out, IP bytes/s", "bytes_per_s_out", "{}"),
    ("probe traffic in, IP bytes/s", "bytes_per_s_in", "{}"),
    ("  kbit/s out / in", "kbit_per_s_out", "{:.1f}"),
    ("  kbit/s out per target", "kbit_per_s_out_per_target", "{:.2f}"),
    ("  through WireGuard (estimated) kbit/s out / in", "wg_kbit_per_s_out", "{:.1f}"),
    ("reports accepted / windows in the time", "reports_accepted", "{}"),
    ("fresh links from its region / other regions", "links_fresh", "{}"),
    ("fleet: probes/s sent, replies/s got, reflected/s", "fleet_probes_per_s", "{:.1f}"),
    ("fleet: CPU % of a core, latest send (ms)", "fleet_cpu_percent", "{:.1f}"),
)
PAIRS = {
    "peers": ("targets", "probers"),
    "cpu_user_percent": ("cpu_system_percent",),
    "probes_per_s_sent": ("probes_per_s_per_target",),
    "packets_per_s_out": ("packets_per_s_in",),
    "kbit_per_s_out": ("kbit_per_s_in",),
    "wg_kbit_per_s_out": ("wg_kbit_per_s_in",),
    "reports_accepted": ("windows_in_seconds",),
    "links_fresh": ("other_regions",),
    "fleet_probes_per_s": ("fleet_replies_per_s", "fleet_reflected_per_s"),
    "fleet_cpu_percent": ("fleet_late_ms_max",),
    "rss_max_mib": ("rss_peak_mib",),
}


def table(result: dict[str, Any], labels: list[str]) -> list[str]:
    """The runs side by side, one figure (or a few, by /) per row."""
    heads = {"before": f"before ({result['before']['tree']})" if "before" in result else "", "after": "this tree"}
    out = [f"{'':52s}" + "".join(f"{heads[lb]:>28s}" for lb in labels)]
    for title, key, fmt in ROWS:
        if key == "rss_peak_mib":
            continue  # shown with rss_max_mib
        cells = []
        for lb in labels:
            r = result[lb]
            parts = [fmt.format(r[key])] + [str(r[k]) for k in PAIRS.get(key, ())]
            cells.append(" / ".join(parts))
        out.append(f"{title:52s}" + "".join(f"{cell:>28s}" for cell in cells))
    for lb in labels:
        r = result[lb]
        if not r["kept_up"]:
            out.append(
                f"[{lb}] NOT KEPT UP: its event loop waited for a CPU {r['waited_percent']}% of the time,"
                f" {r['udp_rcvbuf_errors']} datagrams dropped for a full receive buffer, it reflected"
                f" {r['reflections_per_s']}/s of the {r['fleet_probes_per_s']}/s the fleet sent (meant to send"
                f" {r['fleet_target_per_s']}/s): the machine was too busy, the CPU figure is a floor (--sched rr?)"
            )
        for line in r["agent_warnings"]:
            out.append(f"[{lb}] agent log: {line[-150:]}")
    return out


def ratios(result: dict[str, Any]) -> dict[str, float | None]:
    b, a = result["before"], result["after"]

    def ratio(key: str) -> float | None:
        return round(b[key] / a[key], 2) if a[key] else None

    return {"ratio_cpu": ratio("cpu_percent"), "ratio_rss": ratio("rss_mib"), "ratio_rss_peak": ratio("rss_peak_mib")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--regions", type=int, default=150, help="regions of the fleet (default 150)")
    ap.add_argument(
        "--targets-per-region", type=int, default=AGENT_DEFAULTS["targets_per_region"], help="k: synthetic nodes per"
        " region, and the nodes the agent probes in each other region (default: the agent's, %(default)s)"
    )  # fmt: skip
    ap.add_argument(
        "--rate", type=float, default=None, help="probes/s per target: the agent's --probe-rate, and what each"
        " synthetic node sends it (default: the agent's own settings, and the fleet sends it as many probes as it"
        " sends them, as in a fleet of such agents)"
    )  # fmt: skip
    ap.add_argument("--seconds", type=float, default=30.0, help="measured seconds (default 30)")
    ap.add_argument("--warmup", type=float, default=15.0, help="seconds after the first accepted report (15)")
    ap.add_argument(
        "--window", type=float, default=AGENT_DEFAULTS["window_s"], help="the agent's window, s (default 5)"
    )
    ap.add_argument("--before", type=Path, default=None, help="also measure the agent of this tree (an older checkout)")
    ap.add_argument(
        "--sched", choices=SCHED, default="rr", help="how the agent (with its wireguard-go) and the fleet run: rr,"
        " SCHED_RR priority 1 (default: on a shared machine a time-shared process waits for a CPU, and a starved"
        " agent does less work, so its CPU reads low); nice, at nice -10; none, as they are. With rr the"
        " controller is time-shared at nice -10 once the fleet has joined"
    )  # fmt: skip
    ap.add_argument("-o", "--output", choices=["text", "json"], default="text")
    ap.add_argument("--fleet", default=None, help=argparse.SUPPRESS)  # the fleet process itself (in namespace F)
    args = ap.parse_args()
    if args.fleet:
        with contextlib.suppress(KeyboardInterrupt, BrokenPipeError):
            FleetLoop(json.loads(Path(args.fleet).read_text())).run()
        return
    if os.geteuid() != 0:
        sys.exit(
            "bench_agent: needs root (network namespaces, wireguard-go): sudo .venv/bin/python -m bench.bench_agent"
        )
    missing = [tool for tool in ("ip", "wg", "wireguard-go", "chrt") if shutil.which(tool) is None]
    if missing:
        sys.exit(
            f"bench_agent: missing {', '.join(missing)}:"
            " apt-get install wireguard-go wireguard-tools iproute2 util-linux"
        )
    if args.regions < 2 or args.targets_per_region < 1:
        sys.exit("bench_agent: --regions at least 2, --targets-per-region at least 1")
    before = args.before.resolve() if args.before else None
    if before is not None and not (before / "probes" / "agent.py").exists():
        sys.exit(f"bench_agent: --before {before}: no probes/agent.py there (a checkout of this repository)")
    in_use = [line for line in sh("ip", "-o", "-4", "addr", "show").stdout.splitlines() if f" {NET}." in line]
    if in_use:
        sys.exit(f"bench_agent: {NET}.0.0/16 is in use on this host ({in_use[0].split()[1]}): another run?")
    signal.signal(signal.SIGTERM, _interrupted)
    machine = speed()
    say(
        f"machine: a 10M-step Python loop {machine['loop_10m_s']:.2f} s of CPU ({machine['loop_10m_wall_s']:.2f} s"
        f" wall, at nice 0); load average {machine['loadavg_1m']} (1 min); {os.cpu_count()} cores;"
        f" agent and fleet scheduled: {args.sched}"
    )
    try:
        result = bench(args, before)
    except KeyboardInterrupt:
        sys.exit("bench_agent: interrupted (everything it started is gone)")
    except (BenchError, LabError, httpx.HTTPError) as exc:
        sys.exit(f"bench_agent: {exc}")
    labels = ["before", "after"] if before else ["after"]
    say("")
    for line in table(result, labels):
        say(line)
    out: dict[str, Any] = {**machine, "regions": args.regions, "k": args.targets_per_region, "sched": args.sched}
    out |= {k: v for k, v in result["after"].items() if k != "agent_warnings"}
    if before:
        rs = ratios(result)
        say(f"before/after: CPU {rs['ratio_cpu']}, RSS {rs['ratio_rss']}, peak RSS {rs['ratio_rss_peak']}")
        out |= {f"before_{k}": v for k, v in result["before"].items() if k != "agent_warnings"} | rs
    if args.output == "json":
        print(json.dumps(out))


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    main()
