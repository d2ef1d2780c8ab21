"""How true the lab's WAN is: measured RTT of every directed link against the topology.

Brings up a lab of N regions of one node each (default 15, RTTs from the Skyplane table), then

1. from the moment `lab up` returns, reads `GET /v1/links` every second and prints how many
   directed links are within max(1 ms, 3%) of the topology and the worst error, until every
   one is (the time until steady) or --settle-s passes;
2. adds 50 probes/s of traffic (`ping -i 0.02` over the overlay between two nodes) for --load-s
   seconds and reads the links the same way, and the router's own lateness (how long after
   its due time each packet left), and the ping's RTT against the topology;
3. takes the lab down (unless --keep).

    sudo .venv/bin/python -m bench.bench_lab_accuracy [--regions 15] [--load-s 30]

Needs root, like the lab. Uses its own directory, prefix and /16 so it does not touch a lab
you have up.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from meshctl.lab import lab
from meshctl.lab.topology import Topology, dump, from_skyplane

REPO = Path(__file__).resolve().parents[1]
CSV = REPO.parent / "shared" / "data" / "cloud-rtt-skyplane.csv"
# the default topology's nine regions, then six more on other continents
REGIONS = [
    "aws:us-east-1",
    "gcp:us-east4",
    "azure:eastus",
    "aws:eu-west-2",
    "gcp:europe-west2",
    "azure:uksouth",
    "aws:ap-northeast-1",
    "gcp:asia-northeast1",
    "azure:japaneast",
    "aws:us-west-2",
    "gcp:us-central1",
    "azure:westeurope",
    "aws:ap-southeast-2",
    "gcp:asia-south1",
    "aws:sa-east-1",
]


def tolerance_ms(want: float) -> float:
    return max(1.0, 0.03 * want)


def snapshot(state: lab.LabState, topo: Topology) -> dict[str, Any]:
    """Every directed region pair: fresh and within tolerance? the worst error (signed)."""
    with state.client(timeout=5) as c:
        links = {(x.src, x.dst): x for x in c.links().links if x.fresh}
    errors = []
    missing = 0
    for a in topo.regions:
        for b in topo.regions:
            if a == b:
                continue
            link = links.get((a, b))
            if link is None or link.loss_percent >= 100:
                missing += 1
                continue
            errors.append((link.rtt_p50_ms - topo.rtt(a, b), a, b, link.rtt_p50_ms))
    within = sum(1 for e, a, b, _ in errors if abs(e) <= tolerance_ms(topo.rtt(a, b)))
    worst = max(errors, key=lambda e: abs(e[0])) if errors else None
    return {"pairs": len(topo.regions) * (len(topo.regions) - 1), "within": within, "missing": missing, "worst": worst}


def line(t: float, snap: dict[str, Any], topo: Topology) -> str:
    w = snap["worst"]
    worst = f"worst {w[0]:+.2f} ms ({w[1]} -> {w[2]}: {w[3]:.1f} vs {topo.rtt(w[1], w[2]):.1f})" if w else "-"
    return f"[{t:5.1f}s] {snap['within']}/{snap['pairs']} within max(1 ms, 3%), {snap['missing']} not measured; {worst}"


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--regions", type=int, default=15, help="how many regions (one node each), at most 15")
    ap.add_argument("--csv", type=Path, default=CSV, help="the Skyplane RTT table")
    ap.add_argument("--settle-s", type=float, default=60.0, help="how long to wait for every link to be right")
    ap.add_argument("--load-s", type=float, default=30.0, help="how long to run 50 probes/s")
    ap.add_argument("--prefix", default="mbench")
    ap.add_argument("--net", default="10.212")
    ap.add_argument("--keep", action="store_true", help="leave the lab up")
    args = ap.parse_args()

    regions = {r: 1 for r in REGIONS[: args.regions]}
    topo = from_skyplane(
        args.csv.read_text(),
        regions,
        f"bench-{len(regions)}",
        "Skyplane: profiles/latency.csv, median of both directions",
    )
    work = Path(tempfile.mkdtemp(prefix="lab-accuracy-"))
    os.environ.setdefault("MESHCTL_CONFIG", str(work / "meshctl.yaml"))  # `up` sets a context: not yours
    topo_path = work / "topology.yaml"
    topo_path.write_text(dump(topo))
    t0 = time.monotonic()

    def say(msg: str) -> None:
        print(f"[{time.monotonic() - t0:5.1f}s] up: {msg}", flush=True)

    state = lab.up(topo_path, work / "lab", prefix=args.prefix, net=args.net, say=say)
    t_up = time.monotonic()
    print(f"lab up returned after {t_up - t0:.1f} s ({len(regions)} regions, {len(state.nodes)} nodes)", flush=True)
    try:
        # 1. steady?
        steady_at = None
        first = None
        while time.monotonic() - t_up < args.settle_s:
            snap = snapshot(state, topo)
            first = first or snap
            print(line(time.monotonic() - t_up, snap, topo), flush=True)
            if snap["within"] == snap["pairs"]:
                steady_at = time.monotonic() - t_up
                break
            time.sleep(1.0)
        # 2. under 50 probes/s of extra traffic
        a = state.nodes[0]
        near = [n for n in state.nodes[1:] if topo.rtt(a.region, n.region) < 100] or state.nodes[1:]
        b = max(near, key=lambda n: topo.rtt(a.region, n.region))
        with state.client() as c:
            target = lab.nodes_by_wan_ip(c)[b.wan_ip]["overlay_ip"]
        lab.router_command(state, {"op": "status", "reset_late": True})
        count = int(args.load_s / 0.02)
        with open(work / "ping.txt", "w") as ping_out:  # a file, not a pipe: ping must never block on it
            ping = subprocess.Popen(
                ["ip", "netns", "exec", a.ns, "ping", "-i", "0.02", "-w", str(int(args.load_s)), "-W", "1", target],
                stdout=ping_out,
            )
        t_load = time.monotonic()
        worst_load: tuple[float, str, str, float] | None = None
        within_min = None
        samples = 0
        while ping.poll() is None:
            time.sleep(1.0)
            snap = snapshot(state, topo)
            samples += 1
            print(line(time.monotonic() - t_up, snap, topo) + "  [50 probes/s]", flush=True)
            w = snap["worst"]
            if w and (worst_load is None or abs(w[0]) > abs(worst_load[0])):
                worst_load = w
            within_min = snap["within"] if within_min is None else min(within_min, snap["within"])
        ping.wait()
        out = (work / "ping.txt").read_text()
        router = lab.router_command(state, {"op": "status"})
        rtts = [float(x) for x in re.findall(r"time=([\d.]+) ms", out)]
        want = topo.rtt(a.region, b.region)

        print("\n=== summary ===")
        print(
            f"regions {len(regions)}, directed links {first['pairs'] if first else '?'}; "
            f"machine load average {os.getloadavg()[1]:.1f} over 5 min on {os.cpu_count()} CPUs"
        )
        print(f"lab up: {t_up - t0:.1f} s")
        if first:
            print("when up returned: " + line(0.0, first, topo))
        print(
            "steady (every link within max(1 ms, 3%)): "
            + (f"{steady_at:.1f} s after up returned" if steady_at is not None else f"not within {args.settle_s:.0f} s")
        )
        print(
            f"under 50 probes/s for {time.monotonic() - t_load:.0f} s ({samples} readings): fewest within "
            f"{within_min}/{first['pairs'] if first else '?'}; worst error "
            + (f"{worst_load[0]:+.2f} ms ({worst_load[1]} -> {worst_load[2]})" if worst_load else "-")
        )
        stats = re.search(r"(\d+) packets transmitted", out)
        sent = int(stats.group(1)) if stats else count
        if rtts:
            med = statistics.median(rtts)
            print(
                f"ping -i 0.02 {a.region} -> {b.region}: {len(rtts)}/{sent} answered "
                f"({sent / args.load_s:.0f}/s sent), median {med:.2f} ms, "
                f"p99 {sorted(rtts)[int(0.99 * (len(rtts) - 1))]:.2f} ms, topology {want:.1f} ms "
                f"(median error {med - want:+.2f} ms)"
            )
        late = router.get("late", {})
        print(
            f"WAN router, packets leaving after their due time under load: {late.get('packets')} packets, "
            f"p50 {late.get('p50_ms')} ms, p99 {late.get('p99_ms')} ms, p99.9 {late.get('p999_ms')} ms, "
            f"max {late.get('max_ms')} ms; {router.get('dropped')} dropped; "
            f"calibration {state.calibration_ms:.3f} ms each way"
        )
    finally:
        if not args.keep:
            lab.down(work / "lab", args.prefix, args.net)
        else:
            print(f"lab kept in {work / 'lab'} (MESH_LAB_DIR={work / 'lab'} meshctl lab down)")


if __name__ == "__main__":
    sys.exit(main())
