"""Drains reach the node: the agent's /healthz and its drain hooks, on loopback.

The controller is a real process, the agent follows its peer list by long poll as on a node, and
/healthz is a real HTTP server; only WireGuard is left out (the peers are not programmed into an
interface: the lab test does that with wireguard-go).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from probes import cli, wg
from probes.agent import Agent
from probes.config import AgentConfig, AgentConfigError, load
from probes.health import DrainState, Health, HealthListenError, HealthServer
from probes.hooks import Hooks
from tests.conftest import ControllerProcess, client_side_backend

backend = pytest.fixture(params=["sqlite"])(client_side_backend)
REGION = "aws:us-east-1"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_verdict_active_drained_and_the_controller_grace() -> None:
    clock = Clock()
    h = Health(controller_grace_s=60, clock=clock)
    assert h.verdict()[0] == 200 and h.verdict()[1]["status"] == "active"
    h.drain = DrainState(True, "region", "provider incident", "2026-11-29T17:00:00Z")
    status, body = h.verdict()
    assert status == 503 and body["status"] == "drained"
    assert body["scope"] == "region" and body["reason"] == "provider incident"
    h.drain = DrainState()
    clock.now += 100  # a long poll held open: not silence
    assert h.verdict()[0] == 200
    h.contact()
    h.unreachable()
    clock.now += 59.9  # the controller does not answer, within the grace: fail static
    assert h.verdict()[0] == 200
    clock.now += 0.2
    status, body = h.verdict()
    assert status == 503 and body["status"] == "controller_unreachable" and "grace 60 s" in body["reason"]
    h.contact()
    assert h.verdict()[0] == 200
    off = Health(controller_grace_s=0, clock=clock)
    off.unreachable()  # 0: never 503 for the controller's silence
    clock.now += 10**6
    assert off.verdict()[0] == 200


def _get(port: int, path: str = "/healthz", method: str = "GET") -> httpx.Response:
    return httpx.request(method, f"http://127.0.0.1:{port}{path}", timeout=5)


async def _call(fn: Callable[[], httpx.Response]) -> httpx.Response:
    return await asyncio.to_thread(fn)


def test_the_server_answers_healthz_only_and_says_when_its_port_is_taken() -> None:
    async def main() -> None:
        h = Health()
        server = HealthServer(h, "127.0.0.1:0")
        await server.start()
        try:
            r = await _call(lambda: _get(server.port))
            assert r.status_code == 200 and r.headers["content-type"] == "application/json"
            assert r.json()["status"] == "active"
            h.drain = DrainState(True, "node", "kernel update", None)
            r = await _call(lambda: _get(server.port))
            assert r.status_code == 503 and r.json()["reason"] == "kernel update"
            head = await _call(lambda: _get(server.port, method="HEAD"))
            assert head.status_code == 503 and head.content == b""
            assert (await _call(lambda: _get(server.port, "/metrics"))).status_code == 404
            post = await _call(lambda: _get(server.port, method="POST"))
            assert post.status_code == 405 and post.headers["allow"] == "GET, HEAD"
            taken = HealthServer(h, f"127.0.0.1:{server.port}")
            with pytest.raises(HealthListenError, match=r"127.0.0.1:\d+: already in use.*--health-listen"):
                await taken.start()
        finally:
            await server.close()

    asyncio.run(main())


def test_flags_and_environment() -> None:
    ns = cli.build_parser().parse_args(
        [
            "run",
            "--health-listen", "127.0.0.1:19901",
            "--controller-grace", "45",
            "--on-drain", "systemctl reload media",
            "--on-undrain", "true",
            "--early-after", "4",
        ]
    )  # fmt: skip
    base = {"controller": "http://c", "region": REGION, "endpoint": "192.0.2.1:51820", "interface": "m0"}
    cfg = load({**cli.config_flags(ns), **base, "state_dir": "/tmp/x"}, env={})
    assert (cfg.health_listen, cfg.controller_grace_s, cfg.on_drain, cfg.on_undrain, cfg.early_after) == (
        "127.0.0.1:19901",
        45.0,
        "systemctl reload media",
        "true",
        4,
    )
    defaults = load({**base, "state_dir": "/tmp/x"}, env={"MESH_ON_DRAIN": "/usr/local/bin/stop-rooms"})
    assert defaults.health_listen == "0.0.0.0:9901" and defaults.controller_grace_s == 300.0
    assert defaults.early_after == 3 and defaults.on_drain == "/usr/local/bin/stop-rooms"
    with pytest.raises(AgentConfigError, match="health_listen"):
        load({**base, "state_dir": "/tmp/x", "health_listen": "nonsense"}, env={})
    with pytest.raises(AgentConfigError, match="controller_grace_s"):
        load({**base, "state_dir": "/tmp/x", "controller_grace_s": "-1"}, env={})


def _hook_script(tmp_path: Path, name: str, exit_code: int = 0, sleep: float = 0) -> str:
    out = tmp_path / f"{name}.log"
    script = tmp_path / f"{name}.sh"
    script.write_text(
        "#!/bin/sh\n"
        f'echo "$MESH_DRAIN_STATE|$MESH_DRAIN_SCOPE|$MESH_NODE_ID|$MESH_REGION|$MESH_DRAIN_REASON" >> {out}\n'
        'echo "hello from the hook"\n'
        f"sleep {sleep}\nexit {exit_code}\n"
    )
    script.chmod(0o755)
    return f"{script} --an-arg 'two words'"


def _lines(tmp_path: Path, name: str) -> list[str]:
    path = tmp_path / f"{name}.log"
    return path.read_text().splitlines() if path.exists() else []


async def _until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def test_hooks_run_once_per_transition_with_the_reason_and_survive_failures(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "meshctl.agent")

    async def main() -> None:
        hooks = Hooks(_hook_script(tmp_path, "drain"), _hook_script(tmp_path, "undrain", exit_code=3), timeout_s=5)
        hooks.node_id, hooks.region = "n-1", REGION
        task = asyncio.ensure_future(hooks.run())
        drained = DrainState(True, "node", "kernel update", "2026-11-29T17:00:00Z")
        for _ in range(5):  # every poll says drained: one run
            hooks.observe(drained)
        hooks.observe(DrainState(True, "region", "now the region too", None))  # reason changed: no run
        await _until(lambda: hooks.runs == [("drain", 0)], 5, "the drain hook")
        hooks.observe(DrainState())
        hooks.observe(DrainState())
        await _until(lambda: len(hooks.runs) == 2, 5, "the undrain hook")
        assert hooks.runs == [("drain", 0), ("undrain", 3)]  # its failure is logged, nothing else
        await asyncio.sleep(0.3)
        assert len(hooks.runs) == 2
        task.cancel()

    asyncio.run(main())
    assert _lines(tmp_path, "drain") == [f"drained|node|n-1|{REGION}|kernel update"]
    assert _lines(tmp_path, "undrain") == [f"active||n-1|{REGION}|"]
    assert "on-drain hook: hello from the hook" in caplog.text
    assert "on-undrain hook: exited with status 3" in caplog.text


def test_a_hook_that_hangs_is_killed_and_one_that_is_missing_is_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "meshctl.agent")

    async def main() -> None:
        hooks = Hooks(_hook_script(tmp_path, "slow", sleep=30), str(tmp_path / "no-such-hook"), timeout_s=0.5)
        task = asyncio.ensure_future(hooks.run())
        t0 = time.monotonic()
        hooks.observe(DrainState(True, "node", "r", None))
        await _until(lambda: hooks.runs, 5, "the slow hook")
        assert time.monotonic() - t0 < 3
        hooks.observe(DrainState())
        await _until(lambda: len(hooks.runs) == 2, 5, "the missing hook")
        assert hooks.runs == [("drain", None), ("undrain", None)]
        task.cancel()

    asyncio.run(main())
    assert "on-drain hook: killed after 0.5 s" in caplog.text
    assert "on-undrain hook: cannot run" in caplog.text


# --- the agent with a real controller --------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def _agent(
    controller: ControllerProcess, tmp_path: Path, node: dict[str, Any], grace: float, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Agent]:
    """The agent's peer follower, /healthz and hooks, joined as `node` (WireGuard left out)."""
    monkeypatch.setattr(wg, "apply_peers", lambda *_a, **_k: (0, 0))
    cfg = AgentConfig(
        controller.url,
        REGION,
        "192.0.2.1:51820",
        "mt0",
        tmp_path / "state",
        health_listen=f"127.0.0.1:{_free_port()}",
        controller_grace_s=grace,
        on_drain=_hook_script(tmp_path, "drain"),
        on_undrain=_hook_script(tmp_path, "undrain"),
    )
    agent = Agent(cfg)
    cred = {k: node[k] for k in ("node_id", "node_token", "overlay_ip", "overlay_cidr", "region")}
    (agent.state / "credential.json").write_text(json.dumps(cred))
    agent.health.node_id = agent.hooks.node_id = node["node_id"]
    agent.hooks.region = REGION
    server = HealthServer(agent.health, cfg.health_listen)
    await server.start()
    async with httpx.AsyncClient(base_url=cfg.controller, timeout=10) as http:
        agent.http = http
        tasks = [asyncio.ensure_future(agent.follow_peers()), asyncio.ensure_future(agent.hooks.run())]
        try:
            yield agent
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await server.close()


