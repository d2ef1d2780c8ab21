"""Replicas as they are really started: together, alike, on an empty PostgreSQL database.

Three `meshctl serve` processes started at the same instant with the same flags and no
--replica-id (each migrates under the database's advisory lock, or finds the schema done), then 20
joins at once spread over them: every join succeeds, with distinct overlay addresses. An explicit
--replica-id held by a live replica is refused at start with one line.
"""

from __future__ import annotations

import base64
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ADMIN, ControllerProcess
from tests.ha.conftest import AlikeReplica

pytestmark = pytest.mark.postgres

REGIONS = ("aws:us-east-1", "gcp:us-east4", "azure:westeurope")


def test_three_replicas_start_together_and_twenty_joins_at_once(pg_url: str, tmp_path: Path) -> None:
    replicas = [AlikeReplica(pg_url, tmp_path, f"alike{i}") for i in (1, 2, 3)]
    try:
        t0 = time.monotonic()
        for r in replicas:
            r.spawn()
        for r in replicas:
            r.wait_ready(60)
        started = time.monotonic() - t0
        ids = {r.identity() for r in replicas}
        assert len(ids) == 3, f"replicas started alike share an id: {ids}"
        for i, region in enumerate(REGIONS):
            replicas[i].add_region(region)
        tokens = []
        for n in range(20):
            with replicas[n % 3].client() as c:
                jt = c.post("/v1/join-tokens", json={"region": REGIONS[n % 3], "ttl_s": 600, "uses": 1})
                assert jt.status_code == 201, jt.text
                tokens.append((REGIONS[n % 3], jt.json()["token"]))

        def join(n: int) -> httpx.Response:
            region, token = tokens[n]
            body: dict[str, Any] = {
                "join_token": token,
                "region": region,
                "name": f"cold-{n}",
                "public_key": base64.b64encode(secrets.token_bytes(32)).decode(),
                "endpoint": f"192.0.2.{n + 1}:51820",
            }
            return httpx.post(f"{replicas[(n + 1) % 3].url}/v1/nodes", json=body, timeout=30)

        with ThreadPoolExecutor(20) as pool:
            answers = list(pool.map(join, range(20)))
        assert [a.status_code for a in answers] == [201] * 20, [a.text for a in answers if a.status_code != 201]
        ips = [a.json()["overlay_ip"] for a in answers]
        assert len(set(ips)) == 20, ips
        for r in replicas:
            r.wait_for(lambda r=r: len(r.client().get("/v1/nodes").json()) == 20, what="every node everywhere")
        print(f"\n[ha] 3 replicas started together on an empty database in {started:.1f} s; 20 joins at once: ok")
    finally:
        for r in replicas:
            r.kill()


def test_an_explicit_replica_id_held_by_a_live_replica_is_refused(pg_url: str, tmp_path: Path) -> None:
    first = ControllerProcess(pg_url, tmp_path, replica_id="same").start()
    try:
        second = ControllerProcess(pg_url, tmp_path / "second", replica_id="same")
        (tmp_path / "second").mkdir()
        with pytest.raises(RuntimeError, match="exited with 2") as refused:
            second.start()
        lines = [ln for ln in second.log().splitlines() if ln.strip()]
        assert lines == [lines[0]] and "replica id 'same' is in use by a live replica" in lines[0], lines
        assert "Traceback" not in str(refused.value)
        with httpx.Client(base_url=first.url, headers={"Authorization": f"Bearer {ADMIN}"}) as c:
            assert c.get("/healthz").json()["leader"]  # the first one is untouched
        first.stop()  # a clean stop frees the id at once
        again = ControllerProcess(pg_url, tmp_path / "second", replica_id="same").start(timeout=15)
        again.stop()
    finally:
        first.kill()
