"""Report ingestion: 1,000 simulated nodes, each reporting 150 links, into a real controller.

Measures accepted reports/s, p99 latency and the server's memory, and checks that every
acknowledged report is in the database (none lost). The reference is the same server's
GET /healthz under the same client, to show what the client and HTTP stack alone cost.
Also printed: the server's CPU time per request (steadier than req/s on a shared machine) and
what the control loop (recompute every second, on the same event loop) took meanwhile.
Target: at least 1,000 reports/s on this 2-core machine.
Reports go with their peers as columns, as the agent sends them (`--peers-as rows`: as before).
Run: .venv/bin/python -m bench.bench_ingest [--nodes 1000 --links 150 --rounds 3] [--peers-as rows]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import statistics
import time
from datetime import UTC, datetime
from typing import Any

from bench._server import cpu_seconds, rss_mb, start_controller, tmpdir
from probes.reporter import with_peer_columns


async def _fire_async(url: str, jobs: list[tuple[str, bytes]], concurrency: int) -> tuple[list[float], dict[int, int]]:
    """Keep-alive connections writing pre-built HTTP/1.1 requests: a client that costs little CPU,
    so the 2 cores go to the server under test."""
    host, port = url.removeprefix("http://").split(":")
    requests = []
    for token, body in jobs:
        if body:
            head = (
                f"POST /v1/reports HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode()
            requests.append(head + body)
        else:
            requests.append(f"GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    latencies: list[float] = []
    codes: dict[int, int] = {}
    it = iter(requests)

    async def worker() -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        for req in it:
            t0 = time.perf_counter()
            writer.write(req)
            status_line = await reader.readline()
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - t0)
            code = int(status_line.split()[1])
            codes[code] = codes.get(code, 0) + 1
        writer.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, codes


def fire(url: str, jobs: list[tuple[str, bytes]], concurrency: int) -> tuple[list[float], dict[int, int]]:
    return asyncio.run(_fire_async(url, jobs, concurrency))


def recompute_metrics(c: Any) -> tuple[float, float]:
    """(count, seconds) of the control loop's recomputes so far."""
    got = dict.fromkeys(("mesh_route_recompute_seconds_count", "mesh_route_recompute_seconds_sum"), 0.0)
    for line in c.get("/metrics").text.splitlines():
        name, _, value = line.partition(" ")
        if name in got:
            got[name] = float(value)
    return got["mesh_route_recompute_seconds_count"], got["mesh_route_recompute_seconds_sum"]


