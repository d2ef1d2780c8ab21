"""Auth scopes, node credentials, and bad input: a 4xx naming the field, nothing changed."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from tests.conftest import ControllerProcess


def _token(ctl: ControllerProcess, scope: str) -> str:
    with ctl.client() as c:
        r = c.post("/v1/tokens", json={"name": f"t-{scope}", "scope": scope})
        assert r.status_code == 201, r.text
        return str(r.json()["token"])


def test_scopes(controller: ControllerProcess) -> None:
    controller.add_region("aws:us-east-1")
    reader, operator = _token(controller, "reader"), _token(controller, "operator")
    with controller.client("") as anon:
        assert anon.get("/v1/regions").status_code == 401
    with controller.client("msh_a_not-a-real-token-xxxxxxxxxxxxxxxxxxxxxxxx") as bad:
        assert bad.get("/v1/regions").status_code == 401
    with controller.client(reader) as c:
        assert c.get("/v1/regions").status_code == 200
        assert c.get("/v1/routes").status_code == 200
        r = c.post("/v1/regions/aws:us-east-1/drain", json={"reason": "x"})
        assert r.status_code == 403 and "operator" in r.json()["detail"]
        assert c.post("/v1/tokens", json={"name": "x", "scope": "admin"}).status_code == 403
    with controller.client(operator) as c:
        assert c.post("/v1/regions/aws:us-east-1/drain", json={"reason": "x"}).status_code == 200
        assert c.delete("/v1/regions/aws:us-east-1/drain").status_code == 200
        assert c.put("/v1/regions/aws:eu-west-1", json={"lat": 1, "lon": 1}).status_code == 403


def test_tokens_hashed_listed_revoked(controller: ControllerProcess) -> None:
    tok = _token(controller, "reader")
    with controller.client() as c:
        listed = c.get("/v1/tokens").json()
        assert all("token" not in t for t in listed)
        tid = next(t["id"] for t in listed if t["name"] == "t-reader")
        assert c.delete(f"/v1/tokens/{tid}").status_code == 200
    with controller.client(tok) as c:
        assert c.get("/v1/regions").status_code == 401
    if controller.database_url.startswith("sqlite"):
        import sqlite3

        db = controller.database_url.split("///", 1)[1]
        rows = sqlite3.connect(db).execute("select token_hash from api_tokens").fetchall()
        assert all(tok not in r[0] for r in rows) and len(rows[0][0]) == 64


def test_node_credential_scope(controller: ControllerProcess) -> None:
    controller.add_region("aws:us-east-1")
    controller.add_region("gcp:us-east4")
    a = controller.join_node("aws:us-east-1")
    b = controller.join_node("gcp:us-east4")
    assert a["overlay_ip"] != b["overlay_ip"]
    peer = {"peer_node_id": b["node_id"], "sent": 10, "received": 10, "rtt_p50_ms": 3.0}
    body = {
        "node_id": b["node_id"],
        "seq": 1,
        "window_start": datetime.now(UTC).isoformat(),
        "window_s": 5,
        "peers": [peer],
    }
    with controller.client(a["node_token"]) as c:
        r = c.post("/v1/reports", json=body)
        assert r.status_code == 403 and "node_id" in r.json()["detail"]
        assert c.get(f"/v1/nodes/{b['node_id']}/peers").status_code == 403
        mine = c.get(f"/v1/nodes/{a['node_id']}/peers")
        assert mine.status_code == 200
        assert [p["node_id"] for p in mine.json()["peers"]] == [b["node_id"]]
        assert c.get("/v1/regions").status_code == 403
        etag = mine.headers["etag"]
        assert c.get(f"/v1/nodes/{a['node_id']}/peers", headers={"If-None-Match": etag}).status_code == 304


def test_join_token_is_single_region_and_limited(controller: ControllerProcess) -> None:
    controller.add_region("aws:us-east-1")
    controller.add_region("gcp:us-east4")
    with controller.client() as c:
        jt = c.post("/v1/join-tokens", json={"region": "aws:us-east-1", "ttl_s": 600, "uses": 1}).json()["token"]
        key = "A" * 43 + "="
        node = {
            "join_token": jt,
            "region": "gcp:us-east4",
            "name": "x",
            "public_key": key,
            "endpoint": "192.0.2.1:51820",
        }
        assert c.post("/v1/nodes", json=node).status_code == 403
        node["region"] = "aws:us-east-1"
        assert c.post("/v1/nodes", json=node).status_code == 201
        node["name"] = "y"
        assert c.post("/v1/nodes", json=node).status_code == 403
        assert len(c.get("/v1/nodes").json()) == 1


def test_bad_reports_change_nothing(controller: ControllerProcess) -> None:
    controller.add_region("aws:us-east-1")
    controller.add_region("gcp:us-east4")
    a = controller.join_node("aws:us-east-1")
    b = controller.join_node("gcp:us-east4")
    now = datetime.now(UTC)

    def body(**over: object) -> dict[str, object]:
        peer = {"peer_node_id": b["node_id"], "sent": 10, "received": 10, "rtt_p50_ms": 3.0}
        peer.update(over.pop("peer", {}))  # type: ignore[arg-type]
        base = {"node_id": a["node_id"], "seq": 7, "window_start": now.isoformat(), "window_s": 5, "peers": [peer]}
        base.update(over)
        return base

    with controller.client(a["node_token"]) as c:
        raw = json.dumps(body()).replace("3.0", "NaN")
        r = c.post("/v1/reports", content=raw, headers={"content-type": "application/json"})
        assert r.status_code == 422
        for bad, field in [
            (body(peer={"rtt_p50_ms": -1}), "rtt_p50_ms"),
            (body(peer={"received": 11}), "received"),
            (body(peer={"peer_node_id": "n-nope"}), "peer_node_id"),
            (body(window_start=(now + timedelta(hours=1)).isoformat()), "window_start"),
            (body(window_s=0), "window_s"),
        ]:
            r = c.post("/v1/reports", json=bad)
            assert r.status_code == 422, (bad, r.text)
            assert field in r.text
        r = c.post("/v1/reports", content=b"{not json", headers={"content-type": "application/json"})
        assert r.status_code == 422
        r = c.post("/v1/reports", content=b"x" * 2_000_000, headers={"content-type": "application/json"})
        assert r.status_code == 413
        assert c.get(f"/v1/nodes/{a['node_id']}").json()["reports_accepted"] == 0
        assert c.post("/v1/reports", json=body()).status_code == 202
        dup = c.post("/v1/reports", json=body())
        assert dup.status_code == 409 and "seq" in dup.text
        node = c.get(f"/v1/nodes/{a['node_id']}").json()
        assert node["reports_accepted"] == 1 and node["last_seq"] == 7


def test_unknown_and_malformed_regions(controller: ControllerProcess) -> None:
    with controller.client() as c:
        r = c.get("/v1/regions/aws:mars-1")
        assert r.status_code == 404 and "aws:mars-1" in r.json()["detail"]
        assert c.put("/v1/regions/NOT A REGION", json={"lat": 0, "lon": 0}).status_code == 422
        assert c.put("/v1/regions/aws:us-east-1", json={"lat": 100, "lon": 0}).status_code == 422
        r = c.put("/v1/regions/aws:us-east-1", json={"lat": 1, "lon": 1, "cloud": "gcp"})
        assert r.status_code == 422 and "cloud" in r.text
        assert c.post("/v1/regions/aws:mars-1/drain", json={"reason": "x"}).status_code == 404
        assert c.get("/v1/routes/aws:mars-1/aws:us-east-1").status_code in (404, 422)
        assert c.post("/v1/join-tokens", json={"region": "aws:mars-1"}).status_code == 404
        assert c.get("/v1/regions").json() == []


def test_metrics(controller: ControllerProcess) -> None:
    with controller.client() as c:
        text = c.get("/metrics").text
    for name in (
        "mesh_reports_ingested_total",
        "mesh_reports_rejected_total",
        "mesh_route_generation",
        "mesh_route_recompute_seconds",
        "mesh_regions",
    ):
        assert name in text
