"""A report's peers are checked against the nodes the controller knows, every time it matters.

The controller remembers each node's peer list as last found valid and skips the check while the
same list comes back and no node has left; a node that left makes the same list invalid again.
"""

from __future__ import annotations

from typing import Any

from tests.conftest import ControllerProcess


def _peer(node: dict[str, Any], rtt: float) -> dict[str, Any]:
    return {"peer_node_id": node["node_id"], "sent": 5, "received": 5, "rtt_p50_ms": rtt}


def test_the_same_peers_again_are_refused_once_one_of_them_was_removed(controller: ControllerProcess) -> None:
    for region in ("aws:us-east-1", "gcp:us-east4", "azure:westeurope"):
        controller.add_region(region)
    a, b, c = (controller.join_node(r) for r in ("aws:us-east-1", "gcp:us-east4", "azure:westeurope"))
    peers = [_peer(b, 10.0), _peer(c, 80.0)]
    for _ in range(3):  # the same list, checked once, taken each time
        assert controller.report(a, peers).status_code == 202
    with controller.client() as admin:
        assert admin.delete(f"/v1/nodes/{c['node_id']}").status_code in (200, 204)
    refused = controller.report(a, peers)
    assert refused.status_code == 422, refused.text
    assert refused.json()["field"] == "peers[1].peer_node_id"
    assert refused.json()["detail"] == f"peers[1].peer_node_id: unknown node {c['node_id']!r}"
    assert controller.report(a, peers[:1]).status_code == 202
    # a peer listed twice, or the node itself, after the same list was taken: refused as before
    assert controller.report(a, peers[:1] * 2).status_code == 422
    assert controller.report(a, [*peers[:1], _peer(a, 1.0)]).status_code == 422
    assert controller.report(a, peers[:1]).status_code == 202
    with controller.client() as admin:
        links = {(x["src"], x["dst"]): x for x in admin.get("/v1/links").json()["links"]}
    assert links[("aws:us-east-1", "gcp:us-east4")]["rtt_p50_ms"] == 10.0
