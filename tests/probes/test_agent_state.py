"""The agent's state on disk: a damaged window counter does not stop it, and seqs never go back;
a key rotation that fails in transport never leaves an unregistered key as the active key.

The controller is an httpx MockTransport.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from probes import keys, wg
from probes.agent import SEQ_FILE, Agent
from probes.config import AgentConfig

Handler = Callable[[httpx.Request], httpx.Response]


def make_agent(tmp_path: Path, handler: Handler | None = None) -> Agent:
    cfg = AgentConfig("http://ctl", "aws:us-east-1", "192.0.2.1:51820", "mt0", tmp_path / "state", window_s=0.2)
    agent = Agent(cfg)
    (agent.state / "credential.json").write_text(
        json.dumps({"node_id": "n-1", "node_token": "msh_n_x", "overlay_ip": "10.0.0.2", "overlay_cidr": "10.0.0.0/16"})
    )
    if handler is not None:
        agent.http = httpx.AsyncClient(base_url=cfg.controller, transport=httpx.MockTransport(handler))

    async def no_wait(_seconds: float) -> None:
        await asyncio.sleep(0)

    agent._sleep = no_wait
    return agent


# --- the window counter ----------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["", "12\x00", "not a number", "-3"])
def test_a_damaged_counter_does_not_stop_the_agent(
    damage: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    agent = make_agent(tmp_path)
    agent.spool.put(57, {"seq": 57, "peers": []})
    (agent.state / SEQ_FILE).write_text(damage)
    before_ms = int(time.time() * 1000)
    with caplog.at_level(logging.WARNING, logger="meshctl.agent"):
        first = agent.next_seq()
    assert first >= before_ms and first > 57, "above every seq the node can have sent before"
    assert first < 2**62
    assert [m for m in caplog.messages if "window counter" in m and "time-based" in m]
    assert agent.next_seq() == first + 1
    assert Agent(agent.cfg).next_seq() == first + 2, "the recovered counter is on disk"


def test_a_missing_counter_after_a_join_is_recovered_not_restarted_from_0(tmp_path: Path) -> None:
    """Counting from 0 again would repeat delivered seqs (409) and lose the new windows."""
    agent = make_agent(tmp_path)
    assert not (agent.state / SEQ_FILE).exists()
    assert agent.next_seq() >= int(time.time() * 1000) - 1000


def test_the_counter_never_falls_behind_the_spool(tmp_path: Path) -> None:
    agent = make_agent(tmp_path)
    (agent.state / SEQ_FILE).write_text("3")
    agent.spool.put(9, {"seq": 9, "peers": []})
    assert agent.next_seq() == 10


def test_a_joined_node_counts_from_0(tmp_path: Path) -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        body = {
            "node_id": "n-9",
            "node_token": "msh_n_y",
            "overlay_ip": "10.0.0.9",
            "overlay_cidr": "10.0.0.0/16",
            "region": "aws:us-east-1",
            "peers": {"generation": 1, "peers": []},
        }
        return httpx.Response(201, json=body)

    cfg = AgentConfig("http://ctl", "aws:us-east-1", "192.0.2.1:51820", "mt0", tmp_path / "state", join_token="msh_j_x")
    agent = Agent(cfg)
    agent.http = httpx.AsyncClient(base_url=cfg.controller, transport=httpx.MockTransport(handle))
    asyncio.run(agent.join("PUB"))
    assert [agent.next_seq(), agent.next_seq()] == [0, 1]


# --- key rotation ----------------------------------------------------------------------------


class Controller:
    """Answers PUT /v1/nodes/n-1/key from a script: an exception to raise or a status to answer."""

    def __init__(self, *script: int | type[httpx.TransportError]) -> None:
        self.script = list(script)
        self.keys: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        assert request.method == "PUT" and request.url.path == "/v1/nodes/n-1/key"
        assert request.headers["authorization"] == "Bearer msh_n_x"
        self.keys.append(json.loads(request.content)["public_key"])
        step = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if isinstance(step, type):
            raise step("cut", request=request)
        if step == 200:
            return httpx.Response(200, json={"node_id": "n-1"})
        problem = {"type": "urn:meshctl:problem:x", "title": "x", "status": step, "detail": f"answer {step}"}
        return httpx.Response(step, json=problem, headers={"content-type": "application/problem+json"})


def test_a_rotation_cut_in_transport_keeps_the_old_key_until_the_controller_has_the_new_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    controller = Controller(httpx.ConnectError, httpx.ReadTimeout, 503, 200)
    agent = make_agent(tmp_path, controller)
    old_private, old_public = keys.load_or_create(agent.state)
    agent.public_key = old_public
    agent._tunnel_is_up = True
    brought_up: list[str] = []
    monkeypatch.setattr(wg, "bring_up", lambda ifname, key_file, *a: brought_up.append(key_file.read_text().strip()))

    async def first_attempt() -> bool | None:
        pending = keys.new_pending(agent.state)
        return (await agent.register_pending(pending[1]))[0]

    assert asyncio.run(first_attempt()) is None
    assert keys.load_or_create(agent.state) == (old_private, old_public), "the active key is still the old one"
    assert agent.public_key == old_public and brought_up == []
    pending = keys.load_pending(agent.state)
    assert pending is not None

    asyncio.run(agent.rotate_key())  # retries the same pending key until the controller takes it
    assert controller.keys == [pending[1]] * 4, "the same new key, never a second one"
    assert keys.load_or_create(agent.state) == pending and keys.load_pending(agent.state) is None
    assert agent.public_key == pending[1] and brought_up == [pending[0]]


def test_a_refused_rotation_discards_the_new_key(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    agent = make_agent(tmp_path, Controller(422))
    before = keys.load_or_create(agent.state)
    with caplog.at_level(logging.ERROR, logger="meshctl.agent"):
        asyncio.run(agent.rotate_key())
    assert keys.load_or_create(agent.state) == before and keys.load_pending(agent.state) is None
    assert "rotate-key refused (422): answer 422; kept the old key" in caplog.messages


@pytest.mark.parametrize(
    ("answer", "promoted", "still_pending"),
    [(200, True, False), (422, False, False), (httpx.ConnectError, False, True), (401, False, True)],
)
def test_a_pending_key_at_start_is_registered_again_or_discarded(
    answer: int | type[httpx.TransportError], promoted: bool, still_pending: bool, tmp_path: Path
) -> None:
    """An agent killed mid-rotation: the controller may have the new key (its answer lost) or not."""
    agent = make_agent(tmp_path, Controller(answer))
    before = keys.load_or_create(agent.state)
    pending = keys.new_pending(agent.state)
    assert asyncio.run(agent.resume_rotation()) is still_pending
    assert keys.load_or_create(agent.state) == (pending if promoted else before)
    assert (keys.load_pending(agent.state) == pending) is still_pending


def test_a_truncated_pending_key_is_discarded_at_start(tmp_path: Path) -> None:
    agent = make_agent(tmp_path, Controller(200))
    before = keys.load_or_create(agent.state)
    (agent.state / keys.PENDING_KEY_FILE).write_text("")
    (agent.state / keys.PENDING_KEY_FILE).chmod(0o600)
    assert asyncio.run(agent.resume_rotation()) is False
    assert keys.load_or_create(agent.state) == before and not (agent.state / keys.PENDING_KEY_FILE).exists()
