"""`GET /v1/links/{src}/{dst}/history` on a real server, every backend: rows the leader wrote are
served by the leader and by a follower replica (from the store), `since` and `step` as a user
gives them, and every bad input a problem naming the field. The CLI's `links history` on top."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx

from meshctl.store.db import Store
from meshctl.store.history import Row
from tests.cli.test_cli import run
from tests.conftest import ControllerProcess

A, B, C = "aws:us-east-1", "gcp:europe-west1", "azure:westeurope"


def _rows(now: float, a: str = A, b: str = B) -> list[Row]:
    """A day of minutes and a week of hours for a -> b, RTT climbing; one lost minute (5 minutes ago)."""
    minute, hour = int(now // 60) * 60, int(now // 3600) * 3600
    rows: list[Row] = []
    for k in range(1, 24 * 60):
        at = minute - 60 * k
        lost = k == 5
        rtt = 80.0 + k / 100
        rows.append(
            (a, b, 60, at, None if lost else rtt - 1, None if lost else rtt, None if lost else rtt + 2,
             None if lost else rtt + 5, 100.0 if lost else 0.5, None if lost else 1.0, 12)
        )  # fmt: skip
    for k in range(1, 7 * 24):
        rows.append((a, b, 3600, hour - 3600 * k, 70.0, 80.0 + k, 90.0 + k, 120.0, 0.25, 1.5, 720))
    rows.append((b, a, 60, minute - 60, 79.0, 81.0, 83.0, 90.0, 0.0, 1.0, 12))
    return rows


def _problem(r: httpx.Response, status: int, field: str | None) -> dict[str, object]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert isinstance(body["detail"], str) and body["detail"]
    assert body["field"] == field, body
    return dict(body)


def test_history_served_by_leader_and_follower(controller: ControllerProcess, tmp_path: Path) -> None:
    for r in (A, B, C):
        controller.add_region(r)
    store = Store(controller.database_url)
    try:
        now = time.time()
        assert store.history.write(_rows(now), None, now)
    finally:
        store.close()
    follower = ControllerProcess(controller.database_url, tmp_path, replica_id="r2").start()
    try:
        for ctl in (controller, follower):
            with ctl.client() as c:
                day = c.get(f"/v1/links/{A}/{B}/history")  # defaults: since=24h, step=auto -> minutes
                assert day.status_code == 200, day.text
                body = day.json()
                assert body["src"] == A and body["dst"] == B and body["step"] == "1m" and body["step_s"] == 60
                pts = body["points"]
                assert 1430 <= len(pts) <= 1439
                ats = [p["at"] for p in pts]
                assert ats == sorted(ats)
                assert pts[-1]["rtt_p50_ms"] == 80.01 and pts[-1]["rtt_p90_ms"] == 82.01 and pts[-1]["samples"] == 12
                lost = pts[-5]
                assert lost["rtt_p50_ms"] is None and lost["loss_percent"] == 100.0 and lost["jitter_ms"] is None

                hour = c.get(f"/v1/links/{A}/{B}/history", params={"since": "1h", "step": "1m"}).json()
                assert 59 <= len(hour["points"]) <= 60
                week = c.get(f"/v1/links/{A}/{B}/history", params={"since": "7d"}).json()
                assert week["step"] == "1h" and 166 <= len(week["points"]) <= 167
                assert week["points"][-1]["rtt_p50_ms"] == 81.0
                iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now - 3 * 3600))
                hours = c.get(f"/v1/links/{A}/{B}/history", params={"since": iso, "step": "1h"}).json()
                assert hours["step"] == "1h" and 2 <= len(hours["points"]) <= 3
                back = c.get(f"/v1/links/{B}/{A}/history", params={"since": "10m"}).json()
                assert len(back["points"]) == 1
                none = c.get(f"/v1/links/{A}/{C}/history").json()
                assert none["points"] == []  # known regions, nothing measured: an empty series
    finally:
        follower.stop()


def test_history_validation_and_auth(controller: ControllerProcess) -> None:
    controller.add_region(A)
    controller.add_region(B)
    url = f"/v1/links/{A}/{B}/history"
    with controller.client() as c:
        _problem(c.get(url, params={"since": "yesterday"}), 422, "since")
        _problem(c.get(url, params={"since": "24 h"}), 422, "since")
        _problem(c.get(url, params={"step": "5m"}), 422, "step")
        _problem(c.get("/v1/links/aws:nowhere-1/gcp:europe-west1/history"), 404, "region")
        _problem(c.get("/v1/links/AWS!/gcp:europe-west1/history"), 422, "src")
    with controller.client(token="") as anon:
        _problem(anon.get(url), 401, None)
    with controller.client() as c:
        doc = c.get("/openapi.json").json()
    op = doc["paths"]["/v1/links/{src}/{dst}/history"]["get"]
    params = {p["name"]: p for p in op["parameters"]}
    assert params["step"]["schema"]["enum"] == ["1m", "1h", "auto"]
    assert {"pattern", "format"} <= {k for alt in params["since"]["schema"]["anyOf"] for k in alt}
    assert {"401", "403", "404", "422"} <= set(op["responses"])
    assert params["src"]["schema"]["pattern"]


def test_cli_links_history(controller: ControllerProcess, tmp_path: Path) -> None:
    for r in (A, B):
        controller.add_region(r)
    store = Store(controller.database_url)
    try:
        now = time.time()
        store.history.write(_rows(now), None, now)
    finally:
        store.close()
    r = run(controller, "links", "history", A, B, "--since", "2h", tmp=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert f"{A} -> {B}" in r.stdout and "buckets of 1m" in r.stdout
    p50 = next(line for line in lines if "rtt p50 ms" in line)
    assert "80.0" in p50 and any(ch in p50 for ch in "▁▂▃▄▅▆▇█")
    assert max(len(line) for line in lines) <= 100
    r = run(controller, "links", "history", A, B, "--since", "7d", "-o", "json", tmp=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["step"] == "1h"
    r = run(controller, "links", "history", A, B, "--step", "5m", tmp=tmp_path)
    assert r.returncode == 7 and "step" in r.stderr
    r = run(controller, "links", "-o", "json", tmp=tmp_path)
    assert r.returncode == 0 and "links" in json.loads(r.stdout)
