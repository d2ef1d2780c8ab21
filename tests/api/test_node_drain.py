"""Node drains through the real HTTP API, on every backend: what an operator and a node's agent see."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from tests.conftest import ControllerProcess

A, B, C = "aws:us-east-1", "gcp:us-east4", "azure:westeurope"


def _peers(ctl: ControllerProcess, node: dict[str, Any], **kw: Any) -> Any:
    with ctl.client(node["node_token"]) as c:
        return c.get(f"/v1/nodes/{node['node_id']}/peers", **kw)


def test_drain_undrain_dry_run_and_what_the_node_sees(controller: ControllerProcess) -> None:
    controller.add_region(A, 38.9, -77.4)
    n1 = controller.join_node(A, "media-1")
    n2 = controller.join_node(A, "media-2")
    with controller.client() as c:
        # dry run: says what would change, changes nothing
        r = c.post(f"/v1/nodes/{n1['node_id']}/drain", params={"dry_run": "true"}, json={"reason": "kernel update"})
        assert r.status_code == 200, r.text
        preview = r.json()
        assert preview["dry_run"] is True and preview["already_drained"] is False
        assert preview["region_nodes_left"] == [n2["node_id"]]
        assert "media-1" in preview["summary"]
        node = c.get(f"/v1/nodes/{n1['node_id']}").json()
        assert node["drained"] is False and node["drain"] is None
        assert not [e for e in c.get("/v1/events", params={"limit": 1000}).json() if e["kind"] == "node_drain"]

    # the other node's agent is long polling its peers: the drain wakes it at once
    first = _peers(controller, n2)
    etag = first.headers["etag"]
    assert [p["drained"] for p in first.json()["peers"]] == [False]
    woke: dict[str, Any] = {}

    def poll() -> None:
        t0 = time.monotonic()
        r = _peers(controller, n2, params={"wait": 10}, headers={"If-None-Match": etag})
        woke.update(status=r.status_code, after=time.monotonic() - t0, body=r.json() if r.status_code == 200 else None)

    t = threading.Thread(target=poll)
    t.start()
    time.sleep(0.5)
    with controller.client() as c:
        r = c.post(f"/v1/nodes/{n1['node_id']}/drain", json={"reason": "kernel update"})
        assert r.status_code == 200, r.text
        out = r.json()
    t.join(15)
    assert out["drained"] is True and out["drained_by"] == "node"
    assert out["drain"]["reason"] == "kernel update" and out["drain"]["kind"] == "manual"
    assert out["drain"]["by"] == "admin (MESH_ADMIN_TOKEN)" and out["drain"]["since"]
    assert woke["status"] == 200 and woke["after"] < 3.0, woke
    assert [p["drained"] for p in woke["body"]["peers"]] == [True]
    assert woke["body"]["self_state"]["drained"] is False

    # the drained node's own peer list says so, with the reason
    me = _peers(controller, n1).json()["self_state"]
    assert me["drained"] is True and me["scope"] == "node" and me["reason"] == "kernel update"
    assert me["region_drained"] is False and me["node_drain"]["reason"] == "kernel update"

    with controller.client() as c:
        listed = {n["id"]: n for n in c.get("/v1/nodes").json()}
        assert listed[n1["node_id"]]["drained"] is True and listed[n2["node_id"]]["drained"] is False
        again = c.post(f"/v1/nodes/{n1['node_id']}/drain", params={"dry_run": "true"}, json={"reason": "x"}).json()
        assert again["already_drained"] is True
        events = [e for e in c.get("/v1/events", params={"limit": 1000}).json() if e["kind"] == "node_drain"]
        assert len(events) == 1 and events[0]["node_id"] == n1["node_id"] and events[0]["region"] == A
        assert events[0]["reason"] == "kernel update" and events[0]["data"]["by"] == "admin (MESH_ADMIN_TOKEN)"

        r = c.delete(f"/v1/nodes/{n1['node_id']}/drain")
        assert r.status_code == 200, r.text
        assert r.json()["drained"] is False and r.json()["drain"] is None
        assert c.delete(f"/v1/nodes/{n1['node_id']}/drain").status_code == 409  # not drained any more
        kinds = [e["kind"] for e in c.get("/v1/events", params={"limit": 1000}).json()]
        assert kinds.count("node_undrain") == 1
    assert _peers(controller, n1).json()["self_state"]["drained"] is False

    # the drain survives a restart (it is in the store, not only in memory)
    with controller.client() as c:
        c.post(f"/v1/nodes/{n2['node_id']}/drain", json={"reason": "disk"})
    controller.stop()
    controller.start()
    with controller.client() as c:
        assert c.get(f"/v1/nodes/{n2['node_id']}").json()["drain"]["reason"] == "disk"


def test_refusals(controller: ControllerProcess) -> None:
    controller.add_region(A)
    n1 = controller.join_node(A)
    with controller.client() as c:
        reader = c.post("/v1/tokens", json={"name": "r", "scope": "reader"}).json()["token"]
        missing = c.post("/v1/nodes/n-0000000000000000/drain", json={"reason": "x"})
        assert missing.status_code == 404 and missing.json()["type"] == "urn:meshctl:problem:not-found"
        assert c.delete("/v1/nodes/n-0000000000000000/drain").status_code == 404
        for body in ({}, {"reason": ""}, {"reason": "x", "extra": 1}):
            r = c.post(f"/v1/nodes/{n1['node_id']}/drain", json=body)
            assert r.status_code == 422, (body, r.text)
            assert r.json()["type"] == "urn:meshctl:problem:invalid-input"
    with controller.client(reader) as c:
        assert c.get(f"/v1/nodes/{n1['node_id']}").status_code == 200
        r = c.post(f"/v1/nodes/{n1['node_id']}/drain", json={"reason": "x"})
        assert r.status_code == 403 and r.json()["type"] == "urn:meshctl:problem:forbidden"
        assert c.delete(f"/v1/nodes/{n1['node_id']}/drain").status_code == 403
    with controller.client(n1["node_token"]) as c:  # a node cannot drain (or undrain) itself
        assert c.post(f"/v1/nodes/{n1['node_id']}/drain", json={"reason": "x"}).status_code == 403
    with controller.client() as c:
        assert c.get(f"/v1/nodes/{n1['node_id']}").json()["drained"] is False


def test_region_drain_reaches_its_nodes_peer_lists(controller: ControllerProcess) -> None:
    controller.add_region(A)
    controller.add_region(B)
    a = controller.join_node(A)
    b = controller.join_node(B)
    etag = _peers(controller, a).headers["etag"]
    with controller.client() as c:
        assert c.post(f"/v1/regions/{A}/drain", json={"reason": "provider incident"}).status_code == 200
    r = _peers(controller, a, headers={"If-None-Match": etag})
    assert r.status_code == 200  # the generation moved: a long poll wakes
    me = r.json()["self_state"]
    assert me == {
        **me,
        "drained": True,
        "scope": "region",
        "reason": "provider incident",
        "region_drained": True,
        "node_drain": None,
    }
    assert me["region_drain"]["reason"] == "provider incident"
    assert [p["drained"] for p in _peers(controller, b).json()["peers"]] == [True]
    with controller.client() as c:
        node = c.get(f"/v1/nodes/{a['node_id']}").json()
        assert node["drained"] is True and node["drained_by"] == "region" and node["drain"] is None
        # a node drained by its region: DELETE on the node says so (409); the region's drain is lifted on the region
        assert c.delete(f"/v1/nodes/{a['node_id']}/drain").status_code == 409
        assert c.delete(f"/v1/regions/{A}/drain").status_code == 200
    assert _peers(controller, a).json()["self_state"]["drained"] is False


def test_placement_skips_drained_nodes_and_regions_without_a_node_taking_sessions(
    controller: ControllerProcess,
) -> None:
    controller.add_region("aws:us-east-1", 38.9, -77.4, "ashburn")
    controller.add_region("azure:eastus", 37.4, -79.2, "ashburn")
    n1 = controller.join_node("aws:us-east-1")
    n2 = controller.join_node("aws:us-east-1")
    controller.join_node("azure:eastus")

    def place() -> dict[str, Any]:
        with controller.client() as c:
            r = c.get("/v1/placement", params={"near": "aws:us-east-1"})
            assert r.status_code == 200, r.text
            return dict(r.json())

    p = place()
    assert p["region"] == "aws:us-east-1" and p["nodes"] == sorted([n1["node_id"], n2["node_id"]])
    with controller.client() as c:
        c.post(f"/v1/nodes/{n1['node_id']}/drain", json={"reason": "r"})
    p = place()
    assert p["region"] == "aws:us-east-1" and p["nodes"] == [n2["node_id"]]
    with controller.client() as c:
        preview = c.post(f"/v1/nodes/{n2['node_id']}/drain", params={"dry_run": "true"}, json={"reason": "r"}).json()
        assert preview["region_nodes_left"] == []
        assert {"near": "aws:us-east-1", "before": "aws:us-east-1", "after": "azure:eastus"} in preview[
            "placements_changed"
        ]
        c.post(f"/v1/nodes/{n2['node_id']}/drain", json={"reason": "r"})
    p = place()
    assert p["region"] == "azure:eastus", p
    assert "every node" in p["reason"]
    with controller.client() as c:
        c.delete(f"/v1/nodes/{n2['node_id']}/drain")
    assert place()["region"] == "aws:us-east-1"


def test_a_region_whose_every_node_is_drained_relays_nothing(controller: ControllerProcess) -> None:
    rtts = {(A, B): 20.0, (B, A): 20.0, (B, C): 20.0, (C, B): 20.0, (A, C): 100.0, (C, A): 100.0}
    controller.feed_links(rtts)

    def path() -> list[str]:
        with controller.client() as c:
            return list(c.get(f"/v1/routes/{A}/{C}").json()["path"])

    controller.wait_for(lambda: path() == [A, B, C], what="A->C via B")
    with controller.client() as c:
        b_nodes = [n["id"] for n in c.get("/v1/nodes", params={"region": B}).json()]
        for n in b_nodes:
            assert c.post(f"/v1/nodes/{n}/drain", json={"reason": "r"}).status_code == 200
    controller.feed_links(rtts)
    controller.wait_for(lambda: path() == [A, C], what="A->C direct: B's only node is drained")
    with controller.client() as c:
        for n in b_nodes:
            c.delete(f"/v1/nodes/{n}/drain")
    controller.feed_links(rtts)
    controller.wait_for(lambda: path() == [A, B, C], what="A->C via B again")


def test_the_command_line_drains_by_name_or_id(controller: ControllerProcess, tmp_path: Path) -> None:
    controller.add_region(A)
    n1 = controller.join_node(A, "media-7")
    env = {**os.environ, "MESHCTL_CONTROLLER": controller.url, "MESHCTL_TOKEN": controller.admin_token}
    env.pop("MESHCTL_TOKEN_FILE", None)
    env["MESHCTL_CONFIG"] = str(tmp_path / "none.yaml")

    def meshctl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "meshctl", *args], env=env, capture_output=True, text=True)

    dry = meshctl("-o", "json", "node", "drain", "media-7", "--reason", "kernel update", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["dry_run"] is True
    done = meshctl("node", "drain", "media-7", "--reason", "kernel update")
    assert done.returncode == 0, done.stderr
    assert "drained" in done.stdout and "kernel update" in done.stdout
    with controller.client() as c:
        assert c.get(f"/v1/nodes/{n1['node_id']}").json()["drain"]["reason"] == "kernel update"
    assert meshctl("node", "undrain", n1["node_id"]).returncode == 0
    again = meshctl("node", "undrain", n1["node_id"])
    assert again.returncode == 7 and "not drained" in again.stderr  # 409: one line, exit 7
    missing = meshctl("node", "drain", "no-such-node", "--reason", "x")
    assert missing.returncode == 6 and "no node with the id or name 'no-such-node'" in missing.stderr


def test_a_waiting_peer_long_poll_wakes_at_once_on_a_drain(controller: ControllerProcess) -> None:
    """The agent learns its drain from the peer long poll it holds, as the agent does it (again and
    again with the last ETag): a drain of its region, and one of its own, must answer that poll at
    once (the drain lab allows a second in all), not at a later tick."""
    controller.add_region(A)
    controller.add_region(B)
    a = controller.join_node(A)
    controller.join_node(B)

    def seen_after(change: Any, drained: bool) -> tuple[float, dict[str, Any]]:
        out: dict[str, Any] = {}
        stop = threading.Event()

        def follow() -> None:  # the agent's loop
            etag = _peers(controller, a).headers["etag"]
            while not stop.is_set():
                r = _peers(controller, a, headers={"If-None-Match": etag}, params={"wait": 20}, timeout=30)
                if r.status_code == 200:
                    etag = r.headers["etag"]
                    if r.json()["self_state"]["drained"] is drained and "sent" in out:
                        out["at"], out["me"] = time.monotonic(), r.json()["self_state"]
                        return

        t = threading.Thread(target=follow)
        t.start()
        time.sleep(0.5)  # the poll is waiting
        out["sent"] = time.monotonic()
        change()
        t.join(25)
        stop.set()
        assert "at" in out, "the poll never saw the change"
        return out["at"] - out["sent"], out["me"]

    def drain_region() -> None:
        with controller.client() as c:
            assert c.post(f"/v1/regions/{A}/drain", json={"reason": "provider incident"}).status_code == 200

    took, me = seen_after(drain_region, True)
    assert me["scope"] == "region"
    assert took < 1.0, f"the region drain reached the waiting poll after {took:.2f} s"

    def undrain_region() -> None:
        with controller.client() as c:
            assert c.delete(f"/v1/regions/{A}/drain").status_code == 200

    took, me = seen_after(undrain_region, False)
    assert took < 1.0, took

    def drain_node() -> None:
        with controller.client() as c:
            assert c.post(f"/v1/nodes/{a['node_id']}/drain", json={"reason": "kernel upgrade"}).status_code == 200

    took, me = seen_after(drain_node, True)
    assert me["scope"] == "node" and took < 1.0, took
