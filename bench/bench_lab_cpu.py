"""What a running meshlab costs, and how true it stays on fewer cores.

Reads the lab that is up (`meshctl lab up`; --lab-dir or $MESH_LAB_DIR, else the default):

1. CPU of its processes by kind (agents, wireguard-go, the WAN router, the controller), from
   /proc/PID/stat over --seconds, and the UDP datagrams each node's namespace receives a second
   (/proc/net/snmp: probes, heartbeats, their replies and reflections, and WireGuard's own);
2. with --limit-cores C: moves every lab process into a CPU cgroup of C cores (10 ms periods, so a
   throttled process waits milliseconds, not a tenth of a second) for --seconds, as on a slower
   machine, and prints how often it was throttled and how many of the directed links were off the
   topology (10% or 2 ms, the convergence test's bound; 3% or 1 ms, `lab up`'s) at each reading;
   then moves them back.

    sudo .venv/bin/python -m bench.bench_lab_cpu [--seconds 20] [--limit-cores 1.5]

The before/after figures in the README come from running this on a lab of each tree.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import time
from collections import Counter
from pathlib import Path

from meshctl.lab import lab

KINDS = (("probes run", "agent"), ("wireguard-go", "wireguard-go"), ("wanrouter", "router"), ("serve", "controller"))
V1 = Path("/sys/fs/cgroup/cpu")  # cgroup v1 cpu controller (v2: /sys/fs/cgroup with cpu.max)


def lab_pids(state: lab.LabState) -> dict[int, str]:
    """Every process of the lab (its marker in the command line, or a wireguard-go of its interfaces) by kind."""
    ifnames = {n.ifname for n in state.nodes}
    out: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        ours = state.marker in cmd or (cmd.startswith("wireguard-go") and cmd.split()[-1] in ifnames)
        kind = next((k for needle, k in KINDS if needle in cmd), None)
        if ours and kind:
            out[int(entry.name)] = kind
    return out


def cpu_ticks(pids: dict[int, str]) -> Counter[str]:
    ticks: Counter[str] = Counter()
    for pid, kind in pids.items():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks[kind] += int(fields[11]) + int(fields[12])
    return ticks


def udp_in(ns: str) -> int:
    lines = subprocess.run(["ip", "netns", "exec", ns, "cat", "/proc/net/snmp"], capture_output=True, text=True).stdout
    udp = [line.split() for line in lines.splitlines() if line.startswith("Udp:")]
    return int(udp[1][1])


def off_links(state: lab.LabState) -> tuple[int, int]:
    """Directed links off the topology: (by 10% or 2 ms, by 3% or 1 ms)."""
    return len(lab.converged(state)["off"]), len(lab.converged(state, 0.03, 1.0)["off"])


def measure(state: lab.LabState, seconds: float) -> None:
    pids = lab_pids(state)
    counts = Counter(pids.values())
    hz = os.sysconf("SC_CLK_TCK")
    before, udp_before, t0 = cpu_ticks(pids), {n.ns: udp_in(n.ns) for n in state.nodes}, time.monotonic()
    time.sleep(seconds)
    after, udp_after, took = cpu_ticks(pids), {n.ns: udp_in(n.ns) for n in state.nodes}, time.monotonic() - t0
    total = 0.0
    for _, kind in KINDS:
        share = (after[kind] - before[kind]) / hz / took * 100
        total += share
        print(f"  {kind:13s} {share:6.1f}% of a core ({counts[kind]} processes)")
    print(f"  {'all':13s} {total:6.1f}% of a core")
    rates = sorted((udp_after[ns] - udp_before[ns]) / took for ns in udp_before)
    median = rates[len(rates) // 2]
    print(f"  UDP datagrams received per node: median {median:.0f}/s (min {rates[0]:.0f}, max {rates[-1]:.0f})")


def limited(state: lab.LabState, cores: float, seconds: float) -> None:
    group = V1 / f"meshlab-bench-{os.getpid()}"
    if not V1.is_dir():
        raise SystemExit("--limit-cores needs the cgroup v1 cpu controller at /sys/fs/cgroup/cpu")
    group.mkdir()
    try:
        (group / "cpu.cfs_period_us").write_text("10000")
        (group / "cpu.cfs_quota_us").write_text(str(int(cores * 10000)))
        (group / "cpu.rt_period_us").write_text("10000")
        (group / "cpu.rt_runtime_us").write_text("5000")  # the router runs SCHED_FIFO
        tids = [t.name for pid in lab_pids(state) for t in Path(f"/proc/{pid}/task").glob("*")]
        for tid in tids:
            with contextlib.suppress(OSError):  # the thread ended meanwhile
                (group / "tasks").write_text(tid)
        print(f"limited to {cores:g} cores ({len(tids)} threads): links off the topology (10%/2 ms, 3%/1 ms)")
        regions = len(state.topo().regions)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            ten, three = off_links(state)
            print(f"  {time.strftime('%H:%M:%S')}  {ten:2d} / {three:2d} of {regions * (regions - 1)}")
            time.sleep(2)
        stat = dict(line.split() for line in (group / "cpu.stat").read_text().splitlines())
        print(f"  throttled in {int(stat['nr_throttled'])} of {int(stat['nr_periods'])} periods")
        measure(state, min(seconds, 10.0))
    finally:
        for tid in (group / "tasks").read_text().split():
            with contextlib.suppress(OSError):
                (V1 / "tasks").write_text(tid)
        group.rmdir()


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument(
        "--lab-dir", type=Path, default=None, help="the lab's directory (default: $MESH_LAB_DIR or meshctl's)"
    )
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--limit-cores", type=float, default=None, help="then run the lab on this many cores")
    args = ap.parse_args()
    state = lab.LabState.load(args.lab_dir or lab.default_dir())
    if state is None:
        raise SystemExit("no lab is up there: `meshctl lab up` first (or --lab-dir)")
    print(f"lab {state.dir}: {len(state.nodes)} nodes, {args.seconds:g} s")
    measure(state, args.seconds)
    ten, three = off_links(state)
    print(f"  links off the topology now: {ten} by 10%/2 ms, {three} by 3%/1 ms")
    if args.limit_cores:
        limited(state, args.limit_cores, args.seconds * 2)


if __name__ == "__main__":
    main()