def p99(xs: list[float]) -> float:
    return statistics.quantiles(xs, n=100)[98] * 1000 if len(xs) > 1 else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--links", type=int, default=150)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument(
        "--peers-as", choices=["columns", "rows"], default="columns", help="as the agent sends them, or as before it"
    )
    args = ap.parse_args()
    tmp = tmpdir()
    ctl = start_controller(tmp, MESH_STALE_AFTER_S="600")
    try:
        regions = [f"aws:bench-{i:03d}" for i in range(args.links + 1)]
        t0 = time.perf_counter()
        with ctl.client() as c:
            for i, r in enumerate(regions):
                c.put(f"/v1/regions/{r}", json={"lat": (i % 150) - 75, "lon": (i * 7 % 360) - 180}).raise_for_status()
            tokens = {
                r: c.post("/v1/join-tokens", json={"region": r, "ttl_s": 3600, "uses": 10000}).json()["token"]
                for r in regions
            }
            nodes = []
            for i in range(args.nodes):
                r = regions[i % len(regions)]
                key = __import__("base64").b64encode(i.to_bytes(32, "big")).decode()
                res = c.post(
                    "/v1/nodes",
                    json={
                        "join_token": tokens[r],
                        "region": r,
                        "name": f"n{i}",
                        "public_key": key,
                        "endpoint": "192.0.2.1:51820",
                    },
                )
                res.raise_for_status()
                nodes.append((res.json()["node_id"], res.json()["node_token"], r))
        print(f"set-up: {len(regions)} regions, {len(nodes)} nodes joined in {time.perf_counter() - t0:.1f}s")
        first_in_region: dict[str, str] = {}
        for node_id, _, r in nodes:
            first_in_region.setdefault(r, node_id)
        jobs: list[tuple[str, bytes]] = []
        now = datetime.now(UTC).isoformat()
        for rnd in range(args.rounds):
            for node_id, token, region in nodes:
                peers = [
                    {
                        "peer_node_id": peer,
                        "sent": 25,
                        "received": 25,
                        "rtt_min_ms": 10.0,
                        "rtt_p50_ms": 12.5,
                        "rtt_p90_ms": 14.0,
                        "rtt_max_ms": 20.0,
                        "jitter_ms": 0.4,
                    }
                    for r, peer in first_in_region.items()
                    if r != region
                ][: args.links]
                body = {"node_id": node_id, "seq": rnd, "window_start": now, "window_s": 5.0, "peers": peers}
                sent = with_peer_columns(body) if args.peers_as == "columns" else body
                jobs.append((token, json.dumps(sent).encode()))
        size_kb = sum(len(b) for _, b in jobs) / len(jobs) / 1024
        pid = ctl.proc.pid  # type: ignore[union-attr]
        load = os.getloadavg()  # other work on the 2 cores moves every figure; say how busy they were
        cpu0, t1 = cpu_seconds(pid), time.perf_counter()
        base_lat, _ = fire(ctl.url, [("", b"")] * len(jobs), args.concurrency)
        t_base, cpu_base = time.perf_counter() - t1, cpu_seconds(pid) - cpu0
        with ctl.client() as c:
            loop0 = recompute_metrics(c)
        cpu0, t1 = cpu_seconds(pid), time.perf_counter()
        lat, codes = fire(ctl.url, jobs, args.concurrency)
        elapsed, cpu_reports = time.perf_counter() - t1, cpu_seconds(pid) - cpu0
        rss = rss_mb(pid)
        with ctl.client() as c:
            loop1 = recompute_metrics(c)
            metric = [ln for ln in c.get("/metrics").text.splitlines() if ln.startswith("mesh_reports_ingested_total")]
    finally:
        ctl.stop()
    stored = sqlite3.connect(str(tmp / "bench.db")).execute("select count(*) from reports").fetchone()[0]
    accepted = codes.get(202, 0)
    rate = accepted / elapsed
    print(
        f"\ningestion: {args.nodes} nodes x {args.links} links x {args.rounds} rounds, "
        f"{size_kb:.1f} KiB/report, {args.concurrency} keep-alive connections, SQLite (WAL, group commit)"
    )
    print(f"{'workload':<34} {'req/s':>9} {'p99 ms':>8} {'server CPU ms/req':>18}")
    cpu_ms = 1000 * cpu_base / len(jobs)
    print(f"{'GET /healthz (client+HTTP only)':<34} {len(jobs) / t_base:>9.0f} {p99(base_lat):>8.1f} {cpu_ms:>18.3f}")
    print(f"{'POST /v1/reports':<34} {rate:>9.0f} {p99(lat):>8.1f} {1000 * cpu_reports / len(jobs):>18.3f}")
    print(f"ratio reports/healthz: {rate / (len(jobs) / t_base):.2f}")
    ticks, busy = loop1[0] - loop0[0], loop1[1] - loop0[1]
    print(
        f"control loop meanwhile: {ticks:.0f} recomputes taking {busy:.2f} s ({100 * busy / elapsed:.0f}% of the "
        f"{elapsed:.2f} s, wall time on the same event loop); load average before: {load[0]:.2f}"
    )
    print(f"status codes: {codes}; server RSS after: {rss:.0f} MiB; {metric[0] if metric else ''}")
    lost = accepted - stored
    print(f"acknowledged {accepted}, stored {stored}, lost {lost}")
    print(f"target >= 1000 reports/s and none lost: {'PASS' if rate >= 1000 and lost == 0 else 'FAIL'}")


if __name__ == "__main__":
    main()
