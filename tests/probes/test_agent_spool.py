"""Windows the spool drops at its bound (controller away too long) are counted in the agent's metrics."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from probes.agent import Agent
from probes.config import AgentConfig


def test_windows_dropped_by_the_spool_bound_are_counted(tmp_path: Path) -> None:
    cfg = AgentConfig("http://ctl", "aws:us-east-1", "192.0.2.1:51820", "mt0", tmp_path / "state")
    agent = Agent(cfg)
    (agent.state / "credential.json").write_text(json.dumps({"node_id": "n-1", "node_token": "t"}))
    agent.spool.max_bytes = 400  # room for a few empty windows
    for _ in range(20):
        agent.close_window(datetime.now(UTC), {}, [])
    dropped = agent.registry.get_sample_value("mesh_agent_reports_dropped_total", {"reason": "spool_bound"})
    assert agent.spool.dropped > 0 and dropped == agent.spool.dropped
    assert agent.registry.get_sample_value("mesh_agent_reports_spooled") == len(agent.spool) == 20 - dropped
