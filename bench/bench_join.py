"""Joins: R regions x M nodes joined with join tokens into a real controller, as fast as it takes them.

Issue 18's target: 150 x 20 = 3,000 nodes joined within 15 s (at least 200 joins/s), the rate not
falling as the fleet grows. Printed per run: joins/s overall and per fifth of the fleet, the time
to join them all, join latency p50/p99, the controller's CPU time per join (steadier than the rate
on a shared machine) and its RSS; with `--before DIR`, the same against another source tree (e.g.
`git archive HEAD | tar -x -C DIR` of the code before a change), in the same run, side by side.
`--attest` also times one attestation verification per cloud (what an attested join adds). Then
one more node joins, and a node already there fetches its whole list and the delta since the
list it held (`?since=`): what each waiting long poll costs per join, in bytes and time.

The client writes pre-built HTTP/1.1 requests on keep-alive connections and reads each answer
(every node's answer carries its peer list: ~1 MB at 3,000 nodes) without decoding it, except the
last one, whose peers are counted: a client that costs little CPU, so the cores go to the server.

    .venv/bin/python -m bench.bench_join [--regions 150 --nodes-per-region 20 --concurrency 32]
        [--before DIR] [--postgres] [--attest] [-o json]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import secrets
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from bench._server import cpu_seconds, rss_mb, tmpdir
from meshctl.lab.simulate import Controller as Server
from tests.conftest import PostgresDatabase, free_port

HERE = Path(__file__).resolve().parents[1]


def start(tree: Path, database_url: str, work: Path) -> Server:
    """`meshctl serve` from the source tree `tree` (its own code, not this one's)."""
    port, token = free_port(), "msh_a_" + secrets.token_urlsafe(32)
    log = work / f"controller-{port}.log"
    argv = [sys.executable, "-m", "meshctl", "serve", "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--database-url", database_url, "--replica-id", "bench", "--log-level", "warning"]
    env = {**os.environ, "MESH_ADMIN_TOKEN": token, "PYTHONPATH": str(tree), "MESH_RECOMPUTE_INTERVAL_S": "1"}
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, cwd=tree, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the controller from {tree} exited:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return Server(proc, url, token, database_url, log)
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"the controller from {tree} did not start")


async def _post_all(url: str, bodies: list[bytes], concurrency: int, on_done: Callable[[int], None]) -> list[float]:
    host, port = url.removeprefix("http://").split(":")
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(len(bodies)):
        queue.put_nowait(i)
    latencies: list[float] = [0.0] * len(bodies)
    last: dict[str, bytes] = {}

    async def worker() -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            while not queue.empty():
                i = queue.get_nowait()
                body = bodies[i]
                head = (
                    f"POST /v1/nodes HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n"
                ).encode()
                t0 = time.perf_counter()
                writer.write(head + body)
                status = int((await reader.readline()).split()[1])
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = line.decode("latin-1").partition(":")
                    if name.lower() == "content-length":
                        length = int(value)
                data = await reader.readexactly(length)
                latencies[i] = time.perf_counter() - t0
                if status != 201:
                    raise SystemExit(f"join {i}: {status} {data[:300]!r}")
                last["body"] = data
                on_done(i)
        finally:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    peers = len(json.loads(last["body"])["peers"]["peers"])
    latencies.append(float(peers))  # the last answer's peer count rides at the end
    return latencies


