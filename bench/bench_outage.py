"""Outage-to-drain on meshlab: a region blackholed, until its `drain` event; before and after early windows.

Brings up the default lab (9 regions, 12 real agents over wireguard-go, 1 s windows, 2 bad
windows to drain), then for each mode

- `off`: agents with `--early-after 0` (every window runs its whole length, as before), and
- `on`:  agents with the default `--early-after 3` (a window is sent as soon as a peer missed
  3 probes in a row),

blackholes --runs regions one after the other (a different region each run, so no flap damping)
and measures the time from the fault to the controller's `drain` event for it (the event's time
stamp, as the lab test does), heals it and waits until it is back. The agents are restarted
between the modes (`lab up` restarts what died, with the mode's MESH_EARLY_AFTER in their
environment). Prints every run, then p50 and worst per mode, and how many early windows the
agents sent (their `mesh_agent_early_windows_total`).

    sudo .venv/bin/python -m bench.bench_outage [--runs 4] [--keep]

Needs root, like the lab; uses its own directory, prefix and /16.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from meshctl.client import Client
from meshctl.lab import lab
from meshctl.lab.demo import event_time, latest_event_id, wait_event

MODES = (("off", "0"), ("on", "3"))


def early_windows(state: lab.LabState) -> int:
    """Early windows the lab's agents sent so far (their /metrics, read inside each namespace)."""
    total = 0
    for n in state.nodes:
        proc = subprocess.run(
            ["ip", "netns", "exec", n.ns, "curl", "-s", "-m", "2", "http://127.0.0.1:9464/metrics"],
            capture_output=True,
            text=True,
        )
        m = re.search(r"^mesh_agent_early_windows_total ([0-9.e+]+)$", proc.stdout, re.M)
        total += int(float(m.group(1))) if m else 0
    return total


def restart_agents(state: lab.LabState, early_after: str, say: lab.Say) -> lab.LabState:
    """Stop every agent; `lab up` starts them again with MESH_EARLY_AFTER=early_after."""
    os.environ["MESH_EARLY_AFTER"] = early_after
    for n in state.nodes:
        pid_file = state.path / "pids" / f"{n.name}.pid"
        if pid_file.exists():
            pid = int(pid_file.read_text())
            if lab.alive(pid, state.marker):
                os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(
        lab.alive(int((state.path / "pids" / f"{n.name}.pid").read_text()), state.marker) for n in state.nodes
    ):
        time.sleep(0.2)
    return lab.up(None, state.path, prefix=state.prefix, net=state.net, say=say)


def measure(state: lab.LabState, client: Client, victim: str) -> float:
    since = latest_event_id(client)
    applied = lab.fault(state, victim, "blackhole")["applied_at"]
    drain = wait_event(client, since, "drain", victim, 30)
    took = event_time(drain) - applied
    lab.heal(state, victim)
    wait_event(client, drain.id, "undrain", victim, 90)  # the hold (10 s in the lab) and 3 good windows
    return took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=4, help="outages per mode (default 4; at most 4, one region each)")
    ap.add_argument("--keep", action="store_true", help="leave the lab up")
    ap.add_argument("--prefix", default="bo")
    ap.add_argument("--net", default="10.221")
    args = ap.parse_args()
    runs = max(1, min(args.runs, 4))
    work = Path(tempfile.mkdtemp(prefix="bench-outage-"))
    os.environ.setdefault("MESHCTL_CONFIG", str(work / "meshctl.yaml"))  # `up` sets a context: not yours

    def say(msg: str) -> None:
        print(f"  {msg}", flush=True)

    results: dict[str, list[float]] = {}
    early: dict[str, int] = {}
    state = None
    try:
        os.environ["MESH_EARLY_AFTER"] = MODES[0][1]
        state = lab.up(None, work / "lab", prefix=args.prefix, net=args.net, say=say)
        regions = sorted({n.region for n in state.nodes})
        for i, (mode, early_after) in enumerate(MODES):
            if i:
                state = restart_agents(state, early_after, say)
            time.sleep(5)  # every agent past its first windows
            before = early_windows(state)
            with state.client() as client:
                results[mode] = []
                for victim in regions[i * 4 : i * 4 + runs]:
                    took = measure(state, client, victim)
                    results[mode].append(took)
                    print(f"early windows {mode:3}: {victim} blackholed -> drained after {took:.2f} s", flush=True)
            early[mode] = early_windows(state) - before
    finally:
        if state is not None and not args.keep:
            lab.down(work / "lab", args.prefix, args.net)
        elif state is not None:
            print(f"lab kept in {work / 'lab'} (MESH_LAB_DIR={work / 'lab'} meshctl lab down)")
    print("\noutage-to-drain (fault -> drain event), default lab, 1 s windows, 2 bad windows to drain:")
    for mode, times in results.items():
        print(
            f"  early windows {mode:3} (--early-after {dict(MODES)[mode]}): p50 {statistics.median(times):.2f} s, "
            f"worst {max(times):.2f} s, best {min(times):.2f} s over {len(times)} runs; "
            f"{early.get(mode, 0)} early windows sent"
        )


if __name__ == "__main__":
    main()
