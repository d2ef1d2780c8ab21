"""The agent reads a refusal in the new error format (RFC 9457 problem details) and in the old shapes.

The controller's side is tested with the API; here the controller is an httpx MockTransport that
answers as either version does, and what matters is the line the agent logs or exits with.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from pathlib import Path
from typing import Any

import httpx
import pytest

from probes.agent import Agent
from probes.config import AgentConfig
from probes.problem import attestation_cause, describe, is_nonce_refusal

PROBLEM_422 = {
    "type": "urn:meshctl:problem:invalid-input",
    "title": "Invalid input",
    "status": 422,
    "detail": "the report is invalid",
    "field": "peers[0].sent",
    "errors": [
        {"field": "peers[0].sent", "message": "must be >= 0"},
        {"field": "seq", "message": "field required"},
    ],
}
PROBLEM_403 = {
    "type": "urn:meshctl:problem:forbidden",
    "title": "Forbidden",
    "status": 403,
    "detail": "join token expired",
    "field": None,
}
OLD_STRING = {"detail": "join token expired", "field": "join_token"}
OLD_PYDANTIC = {
    "detail": [
        {"loc": ["body", "peers", 0, "sent"], "msg": "Input should be greater than or equal to 0", "type": "x"},
        {"loc": ["body", "seq"], "msg": "Field required", "type": "missing"},
    ]
}
OLD_PYDANTIC_WITH_MESSAGE = {**OLD_PYDANTIC, "message": "peers.0.sent: Input should be greater than or equal to 0"}


def response(status: int, body: Any, content_type: str = "application/problem+json") -> httpx.Response:
    text = body if isinstance(body, str) else json.dumps(body)
    return httpx.Response(status, content=text.encode(), headers={"content-type": content_type})


@pytest.mark.parametrize(
    ("status", "body", "line"),
    [
        (422, PROBLEM_422, "the report is invalid (peers[0].sent: must be >= 0; seq: field required)"),
        (403, PROBLEM_403, "join token expired"),
        (403, {**PROBLEM_403, "errors": []}, "join token expired"),
        (500, {"type": "urn:meshctl:problem:internal", "title": "Internal error", "status": 500}, "Internal error"),
        (403, OLD_STRING, "join token expired"),
        (422, OLD_PYDANTIC, "peers.0.sent: Input should be greater than or equal to 0; seq: Field required"),
        (422, OLD_PYDANTIC_WITH_MESSAGE, "peers.0.sent: Input should be greater than or equal to 0"),
        (502, "<html>\n<body>Bad gateway</body>\n</html>", "<html> <body>Bad gateway</body> </html>"),
        (404, "", "Not Found"),
        (400, ["not", "an", "object"], '["not", "an", "object"]'),
    ],
)
def test_describe_each_shape(status: int, body: Any, line: str) -> None:
    assert describe(response(status, body)) == line


def test_describe_is_one_bounded_line() -> None:
    long = {**PROBLEM_403, "detail": "x\n" * 500}
    text = describe(response(403, long), limit=80)
    assert "\n" not in text and len(text) == 80 and text.endswith("...")


def agent_with(tmp_path: Path, handler: httpx.MockTransport) -> Agent:
    cfg = AgentConfig(
        controller="http://ctl",
        region="aws:us-east-1",
        endpoint="192.0.2.1:51820",
        interface="mt0",
        state_dir=tmp_path / "state",
        join_token="T",
        window_s=0.2,
    )
    agent = Agent(cfg)
    agent.http = httpx.AsyncClient(base_url=cfg.controller, transport=handler)
    return agent


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (PROBLEM_403, "join refused (403): join token expired"),
        (OLD_STRING, "join refused (403): join token expired"),
    ],
)
def test_a_refused_join_says_why(body: dict[str, Any], message: str, tmp_path: Path) -> None:
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return response(403, body)

    agent = agent_with(tmp_path, httpx.MockTransport(handle))
    with pytest.raises(RuntimeError) as err:
        asyncio.run(agent.join("PUBKEY"))
    assert str(err.value) == message
    assert seen[0].method == "POST" and seen[0].url.path == "/v1/nodes"
    assert not (tmp_path / "state" / "credential.json").exists()


@pytest.mark.parametrize(
    ("body", "logged"),
    [
        (PROBLEM_422, "the report is invalid (peers[0].sent: must be >= 0; seq: field required)"),
        (OLD_PYDANTIC, "peers.0.sent: Input should be greater than or equal to 0; seq: Field required"),
    ],
)
def test_a_refused_report_is_logged_and_dropped(
    body: dict[str, Any], logged: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    agent = agent_with(tmp_path, httpx.MockTransport(lambda request: response(422, body)))
    (agent.state / "credential.json").write_text(json.dumps({"node_id": "n-1", "node_token": "msh_n_x"}))
    agent.spool.put(0, {"node_id": "n-1", "seq": 0, "peers": []})

    async def deliver() -> None:
        task = asyncio.create_task(agent.reporter())
        for _ in range(200):
            if not len(agent.spool):
                break
            await asyncio.sleep(0.01)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    with caplog.at_level(logging.WARNING, logger="meshctl.agent"):
        asyncio.run(deliver())
    assert len(agent.spool) == 0, "a refused window is not retried forever"
    assert f"report 0 refused (422): {logged}; dropped" in caplog.messages


@pytest.mark.parametrize(
    ("status", "body", "cause"),
    [
        (403, {"type": "urn:meshctl:problem:join-policy", "detail": "policy p: region x is not mapped"},
         "join policy refused"),
        (403, {**PROBLEM_403, "detail": "aws account 1 is not in any join policy"}, "join policy refused"),
        (403, {"detail": "instance i-1 already joined with another key"}, "join policy refused"),  # old shape
        (401, {"type": "urn:meshctl:problem:attestation-signature-invalid", "detail": "x"}, "signature invalid"),
        (401, {"type": "urn:meshctl:problem:unauthorized", "detail": "AWS: signed by a certificate that is not "
               "configured (issuer CN=x)"}, "signature invalid"),
        (401, {"type": "urn:meshctl:problem:attestation-clock-skew", "detail": "x"}, "clock skew"),
        (401, {"detail": "Azure: created 700 s in the future: check the clocks"}, "clock skew"),
        (401, {"type": "urn:meshctl:problem:attestation-nonce", "detail": "x"}, "nonce refused"),
        (401, {"type": "urn:meshctl:problem:attestation-expired", "detail": "x"}, "document expired"),
        (401, {"type": "urn:meshctl:problem:attestation-wrong-audience", "detail": "x"}, "wrong audience"),
        (401, {"type": "urn:meshctl:problem:unauthorized", "detail": "AWS document: accountId missing"},
         "attestation refused"),
    ],
)  # fmt: skip
def test_attestation_cause(status: int, body: dict[str, Any], cause: str) -> None:
    assert attestation_cause(response(status, body)) == cause
    assert is_nonce_refusal(response(status, body)) == (cause == "nonce refused")
