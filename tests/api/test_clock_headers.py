"""Clocks over the real API: a node's clock offset measured from `X-Mesh-Sent-At` and told back."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from tests.conftest import ControllerProcess


def _body(node: dict, seq: int, start: datetime) -> dict:
    return {"node_id": node["node_id"], "seq": seq, "window_start": start.isoformat(), "window_s": 1.0, "peers": []}


def test_a_fast_clock_is_measured_told_and_its_windows_kept(controller: ControllerProcess) -> None:
    controller.add_region("aws:us-east-1", 38.9, -77.4)
    node = controller.join_node("aws:us-east-1")
    skew = 90.0
    with controller.client(node["node_token"]) as c:
        for seq in range(3):
            node_now = time.time() + skew  # the node's clock runs 90 s fast
            start = datetime.fromtimestamp(node_now - 1.0, UTC)
            r = c.post("/v1/reports", json=_body(node, seq, start), headers={"X-Mesh-Sent-At": f"{node_now:.3f}"})
            # kept (in the controller's time), not refused as "in the future"
            assert r.status_code == 202, r.text
            offset = float(r.headers["X-Mesh-Clock-Offset-S"])
            assert abs(offset - skew) < 2.0, offset
        # a value that is not a number is ignored, never an error (the window end still tells)
        node_now = time.time() + skew
        bad = c.post(
            "/v1/reports",
            json=_body(node, 3, datetime.fromtimestamp(node_now - 1.0, UTC)),
            headers={"X-Mesh-Sent-At": "nan"},
        )
        assert bad.status_code == 202, bad.text
    with controller.client() as c:
        shown = next(n for n in c.get("/v1/nodes").json() if n["id"] == node["node_id"])
        assert shown["clock_offset_s"] is not None and abs(shown["clock_offset_s"] - skew) < 2.0, shown
        kinds = [e["kind"] for e in c.get("/v1/events", params={"kind": "clock_skew"}).json()]
        assert kinds, "a clock_skew event when the offset crosses the tolerance"
        states = {r["id"]: r["state"] for r in c.get("/v1/regions").json()}
        assert states["aws:us-east-1"] != "drained"
