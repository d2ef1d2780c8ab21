"""The agent follows its peer list by deltas (`GET /v1/nodes/{id}/peers?since=`), over HTTP.

A real controller and the agent's own long-poll loop (`Agent.follow_peers`); only the step that
hands the list to WireGuard is left out (the labs run it with wireguard-go). After joins, a
removal, a key rotation and drains, the list the agent holds equals the whole list the
controller gives, and every answer after the first was a delta of a few entries.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
from pathlib import Path
from typing import Any

import httpx

from probes.agent import Agent
from probes.config import AgentConfig
from tests.conftest import ControllerProcess

REGIONS = ["aws:us-east-1", "gcp:europe-west1"]


def deltas_served(c: httpx.Client) -> float:
    m = re.search(r"^mesh_peer_deltas_served_total (\S+)$", c.get("/metrics").text, re.M)
    assert m
    return float(m.group(1))


def test_the_agent_follows_its_peer_list_by_deltas(controller: ControllerProcess, tmp_path: Path) -> None:
    for r in REGIONS:
        controller.add_region(r)
    serial = iter(range(1000))

    def join(c: httpx.Client, region: str) -> dict[str, Any]:
        i = next(serial)
        token = c.post("/v1/join-tokens", json={"region": region, "ttl_s": 600, "uses": 1}).json()["token"]
        key = base64.b64encode(i.to_bytes(32, "big")).decode()
        body = {"join_token": token, "region": region, "name": f"n{i}", "public_key": key, "endpoint": f"192.0.2.{i}:1"}
        r = c.post("/v1/nodes", json=body)
        assert r.status_code == 201, r.text
        return dict(r.json())

    async def main() -> None:
        with controller.client() as c:
            me = join(c, REGIONS[0])
            joined = [join(c, REGIONS[i % 2]) for i in range(30)]
            others = [n["node_id"] for n in joined]
            cfg = AgentConfig(controller.url, REGIONS[0], "192.0.2.250:51820", "mt0", tmp_path / "state")
            agent = Agent(cfg)
            agent.http = httpx.AsyncClient(base_url=controller.url)
            (agent.state / "credential.json").write_text(
                json.dumps({"node_id": me["node_id"], "node_token": me["node_token"]})
            )
            answers: list[int] = []  # bytes of each answer the agent applied

            async def adopt(peerlist: dict[str, Any]) -> None:  # what WireGuard would be given
                agent.observe_self_state(peerlist.get("self_state"))
                agent.peerlist = peerlist

            agent.apply_peerlist_off_loop = adopt  # type: ignore[method-assign]
            agent.http.event_hooks["response"] = [lambda r: _count(r, answers)]
            follow = asyncio.create_task(agent.follow_peers())

            async def settled(step: str) -> None:
                whole = c.get(f"/v1/nodes/{me['node_id']}/peers").json()
                for _ in range(200):
                    if (
                        agent.peerlist.get("peers") == whole["peers"]
                        and agent.peerlist.get("generation") == whole["generation"]
                    ):
                        return
                    await asyncio.sleep(0.05)
                raise AssertionError(f"{step}: the agent's list is not the controller's")

            try:
                await settled("start")
                first = deltas_served(c)
                join(c, REGIONS[1])
                await settled("a join")
                c.delete(f"/v1/nodes/{others[0]}")
                await settled("a removal")
                new_key = base64.b64encode(b"k" * 32).decode()
                auth = {"Authorization": f"Bearer {joined[1]['node_token']}"}
                r = httpx.put(f"{controller.url}/v1/nodes/{others[1]}/key", json={"public_key": new_key}, headers=auth)
                assert r.status_code == 200, r.text
                await settled("a key rotation")
                c.post(f"/v1/nodes/{others[2]}/drain", json={"reason": "test"}).raise_for_status()
                await settled("a node drain")
                c.post(f"/v1/regions/{REGIONS[0]}/drain", json={"reason": "test"}).raise_for_status()
                await settled("its region's drain")
                assert agent.health.drain.drained and agent.peerlist["self_state"]["drained"]
                assert deltas_served(c) - first >= 5
                # 30 peers once; then one entry (join, removal, key, node drain), then the region's half
                assert answers[0] > 5_000 and max(answers[1:5]) < 1_000 and answers[5] < answers[0] * 0.6, answers
            finally:
                follow.cancel()
                await asyncio.gather(follow, return_exceptions=True)
                await agent.http.aclose()

    asyncio.run(main())


async def _count(r: httpx.Response, answers: list[int]) -> None:
    if r.request.url.path.endswith("/peers") and r.status_code == 200:
        await r.aread()
        answers.append(len(r.content))