def run_one(tree: Path, regions: int, per_region: int, concurrency: int, postgres: bool) -> dict[str, Any]:
    work = tmpdir()
    db = PostgresDatabase() if postgres else None
    url = db.url if db is not None else f"sqlite:///{work / 'bench.db'}"
    server = start(tree, url, work)
    try:
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {server.token}"}, timeout=60) as c:
            ids = [f"aws:bench-{i}" for i in range(regions)]
            tokens = {}
            for i, rid in enumerate(ids):
                r = c.put(f"/v1/regions/{rid}", json={"lat": (i * 37) % 150 - 75.0, "lon": (i * 71) % 360 - 180.0})
                assert r.status_code in (200, 201), r.text
                jt = c.post("/v1/join-tokens", json={"region": rid, "ttl_s": 3600, "uses": per_region})
                assert jt.status_code == 201, jt.text
                tokens[rid] = jt.json()["token"]
        n = regions * per_region
        bodies = []
        for i in range(n):
            rid = ids[i % regions]
            body = {
                "join_token": tokens[rid],
                "region": rid,
                "name": f"bench-{i}",
                "public_key": base64.b64encode(i.to_bytes(32, "big")).decode(),
                "endpoint": f"192.0.2.{i % 250 + 1}:51820",
            }
            bodies.append(json.dumps(body).encode())
        marks: list[float] = []
        done = [0]

        def on_done(_: int) -> None:
            done[0] += 1
            if done[0] % max(1, n // 5) == 0:
                marks.append(time.perf_counter())

        cpu0, t0 = cpu_seconds(server.proc.pid), time.perf_counter()
        lat = asyncio.run(_post_all(server.url, bodies, concurrency, on_done))
        wall, cpu = time.perf_counter() - t0, cpu_seconds(server.proc.pid) - cpu0
        last_peers = int(lat.pop())
        refresh = peer_refresh_costs(server, ids[0], n)
        fifths = [round((n // 5) / (b - a), 1) for a, b in zip([t0, *marks[:-1]], marks, strict=True)]
        ms = sorted(x * 1000 for x in lat)
        return {
            "tree": str(tree),
            "nodes": n,
            "joins_per_s": round(n / wall, 1),
            "join_s": round(wall, 2),
            "joins_per_s_by_fifth": fifths,
            "latency_p50_ms": round(statistics.median(ms), 1),
            "latency_p99_ms": round(ms[int(0.99 * (len(ms) - 1))], 1),
            "controller_cpu_ms_per_join": round(cpu / n * 1000, 2),
            "controller_rss_mib": round(rss_mb(server.proc.pid)),
            "last_answer_peers": last_peers,
            **refresh,
            "database": "postgresql" if postgres else "sqlite",
            "loadavg_1m": round(os.getloadavg()[0], 2),
        }
    finally:
        server.stop()
        if db is not None:
            db.drop()


def peer_refresh_costs(server: Server, region: str, nodes: int, rounds: int = 20) -> dict[str, float]:
    """What a node already in the mesh fetches when one more node joins: its whole list, and the
    delta since the list it held (`?since=`); bytes and the median time of `rounds` fetches each."""
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {server.token}"}, timeout=60) as c:
        node_id = c.get("/v1/nodes", params={"region": region}).json()[0]["id"]
        held = c.get(f"/v1/nodes/{node_id}/peers").json()
        token = c.post("/v1/join-tokens", json={"region": region, "ttl_s": 600, "uses": 1}).json()["token"]
        key = base64.b64encode((nodes + 1).to_bytes(32, "big")).decode()
        body = {"join_token": token, "region": region, "name": "late", "public_key": key, "endpoint": "192.0.2.1:1"}
        assert c.post("/v1/nodes", json=body).status_code == 201
        out: dict[str, float] = {}
        for name, params in (("full", {}), ("delta", {"since": held["generation"]})):
            times, size = [], 0
            for _ in range(rounds):
                t0 = time.perf_counter()
                r = c.get(f"/v1/nodes/{node_id}/peers", params=params)
                times.append(time.perf_counter() - t0)
                size = len(r.content)
            out[f"peer_{name}_kib"] = round(size / 1024, 1)
            out[f"peer_{name}_ms"] = round(statistics.median(times) * 1000, 2)
        return out


def attestation_costs(rounds: int = 200) -> dict[str, float]:
    """Milliseconds per verification of one good document per cloud, as the join runs it."""
    from datetime import UTC, datetime, timedelta

    from meshctl.attest import NonceIssuer, verify_aws, verify_azure, verify_gcp
    from meshctl.attest.testing import AwsSigner, AzureSigner, GcpSigner

    now = datetime.now(UTC).replace(microsecond=0)
    aws, gcp, azure = AwsSigner("eu-west-1"), GcpSigner(), AzureSigner(now=now)
    doc, sig = aws.sign(aws.document(pending=now - timedelta(minutes=1)))
    token = gcp.token(audience="https://mesh.example.net", now=now)
    issuer = NonceIssuer(b"k" * 32)
    nonce = issuer.issue(now)
    attested = azure.attested(nonce, now=now)
    out = {}
    cases: dict[str, Callable[[], object]] = {
        "aws": lambda: verify_aws(doc, sig, aws.trust(), now),
        "gcp": lambda: verify_gcp(token, gcp.trust(), audience="https://mesh.example.net", now=now),
        "azure": lambda: verify_azure(attested, azure.trust(), issuer, now),
    }
    for cloud, call in cases.items():
        call()
        t0 = time.perf_counter()
        for _ in range(rounds):
            call()
        out[f"{cloud}_verify_ms"] = round((time.perf_counter() - t0) / rounds * 1000, 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--regions", type=int, default=150)
    ap.add_argument("--nodes-per-region", type=int, default=20)
    ap.add_argument("--concurrency", type=int, default=32, help="joins in flight (a fleet booting at once)")
    ap.add_argument("--before", type=Path, default=None, help="another source tree to run first, side by side")
    ap.add_argument("--postgres", action="store_true", help="a new database on MESH_TEST_PG_URL, not SQLite")
    ap.add_argument("--attest", action="store_true", help="also time attestation verification per cloud")
    ap.add_argument("-o", "--output", choices=["text", "json"], default="text")
    args = ap.parse_args()
    trees = ([args.before.resolve()] if args.before else []) + [HERE]
    runs = []
    for tree in trees:
        r = run_one(tree, args.regions, args.nodes_per_region, args.concurrency, args.postgres)
        runs.append(r)
        print(
            f"{'before' if tree != HERE else 'this tree'} ({tree}): {r['nodes']} nodes joined in {r['join_s']} s"
            f" = {r['joins_per_s']} joins/s (by fifth of the fleet: {r['joins_per_s_by_fifth']});"
            f" latency p50 {r['latency_p50_ms']} ms, p99 {r['latency_p99_ms']} ms;"
            f" controller {r['controller_cpu_ms_per_join']} ms CPU per join, {r['controller_rss_mib']} MiB;"
            f" last answer {r['last_answer_peers']} peers; {r['database']}; load {r['loadavg_1m']}\n"
            f"  a node's refresh after one more join: whole list {r['peer_full_kib']} KiB in {r['peer_full_ms']} ms,"
            f" delta (?since=) {r['peer_delta_kib']} KiB in {r['peer_delta_ms']} ms",
            flush=True,
        )
    result: dict[str, Any] = {"runs": runs}
    if len(runs) == 2:
        result["speedup"] = round(runs[1]["joins_per_s"] / runs[0]["joins_per_s"], 1)
        print(f"this tree joins {result['speedup']}x as fast as before")
    if args.attest:
        result["attestation"] = attestation_costs()
        print("attestation verification per join:", result["attestation"])
    if args.output == "json":
        print(json.dumps(result))


if __name__ == "__main__":
    main()
