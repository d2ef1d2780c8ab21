"""The agent never drops a window it could still deliver (issue 14, item 3).

The controller is an httpx MockTransport that answers POST /v1/reports from a script; what
matters is what reaches the controller, what stays in the spool, the agent's metrics and its
log lines (one per episode, not per retry).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from probes import cli
from probes.agent import Agent
from probes.config import AgentConfig
from probes.problem import retry_after
from probes.reporter import NodeRemoved

REMOVED = {
    "type": "urn:meshctl:problem:node-removed",
    "title": "Node removed",
    "status": 410,
    "detail": "node n-1 was removed",
}


def problem(status: int, slug: str, detail: str, field: str | None = None, **headers: str) -> httpx.Response:
    body = {"type": f"urn:meshctl:problem:{slug}", "title": slug, "status": status, "detail": detail, "field": field}
    return httpx.Response(status, json=body, headers={"content-type": "application/problem+json", **headers})


ACCEPTED = httpx.Response(202, json={"seq": 0, "accepted": True})
Step = httpx.Response | type[httpx.TransportError]


class Controller:
    """Answers reports from a script (the last step repeats); peers (the credential check) with `peers`."""

    def __init__(self, *script: Step, peers: httpx.Response | None = None) -> None:
        self.script = list(script)
        self.peers = peers or httpx.Response(200, json={"generation": 1, "peers": []})
        self.reports: list[int] = []
        self.accepted: list[int] = []
        self.checks = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        assert request.headers["authorization"] == "Bearer msh_n_x"
        if request.method == "GET" and request.url.path == "/v1/nodes/n-1/peers":
            self.checks += 1
            return self.peers
        assert request.method == "POST" and request.url.path == "/v1/reports"
        seq = json.loads(request.content)["seq"]
        self.reports.append(seq)
        step = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if isinstance(step, type):
            raise step("cut", request=request)
        if step.status_code == 202:
            self.accepted.append(seq)
        return step


def make_agent(tmp_path: Path, controller: Controller, windows: int = 1) -> tuple[Agent, list[float]]:
    cfg = AgentConfig("http://ctl", "aws:us-east-1", "192.0.2.1:51820", "mt0", tmp_path / "state", window_s=0.2)
    agent = Agent(cfg)
    agent.http = httpx.AsyncClient(base_url=cfg.controller, transport=httpx.MockTransport(controller))
    (agent.state / "credential.json").write_text(json.dumps({"node_id": "n-1", "node_token": "msh_n_x"}))
    for seq in range(windows):
        agent.spool.put(seq, {"node_id": "n-1", "seq": seq, "peers": []})
    waits: list[float] = []

    async def record(seconds: float) -> None:
        waits.append(seconds)
        await asyncio.sleep(0)

    agent._sleep = record
    return agent, waits


def run_reporter(agent: Agent, until: Callable[[], bool], limit: float = 5.0) -> None:
    async def go() -> None:
        task = asyncio.create_task(agent.reporter())
        for _ in range(int(limit / 0.005)):
            if until() or task.done():
                break
            await asyncio.sleep(0.005)
        if task.done():
            task.result()  # raises what ended it
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(go())


def metric(agent: Agent, name: str, **labels: str) -> float:
    return agent.registry.get_sample_value(name, labels) or 0.0


def dropped(agent: Agent) -> float:
    reasons = ("spool_bound", "invalid", "too_large", "clock", "duplicate", "refused")
    return sum(metric(agent, "mesh_agent_reports_dropped_total", reason=r) for r in reasons)


@pytest.mark.parametrize("status", [401, 403])
def test_a_refused_credential_keeps_the_window_and_delivers_it_later(
    status: int, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Behind a load balancer a replica that has not seen the credential yet answers 401."""
    refusal = problem(status, "unauthorized", "invalid or revoked token")
    controller = Controller(refusal, refusal, refusal, ACCEPTED)
    agent, waits = make_agent(tmp_path, controller, windows=2)
    with caplog.at_level(logging.INFO, logger="meshctl.agent"):
        run_reporter(agent, lambda: len(agent.spool) == 0)
    assert controller.accepted == [0, 1] and controller.reports == [0, 0, 0, 0, 1]
    assert len(agent.spool) == 0 and dropped(agent) == 0
    assert metric(agent, "mesh_agent_reports_delivered_total") == 2
    assert metric(agent, "mesh_agent_report_retries_total", reason="auth") == 3
    assert controller.checks == 1, "one credential check per episode, not per retry"
    refused = [m for m in caplog.messages if "refused" in m]
    assert refused == [
        f"report 0 refused ({status}): invalid or revoked token; credential check: accepted (the replica that"
        " refused it may not know it yet); kept in the spool (2 windows), retrying with back-off"
    ]
    assert "reports delivered again (after 3 retries: auth)" in caplog.messages
    assert len(waits) == 3 and all(w > 0 for w in waits), "backed off between tries"


