"""Issue 2's end-to-end claims, through the real HTTP API of a started server."""

from __future__ import annotations

import math

from tests.conftest import ControllerProcess

A, B, C = "aws:us-east-1", "gcp:us-east4", "azure:westeurope"


def _path(ctl: ControllerProcess, src: str, dst: str) -> list[str]:
    with ctl.client() as c:
        r = c.get(f"/v1/routes/{src}/{dst}")
        assert r.status_code == 200, r.text
        return list(r.json()["path"])


def _triangle(ctl: ControllerProcess, ac: float) -> None:
    rtts = {(A, B): 20.0, (B, A): 20.0, (B, C): 20.0, (C, B): 20.0, (A, C): ac, (C, A): ac}
    ctl.feed_links(rtts)


def test_relay_direct_drain_and_restart(controller: ControllerProcess, tmp_path) -> None:
    _triangle(controller, 100.0)
    controller.wait_for(lambda: _path(controller, A, C) == [A, B, C], what="A->C via B")
    with controller.client() as c:
        explained = c.get(f"/v1/routes/{A}/{C}", params={"explain": "true"}).json()
    assert explained["via_relay"] is True
    assert math.isclose(explained["rtt_ms"], 40.0, abs_tol=0.5)
    paths = [cand["path"] for cand in explained["candidates"]]
    assert [A, C] in paths and [A, B, C] in paths
    assert "relay_penalty_ms" in explained["weights"]
    assert explained["reason"]

    _triangle(controller, 30.0)
    controller.wait_for(lambda: _path(controller, A, C) == [A, C], what="A->C direct at 30 ms")

    _triangle(controller, 100.0)
    controller.wait_for(lambda: _path(controller, A, C) == [A, B, C], what="A->C back via B")
    with controller.client() as c:
        r = c.post(f"/v1/regions/{B}/drain", json={"reason": "maintenance"})
        assert r.status_code == 200, r.text
        assert r.json()["state"] == "drained"
    assert _path(controller, A, C) == [A, C]
    with controller.client() as c:
        gen_before = c.get("/v1/routes").json()["generation"]
    assert gen_before > 0

    controller.stop()
    controller.start()
    with controller.client() as c:
        region = c.get(f"/v1/regions/{B}").json()
        assert region["state"] == "drained"
        assert region["drain"]["reason"] == "maintenance"
        assert c.get("/v1/routes").json()["generation"] >= gen_before
    _triangle(controller, 100.0)
    controller.wait_for(lambda: _path(controller, A, C) == [A, C], what="B still drained after restart")
    with controller.client() as c:
        assert c.get("/v1/routes").json()["generation"] >= gen_before
        kinds = [e["kind"] for e in c.get("/v1/events", params={"limit": 1000}).json()]
    assert "drain" in kinds and "route_change" in kinds


def test_routes_etag_and_304(controller: ControllerProcess) -> None:
    _triangle(controller, 100.0)
    # every region's report in (a tick between two of them publishes a table, and the next one another)
    controller.wait_for(
        lambda: _path(controller, A, C) == [A, B, C] and _path(controller, C, A) == [C, B, A], what="routes"
    )
    with controller.client() as c:
        r = c.get("/v1/routes")
        etag = r.headers["etag"]
        assert r.json()["generation"] >= 1
        assert any(x["src"] == A and x["dst"] == C for x in r.json()["routes"])
        assert c.get("/v1/routes", headers={"If-None-Match": etag}).status_code == 304


def test_undrain_and_placement(controller: ControllerProcess) -> None:
    controller.add_region("aws:us-east-1", 38.9, -77.4, "ashburn")
    controller.add_region("azure:eastus", 37.4, -79.2, "ashburn")
    controller.add_region("gcp:europe-west1", 50.4, 3.8, "brussels")
    with controller.client() as c:
        assert c.get("/v1/placement", params={"near": "aws:us-east-1"}).json()["region"] == "aws:us-east-1"
        c.post("/v1/regions/aws:us-east-1/drain", json={"reason": "provider outage"}).raise_for_status()
        p = c.get("/v1/placement", params={"near": "aws:us-east-1"}).json()
        assert p["region"] == "azure:eastus", p
        near_paris = c.get("/v1/placement", params={"lat": 48.8, "lon": 2.3}).json()
        assert near_paris["region"] == "gcp:europe-west1"
        r = c.delete("/v1/regions/aws:us-east-1/drain")
        assert r.status_code == 200 and r.json()["state"] == "active"
        assert c.delete("/v1/regions/aws:us-east-1/drain").status_code == 409
        kinds = [e["kind"] for e in c.get("/v1/events").json()]
        assert "drain" in kinds and "undrain" in kinds


def test_drain_dry_run_changes_nothing(controller: ControllerProcess) -> None:
    _triangle(controller, 100.0)
    controller.wait_for(lambda: _path(controller, A, C) == [A, B, C], what="routes")
    with controller.client() as c:
        r = c.post(f"/v1/regions/{B}/drain", params={"dry_run": "true"}, json={"reason": "test"})
        assert r.status_code == 200, r.text
        preview = r.json()
        moved = {(x["src"], x["dst"]): x for x in preview["routes_changed"]}
        assert moved[(A, C)]["before"] == [A, B, C] and moved[(A, C)]["after"] == [A, C]
        assert c.get(f"/v1/regions/{B}").json()["state"] == "active"
    assert _path(controller, A, C) == [A, B, C]
