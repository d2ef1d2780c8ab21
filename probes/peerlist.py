"""Peer lists as the agent keeps them: a whole list, or one brought up to date by a delta."""

from __future__ import annotations

from typing import Any


def merged(current: dict[str, Any], answer: dict[str, Any]) -> dict[str, Any]:
    """The whole list after `answer` (`GET /v1/nodes/{id}/peers`): the answer itself when it is a
    whole list (`since` null), else `current` with the peers that left taken out and the changed
    ones put in, in node id order as the controller sends whole lists."""
    if answer.get("since") is None:
        return answer
    peers = {p["node_id"]: p for p in current.get("peers", [])}
    for node_id in answer.get("removed", []):
        peers.pop(node_id, None)
    peers.update((p["node_id"], p) for p in answer["peers"])
    return {**answer, "peers": [peers[k] for k in sorted(peers)], "since": None, "removed": []}