def _healthz(agent: Agent) -> Awaitable[httpx.Response]:
    port = int(agent.cfg.health_listen.rsplit(":", 1)[1])
    return _call(lambda: _get(port))


def _admin(controller: ControllerProcess, method: str, path: str, **kw: Any) -> httpx.Response:
    with controller.client() as c:
        r = c.request(method, path, **kw)
        assert r.status_code == 200, r.text
        return r


def test_a_drain_reaches_healthz_at_once_and_the_hook_runs_once(
    controller: ControllerProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    controller.add_region(REGION)
    node = controller.join_node(REGION)
    node_id = node["node_id"]

    async def main() -> None:
        async with _agent(controller, tmp_path, node, 300, monkeypatch) as agent:
            await _until(lambda: agent.health.node_id and agent.peerlist, 10, "the first peer list")
            assert (await _healthz(agent)).status_code == 200
            await asyncio.sleep(0.3)  # the agent's long poll is waiting now
            t0 = time.monotonic()
            await asyncio.to_thread(
                _admin, controller, "POST", f"/v1/nodes/{node_id}/drain", json={"reason": "kernel update"}
            )
            while (r := await _healthz(agent)).status_code != 503:
                assert time.monotonic() - t0 < 1.0, "not 503 within 1 s of the drain"
                await asyncio.sleep(0.02)
            assert r.json() == {**r.json(), "status": "drained", "scope": "node", "reason": "kernel update"}
            assert r.json()["node_id"] == node_id
            await _until(lambda: _lines(tmp_path, "drain"), 5, "the drain hook")

            # the region drained too while the node is: no second run; the node's own drain is lifted,
            # the region's still holds it (503, scope region); then the region's is lifted: 200, undrain once
            await asyncio.to_thread(_admin, controller, "POST", f"/v1/regions/{REGION}/drain", json={"reason": "az"})
            await asyncio.to_thread(_admin, controller, "DELETE", f"/v1/nodes/{node_id}/drain")
            await _until(lambda: agent.health.drain.scope == "region", 5, "scope region")
            r = await _healthz(agent)
            assert r.status_code == 503 and r.json()["scope"] == "region" and r.json()["reason"] == "az"
            await asyncio.to_thread(_admin, controller, "DELETE", f"/v1/regions/{REGION}/drain")
            t0 = time.monotonic()
            while (await _healthz(agent)).status_code != 200:
                assert time.monotonic() - t0 < 1.0, "not 200 within 1 s of the undrain"
                await asyncio.sleep(0.02)
            await _until(lambda: _lines(tmp_path, "undrain"), 5, "the undrain hook")
            await asyncio.sleep(0.5)
        assert _lines(tmp_path, "drain") == [f"drained|node|{node_id}|{REGION}|kernel update"]
        assert _lines(tmp_path, "undrain") == [f"active||{node_id}|{REGION}|"]

    asyncio.run(main())


def test_fail_static_within_the_grace_then_503_then_back(
    controller: ControllerProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    controller.add_region(REGION)
    node = controller.join_node(REGION)
    grace = 3.0

    async def main() -> None:
        async with _agent(controller, tmp_path, node, grace, monkeypatch) as agent:
            await _until(lambda: agent.peerlist, 10, "the first peer list")
            # the controller shuts down (it stops listening at once, then winds down): the agent's first
            # failure can come as the shutdown begins, so the grace counts from there
            stopping = time.monotonic()
            stop = asyncio.ensure_future(asyncio.to_thread(controller.stop))
            # 200 all through the grace (fail static), while the controller goes and after it went
            while time.monotonic() - stopping < grace - 0.5:
                r = await _healthz(agent)
                assert r.status_code == 200, r.json()
                await asyncio.sleep(0.2)
            await stop
            deadline = time.monotonic() + grace + 5
            while (r := await _healthz(agent)).status_code != 503:
                assert time.monotonic() < deadline, "never 503 after the grace"
                await asyncio.sleep(0.2)
            assert r.json()["status"] == "controller_unreachable" and time.monotonic() - stopping >= grace
            await asyncio.to_thread(controller.start)
            deadline = time.monotonic() + 40  # the agent's back-off, capped
            while (await _healthz(agent)).status_code != 200:
                assert time.monotonic() < deadline, "not back to 200 once the controller answers"
                await asyncio.sleep(0.2)

    asyncio.run(main())


def test_the_agent_stops_with_one_line_when_its_health_port_is_taken(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        code = cli.main(
            [
                "run", "--controller", "http://127.0.0.1:9", "--region", REGION, "--endpoint", "192.0.2.1:51820",
                "--interface", "mt0", "--state-dir", str(tmp_path / "s"), "--metrics-port", str(_free_port()),
                "--health-listen", f"127.0.0.1:{port}", "--join-token", "x",
            ]
        )  # fmt: skip
    assert code == 1
    err = capsys.readouterr().err
    assert f"error: health-listen 127.0.0.1:{port}: already in use" in err and "Traceback" not in err
