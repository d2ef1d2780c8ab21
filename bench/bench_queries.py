"""Route queries: GET /v1/routes/{src}/{dst} on the controller vs a bare FastAPI endpoint.

Both run under the same uvicorn settings (one process) and the same load tool (wrk, 2
threads, 32 connections, keep-alive), one after the other in one run. Target: the controller
serves at least 60% of the bare endpoint's requests per second.
Run: .venv/bin/python -m bench.bench_queries [--seconds 10]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import time

from bench._server import start_bare, start_controller, tmpdir
from meshctl.core.rttdata import parse_skyplane_csv

DATA = "../shared/data/cloud-rtt-skyplane.csv"


def wrk(url: str, seconds: int, token: str | None = None) -> tuple[float, float]:
    cmd = ["wrk", "-t2", "-c32", f"-d{seconds}s", "--latency", url]
    if token:
        cmd[1:1] = ["-H", f"Authorization: Bearer {token}"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    m = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    assert m is not None, out
    p99 = float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    if non2xx:
        raise RuntimeError(f"{non2xx.group(1)} failed responses from {url}")
    return rps, p99


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--regions", type=int, default=20)
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install wrk")
    tmp = tmpdir()
    with open(DATA) as f:
        rtt = parse_skyplane_csv(f.read())
    regions = sorted({a for a, _ in rtt})[: args.regions]
    pairs = {(a, b): v for (a, b), v in rtt.items() if a in regions and b in regions}
    ctl = start_controller(tmp)
    bare, bare_url = start_bare(tmp)
    try:
        ctl.feed_links(pairs)
        src, dst = regions[0], regions[-1]
        ctl.wait_for(lambda: ctl.client().get(f"/v1/routes/{src}/{dst}").json()["reachable"], what="routes")
        time.sleep(1)
        results = {
            "bare FastAPI (constant JSON)": wrk(f"{bare_url}/v1/routes/{src}/{dst}", args.seconds),
            "meshctl GET /v1/routes/{src}/{dst}": wrk(
                f"{ctl.url}/v1/routes/{src}/{dst}", args.seconds, ctl.admin_token
            ),
        }
    finally:
        ctl.stop()
        bare.terminate()
        bare.wait()
    bare_rps = results["bare FastAPI (constant JSON)"][0]
    print(f"\nroute queries, {len(regions)} regions, wrk -t2 -c32 -d{args.seconds}s, one uvicorn process each")
    print(f"{'endpoint':<40} {'req/s':>10} {'p99 ms':>8} {'ratio':>7}")
    for name, (rps, p99) in results.items():
        print(f"{name:<40} {rps:>10.0f} {p99:>8.2f} {rps / bare_rps:>7.2f}")
    ratio = results["meshctl GET /v1/routes/{src}/{dst}"][0] / bare_rps
    print(f"target >= 0.60 of bare: {'PASS' if ratio >= 0.6 else 'FAIL'} ({ratio:.2f})")


if __name__ == "__main__":
    main()