def test_the_credential_check_says_when_it_is_refused_too(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    refusal = problem(401, "unauthorized", "invalid or revoked token")
    controller = Controller(refusal, peers=refusal)
    agent, _ = make_agent(tmp_path, controller)
    with caplog.at_level(logging.WARNING, logger="meshctl.agent"):
        run_reporter(agent, lambda: len(controller.reports) >= 5)
    assert len(agent.spool) == 1 and dropped(agent) == 0 and controller.checks == 1
    assert len(caplog.messages) == 1 and "credential check: refused too (401: invalid or revoked token)" in caplog.text


def test_node_removed_stops_the_agent_with_one_line(tmp_path: Path) -> None:
    controller = Controller(httpx.Response(410, json=REMOVED, headers={"content-type": "application/problem+json"}))
    agent, _ = make_agent(tmp_path, controller)
    with pytest.raises(NodeRemoved) as err:
        run_reporter(agent, lambda: False)
    line = str(err.value)
    assert "\n" not in line and line.startswith("node n-1 was removed from the mesh (node n-1 was removed); stopping")
    assert len(agent.spool) == 1, "the window stays on disk"
    assert isinstance(err.value, RuntimeError), "the agent's command line prints it as one `error:` line"


def test_the_command_line_prints_node_removed_as_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from probes import agent as agent_module

    def removed(cfg: AgentConfig) -> None:
        raise NodeRemoved("node n-1 was removed from the mesh (node n-1 was removed); stopping")

    monkeypatch.setattr(agent_module, "run", removed)
    args = ["run", "--controller", "http://ctl", "--region", "aws:us-east-1", "--endpoint", "192.0.2.1:51820"]
    code = cli.main([*args, "--interface", "mt0", "--state-dir", "/tmp/x"])
    err = capsys.readouterr().err
    assert code == 1 and err == "error: node n-1 was removed from the mesh (node n-1 was removed); stopping\n"


def test_node_removed_from_the_credential_check_stops_too(tmp_path: Path) -> None:
    gone = httpx.Response(410, json=REMOVED, headers={"content-type": "application/problem+json"})
    controller = Controller(problem(401, "unauthorized", "invalid or revoked token"), peers=gone)
    agent, _ = make_agent(tmp_path, controller)
    with pytest.raises(NodeRemoved):
        run_reporter(agent, lambda: False)


def test_a_410_without_the_node_removed_type_does_not_stop_the_agent(tmp_path: Path) -> None:
    """Only the explicit answer stops it: a proxy's bare 410 is retried."""
    controller = Controller(httpx.Response(410, text="Gone"), ACCEPTED)
    agent, _ = make_agent(tmp_path, controller)
    run_reporter(agent, lambda: len(agent.spool) == 0)
    assert controller.accepted == [0] and dropped(agent) == 0


@pytest.mark.parametrize(
    ("failure", "reason"),
    [
        (problem(503, "unavailable", "the database is unreachable"), "unavailable"),
        (problem(500, "internal", "boom"), "unavailable"),
        (httpx.Response(502, text="<html>bad gateway</html>"), "unavailable"),
        (problem(429, "too-many-requests", "slow down"), "throttled"),
        (httpx.ConnectError, "unreachable"),
        (httpx.ReadTimeout, "unreachable"),
    ],
)
def test_unavailable_throttled_and_unreachable_are_retried(
    failure: Step, reason: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    controller = Controller(failure, failure, failure, ACCEPTED)
    agent, waits = make_agent(tmp_path, controller)
    with caplog.at_level(logging.INFO, logger="meshctl.agent"):
        run_reporter(agent, lambda: len(agent.spool) == 0)
    assert controller.accepted == [0] and dropped(agent) == 0
    assert metric(agent, "mesh_agent_report_retries_total", reason=reason) == 3
    assert len([m for m in caplog.messages if "retrying with back-off" in m]) == 1, "one line per episode"
    assert len(waits) == 3 and waits[2] > 0


def test_retry_after_is_honoured(tmp_path: Path) -> None:
    controller = Controller(problem(429, "too-many-requests", "slow down", **{"Retry-After": "7"}), ACCEPTED)
    agent, waits = make_agent(tmp_path, controller)
    run_reporter(agent, lambda: len(agent.spool) == 0)
    assert controller.accepted == [0] and waits[0] >= 7.0


@pytest.mark.parametrize(
    ("value", "seconds"), [("7", 7.0), ("Wed, 21 Oct 2015 07:28:10 GMT", 10.0), ("soon", None), (None, None)]
)
def test_retry_after_header(value: str | None, seconds: float | None) -> None:
    headers = {"Retry-After": value} if value else {}
    now = 1445412480.0  # 2015-10-21 07:28:00 UTC
    assert retry_after(httpx.Response(429, headers=headers), now=now) == seconds


CLOCK_ANSWERS = [
    problem(422, "invalid-input", "window_start: is in the future", field="window_start"),
    httpx.Response(422, json={"detail": "window_start: is in the future"}),  # the shape before problem details
    problem(422, "invalid-input", "window_start: older than the controller keeps", field="window_start"),
]


@pytest.mark.parametrize("answer", CLOCK_ANSWERS)
def test_a_window_refused_for_its_time_is_kept_once_and_the_clock_named(
    answer: httpx.Response, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    controller = Controller(answer, ACCEPTED)
    agent, _ = make_agent(tmp_path, controller)
    with caplog.at_level(logging.WARNING, logger="meshctl.agent"):
        run_reporter(agent, lambda: len(agent.spool) == 0)
    assert controller.accepted == [0] and dropped(agent) == 0, "kept, and taken on the next try"
    assert len(caplog.messages) == 1 and "this node's clock is likely off (check NTP)" in caplog.messages[0]


def test_a_window_refused_twice_for_its_time_is_dropped_as_clock(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    controller = Controller(CLOCK_ANSWERS[0])
    agent, _ = make_agent(tmp_path, controller, windows=3)
    with caplog.at_level(logging.WARNING, logger="meshctl.agent"):
        run_reporter(agent, lambda: len(agent.spool) == 0)
    assert controller.reports == [0, 1, 2, 0, 1, 2], "each window tried twice, none blocks the others"
    assert metric(agent, "mesh_agent_reports_dropped_total", reason="clock") == 3
    assert len([m for m in caplog.messages if "clock is likely off" in m]) == 1


def test_an_already_delivered_window_is_not_a_loss(tmp_path: Path) -> None:
    controller = Controller(problem(409, "conflict", "seq: window 0 of n-1 was already accepted", field="seq"))
    agent, _ = make_agent(tmp_path, controller)
    run_reporter(agent, lambda: len(agent.spool) == 0)
    assert dropped(agent) == 0 and metric(agent, "mesh_agent_reports_already_delivered_total") == 1


@pytest.mark.parametrize(("status", "reason"), [(400, "invalid"), (413, "too_large"), (422, "invalid")])
def test_a_window_refused_for_its_content_is_dropped_and_counted(status: int, reason: str, tmp_path: Path) -> None:
    body: Any = problem(status, "invalid-input", "the report is invalid", field="peers[0].sent")
    controller = Controller(body, ACCEPTED)
    agent, _ = make_agent(tmp_path, controller, windows=2)
    run_reporter(agent, lambda: len(agent.spool) == 0)
    assert controller.accepted == [1] and metric(agent, "mesh_agent_reports_dropped_total", reason=reason) == 1


PEERS = [
    {"peer_node_id": "n-2", "sent": 5, "received": 5, "rtt_p50_ms": 1.5, "rtt_p90_ms": 2.0, "jitter_ms": 0.1},
    {"peer_node_id": "n-3", "sent": 5, "received": 0, "reorders": 0, "duplicates": 0},
]
# what the release before peers-as-columns answered a report whose peers are an object
OLD_CONTROLLER_REFUSAL = problem(422, "invalid-input", "invalid input: peers: Input should be a valid array", "peers")


@pytest.mark.parametrize("older", [False, True])
def test_peers_go_as_columns_and_as_a_list_to_an_older_controller(
    older: bool, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    controller = Controller(ACCEPTED)
    bodies: list[dict[str, Any]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            bodies.append(json.loads(request.content))
            if older and isinstance(bodies[-1]["peers"], dict):
                return OLD_CONTROLLER_REFUSAL
        return controller(request)

    agent, _ = make_agent(tmp_path, controller, windows=0)
    agent.http = httpx.AsyncClient(base_url="http://ctl", transport=httpx.MockTransport(answer))
    for seq in range(3):
        agent.spool.put(seq, {"node_id": "n-1", "seq": seq, "peers": PEERS})
    with caplog.at_level(logging.INFO, logger="meshctl.agent"):
        run_reporter(agent, lambda: len(agent.spool) == 0)
    assert controller.accepted == [0, 1, 2] and dropped(agent) == 0
    columns = {
        "peer_node_id": ["n-2", "n-3"],
        "sent": [5, 5],
        "received": [5, 0],
        "rtt_p50_ms": [1.5, None],
        "rtt_p90_ms": [2.0, None],
        "jitter_ms": [0.1, None],
        "reorders": [None, 0],
        "duplicates": [None, 0],
    }
    if older:  # the first window goes again at once as a list, and every one after it
        assert [b["peers"] for b in bodies] == [columns, PEERS, PEERS, PEERS]
        assert len([m for m in caplog.messages if "peers only as a list" in m]) == 1
    else:
        assert [b["peers"] for b in bodies] == [columns] * 3
