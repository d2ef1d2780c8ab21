"""Start-up of `meshctl` commands beside `python -c pass` and `curl` making the same request.

One real controller (SQLite, the skyplane RTTs of --regions regions), one run: every command
is run --runs times, the commands taken in turn (round robin) so a busy moment of the machine
falls on all of them alike. For each: median and minimum wall time, and median CPU time (user +
system of the child, from `wait4`), which a loaded machine inflates far less than wall time.
"over curl" is the command's median minus the median of `curl` asking the controller the same
thing: what the Python program adds to the request itself.

`--before DIR` also runs each meshctl command from an older tree (DIR holding a `meshctl`
package, e.g. `git archive <commit> meshctl | tar -x -C DIR`) in the same turns: before and
after measured side by side.

Run: .venv/bin/python -m bench.bench_cli [--runs 15] [--regions 9] [--before DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench._server import start_controller, tmpdir
from meshctl.core.rttdata import parse_skyplane_csv
from tests.conftest import ControllerProcess

DATA = "../shared/data/cloud-rtt-skyplane.csv"
MESHCTL = str(Path(sys.executable).with_name("meshctl"))


@dataclass
class Sample:
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)


def run_once(argv: list[str], env: dict[str, str]) -> tuple[float, float, int]:
    t0 = time.perf_counter()
    # cwd: not the repository, whose ./meshctl `python -m` would put first on the path
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd="/")
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    return wall, usage.ru_utime + usage.ru_stime, proc.returncode


def main() -> None:
    os.environ.setdefault("MESH_TEST_NO_ZYGOTE", "1")  # a plain `meshctl serve` process, as deployed
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--regions", type=int, default=9)
    ap.add_argument("--before", help="a directory holding an older meshctl package to compare with")
    ap.add_argument("--attach", type=int, help="use the controller already on this port (test admin token)")
    args = ap.parse_args()
    with open(DATA) as f:
        rtt = parse_skyplane_csv(f.read())
    regions = sorted({a for a, _ in rtt})[: args.regions]
    links = {(a, b): v for (a, b), v in rtt.items() if a in regions and b in regions}
    attached = args.attach is not None
    ctl = ControllerProcess("", tmpdir(), port=args.attach) if attached else start_controller(tmpdir(), timeout=120)
    try:
        ctl.feed_links(links)
        src, dst = regions[0], regions[-1]
        ctl.wait_for(lambda: ctl.client().get(f"/v1/routes/{src}/{dst}").json()["reachable"], what="routes")
        env = {**os.environ, "MESHCTL_CONTROLLER": ctl.url, "MESHCTL_TOKEN": ctl.admin_token, "COLUMNS": "100"}
        auth = f"Authorization: Bearer {ctl.admin_token}"
        curl = shutil.which("curl")
        # (label, argv, the same request made by curl or None)
        cases: list[tuple[str, list[str], str | None]] = [
            ("python -c pass", [sys.executable, "-c", "pass"], None),
            ("meshctl --help", [MESHCTL, "--help"], None),
            ("meshctl status", [MESHCTL, "status"], "/v1/status"),
            ("meshctl status -o json", [MESHCTL, "status", "-o", "json"], "/v1/status"),
            ("meshctl regions list", [MESHCTL, "regions", "list"], "/v1/regions"),
            ("meshctl links", [MESHCTL, "links"], "/v1/links"),
            ("meshctl route SRC DST --explain", [MESHCTL, "route", src, dst, "--explain"],
             f"/v1/routes/{src}/{dst}?explain=true"),
            ("meshctl events", [MESHCTL, "events"], "/v1/events?limit=50"),
            ("meshctl matrix", [MESHCTL, "matrix"], None),
        ]  # fmt: skip
        argvs: dict[str, tuple[list[str], dict[str, str]]] = {}
        before_env = {**env, "PYTHONPATH": args.before or ""}
        for label, argv, path in cases:
            argvs[label] = (argv, env)
            if args.before and argv[0] == MESHCTL:
                argvs[f"before: {label}"] = ([sys.executable, "-m", "meshctl", *argv[1:]], before_env)
            if path is not None and curl is not None:
                argvs[f"curl {path}"] = ([curl, "-sf", "-o", "/dev/null", "-H", auth, ctl.url + path], env)
        for label, (argv, e) in argvs.items():  # once each first: page cache, .pyc files, and a check
            _, _, code = run_once(argv, e)
            if code != 0:
                raise SystemExit(f"{label} exited with {code}")
        samples = {label: Sample() for label in argvs}
        for _ in range(args.runs):
            for label, (argv, e) in argvs.items():
                wall, cpu, _ = run_once(argv, e)
                samples[label].wall.append(wall)
                samples[label].cpu.append(cpu)
    finally:
        ctl.stop()

    def med(xs: list[float]) -> float:
        return statistics.median(xs) * 1000

    load = os.getloadavg()[0]
    print(f"\nmeshctl start-up, {args.runs} runs each in turn, {len(regions)} regions, load average {load:.1f}")
    before = "  before: wall p50, cpu p50" if args.before else ""
    print(f"{'command':<34} {'wall p50':>9} {'min':>6} {'cpu p50':>8} {'curl p50':>9} {'over curl':>10}{before}")
    base = med(samples["python -c pass"].wall)
    for label, _argv, path in cases:
        smp = samples[label]
        curl_key = f"curl {path}"
        curl_ms = med(samples[curl_key].wall) if curl_key in samples else None
        over = "" if curl_ms is None else f"{med(smp.wall) - curl_ms:>9.0f}"
        curl_txt = "" if curl_ms is None else f"{curl_ms:>8.0f}"
        old = samples.get(f"before: {label}")
        old_txt = "" if old is None else f"  {med(old.wall):>12.0f} {med(old.cpu):>8.0f}"
        print(
            f"{label:<34} {med(smp.wall):>9.0f} {min(smp.wall) * 1000:>6.0f} {med(smp.cpu):>8.0f} "
            f"{curl_txt:>9} {over:>10}{old_txt}"
        )
    print(f"(ms; python -c pass {base:.0f} ms wall; target: every command under 200 ms)")


if __name__ == "__main__":
    main()
