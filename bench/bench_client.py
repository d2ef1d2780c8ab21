"""The local route table of meshctl.client against asking the controller over HTTP.

One real controller (SQLite, the skyplane RTTs of --regions regions), one client machine,
one run:
  - lookups/s of `client.route(src, dst)` from the watched local table (no request), versus
    requests/s of `GET /v1/routes/{src}/{dst}` with one keep-alive httpx client, sequentially;
  - staleness after a change: drain (or undrain) a region through the API and time until the
    watched local table shows the new generation; p50 and max over --changes changes.
Run: .venv/bin/python -m bench.bench_client [--regions 20] [--seconds 5] [--changes 10]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import httpx

from bench._server import start_controller, tmpdir
from meshctl.client import Client
from meshctl.core.rttdata import parse_skyplane_csv

DATA = "../shared/data/cloud-rtt-skyplane.csv"


def local_lookups(client: Client, pairs: list[tuple[str, str]], seconds: float) -> float:
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for src, dst in pairs:
            client.route(src, dst)
        n += len(pairs)
    return n / (time.perf_counter() - t0)


def http_lookups(url: str, token: str, pairs: list[tuple[str, str]], seconds: float) -> float:
    n, t0 = 0, time.perf_counter()
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}) as http:
        while time.perf_counter() - t0 < seconds:
            src, dst = pairs[n % len(pairs)]
            http.get(f"/v1/routes/{src}/{dst}").raise_for_status()
            n += 1
    return n / (time.perf_counter() - t0)


def staleness(client: Client, admin: Client, region: str, changes: int) -> list[float]:
    """Seconds from sending a drain/undrain until the local table has a newer generation."""
    out = []
    for i in range(changes):
        before = client.routes.generation or 0
        t0 = time.perf_counter()
        if i % 2 == 0:
            admin.drain(region, f"bench change {i}")
        else:
            admin.undrain(region)
        while (client.routes.generation or 0) <= before:
            if time.perf_counter() - t0 > 30:
                raise RuntimeError("the local table did not follow within 30 s")
            time.sleep(0.0005)
        out.append(time.perf_counter() - t0)
        time.sleep(0.3)
    return out


def long_poll_supported(url: str, token: str) -> bool:
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=10) as http:
        etag = http.get("/v1/routes").headers["ETag"]
        t0 = time.perf_counter()
        http.get("/v1/routes", params={"wait": 1.0}, headers={"If-None-Match": etag})
        return time.perf_counter() - t0 > 0.5


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--regions", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--changes", type=int, default=10)
    args = ap.parse_args()
    with open(DATA) as f:
        rtt = parse_skyplane_csv(f.read())
    regions = sorted({a for a, _ in rtt})[: args.regions]
    links = {(a, b): v for (a, b), v in rtt.items() if a in regions and b in regions}
    ctl = start_controller(tmpdir())
    try:
        ctl.feed_links(links)
        src, dst = regions[0], regions[-1]
        ctl.wait_for(lambda: ctl.client().get(f"/v1/routes/{src}/{dst}").json()["reachable"], what="routes")
        pairs = [(a, b) for a in regions for b in regions if a != b]
        random.Random(1).shuffle(pairs)
        with Client(ctl.url, ctl.admin_token) as client, Client(ctl.url, ctl.admin_token) as admin:
            client.routes.watch()
            local = local_lookups(client, pairs, args.seconds)
            remote = http_lookups(ctl.url, ctl.admin_token, pairs, args.seconds)
            long_poll = long_poll_supported(ctl.url, ctl.admin_token)
            stale = staleness(client, admin, regions[len(regions) // 2], args.changes)
            polls = client.routes.requests
    finally:
        ctl.stop()
    print(f"\nroute lookups, {len(regions)} regions ({len(pairs)} pairs), {args.seconds:g} s each, one client process")
    print(f"{'how':<44} {'lookups/s':>12}")
    print(f"{'client.route() from the local table':<44} {local:>12,.0f}")
    print(f"{'GET /v1/routes/{src}/{dst} (httpx, keep-alive)':<44} {remote:>12,.0f}")
    print(f"local / HTTP: {local / remote:,.0f}x")
    print(
        f"\nstaleness after a drain/undrain ({args.changes} changes, long poll "
        f"{'on' if long_poll else 'off: 1 s polling'}): p50 {statistics.median(stale) * 1000:.1f} ms, "
        f"max {max(stale) * 1000:.1f} ms (send to local generation; includes the controller's recompute)"
    )
    print(f"requests made by the watch during the whole run: {polls}")


if __name__ == "__main__":
    main()
