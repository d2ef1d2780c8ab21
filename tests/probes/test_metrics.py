"""Prometheus: the controller's /metrics (a real server after some reports) and an agent's per-peer
series pass `promtool check metrics`; the Grafana dashboard parses and names only series that one
of the two exports; the scrape example passes `promtool check config`; `--metrics-listen`.

promtool is Debian's `prometheus` package (scripts/setup-system.sh --test installs it).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest

from probes.agent import Agent
from probes.config import AgentConfig, AgentConfigError, metrics_address
from tests.conftest import ControllerProcess

ROOT = Path(__file__).resolve().parents[2]
A, B, C = "aws:us-east-1", "gcp:europe-west1", "azure:westeurope"
LINK_SERIES = (
    "mesh_link_rtt_p50_seconds",
    "mesh_link_rtt_p90_seconds",
    "mesh_link_loss_ratio",
    "mesh_link_jitter_seconds",
    "mesh_link_age_seconds",
)

needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool missing: scripts/setup-system.sh --test (Debian prometheus)"
)


def promtool_metrics(text: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)


def samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """name -> [(labels, value)] of an exposition."""
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$", line)
        assert m, line
        labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        out.setdefault(m.group(1), []).append((labels, float(m.group(3))))
    return out


SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def declared(text: str) -> set[str]:
    """Series names an exposition has samples of, or declares (a labelled counter before its first
    increment has `# TYPE` but no sample yet)."""
    names = set(samples(text))
    for kind_name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M):
        base = kind_name.removesuffix("_total")  # prometheus_client names a counter's TYPE either way
        names.update(base + suffix for suffix in SUFFIXES.get(kind, ("",)))
    return names


def agent_exposition(tmp_path: Path) -> str:
    cfg = AgentConfig(controller="http://127.0.0.1:1", region=A, endpoint="192.0.2.1:51820", interface="m0",
                      state_dir=tmp_path / "agent")  # fmt: skip
    agent = Agent(cfg)
    agent.peer_gauges.window(
        [
            {"peer_node_id": "n-b", "sent": 20, "received": 19, "rtt_p50_ms": 80.5, "jitter_ms": 1.25},
            {"peer_node_id": "n-c", "sent": 20, "received": 0},
        ],
        {"n-b": {"region": B}, "n-c": {"region": C}},
    )
    return generate_latest(agent.registry).decode()


@pytest.fixture
def controller_metrics(controller: ControllerProcess) -> str:
    controller.feed_links(
        {(A, B): 20.0, (B, A): 21.0, (B, C): 20.0, (C, B): 20.0, (A, C): 100.0, (C, A): 100.0}, loss={(C, A): 100.0}
    )
    with controller.client() as c:
        controller.wait_for(lambda: c.get(f"/v1/routes/{A}/{C}").json()["path"] == [A, B, C], what="a relayed route")
        c.post(f"/v1/regions/{C}/drain", json={"reason": "metrics test"}).raise_for_status()
        controller.wait_for(lambda: 'state="drained"} 1.0' in c.get("/metrics").text, what="drained region series")
        return c.get("/metrics").text


@needs_promtool
def test_controller_metrics_pass_promtool_and_carry_the_links(controller_metrics: str) -> None:
    r = promtool_metrics(controller_metrics)
    assert r.returncode == 0 and not r.stdout.strip() and not r.stderr.strip(), r.stdout + r.stderr
    got = samples(controller_metrics)
    p50 = {(lb["src"], lb["dst"]): v for lb, v in got["mesh_link_rtt_p50_seconds"]}
    assert p50[(A, B)] == pytest.approx(0.020) and p50[(B, A)] == pytest.approx(0.021)
    assert (C, A) not in p50  # nothing came back: no RTT; the loss says so
    loss = {(lb["src"], lb["dst"]): v for lb, v in got["mesh_link_loss_ratio"]}
    assert loss[(C, A)] == 1.0 and loss[(A, B)] == 0.0
    for name in LINK_SERIES:
        for labels, _ in got[name]:
            assert set(labels) == {"src", "dst", "src_cloud", "dst_cloud"}
            assert labels["src_cloud"] == labels["src"].split(":")[0]
    states = {(lb["region"], lb["state"]): v for lb, v in got["mesh_region_state"]}
    assert states[(C, "drained")] == 1.0 and states[(C, "active")] == 0.0 and states[(A, "active")] == 1.0
    assert sum(v for (region, _), v in states.items() if region == A) == 1.0  # one state at a time
    # A -> C relays through B (C -> A too: its direct link loses everything); a drain of the end
    # region moves no transit, so both still relay
    assert got["mesh_routes_relayed"][0][1] == 2.0
    assert got["mesh_routes_changed_total"][0][1] >= 1


@needs_promtool
def test_agent_metrics_pass_promtool(tmp_path: Path) -> None:
    text = agent_exposition(tmp_path)
    r = promtool_metrics(text)
    assert r.returncode == 0 and not r.stdout.strip() and not r.stderr.strip(), r.stdout + r.stderr
    got = samples(text)
    rtt = {(lb["peer"], lb["peer_region"]): v for lb, v in got["mesh_agent_peer_rtt_p50_seconds"]}
    assert rtt == {("n-b", B): pytest.approx(0.0805)}
    loss = {lb["peer"]: v for lb, v in got["mesh_agent_peer_loss_ratio"]}
    assert loss == {"n-b": pytest.approx(0.05), "n-c": 1.0}
    assert got["mesh_agent_peer_jitter_seconds"][0][1] == pytest.approx(0.00125)


def _exprs(node: Any) -> list[str]:
    """Every PromQL expression of a Grafana dashboard (targets, variables, annotations)."""
    found: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "definition") and isinstance(value, str):
                found.append(value)
            elif key == "query" and isinstance(value, dict) and isinstance(value.get("query"), str):
                found.append(value["query"])
            else:
                found.extend(_exprs(value))
    elif isinstance(node, list):
        for item in node:
            found.extend(_exprs(item))
    return found


@needs_promtool
def test_grafana_dashboard_names_only_exported_series(controller_metrics: str, tmp_path: Path) -> None:
    dash = json.loads((ROOT / "deploy" / "grafana" / "meshctl.json").read_text())
    assert dash["uid"] and dash["panels"]
    exported = declared(controller_metrics) | declared(agent_exposition(tmp_path))
    exprs = _exprs(dash)
    named = {n for e in exprs for n in re.findall(r"\bmesh_[a-z0-9_]+", e)}
    assert named, "the dashboard queries mesh_* series"
    assert named <= exported, sorted(named - exported)
    kinds = {p["type"] for p in dash["panels"]}
    assert {"heatmap", "state-timeline", "timeseries", "stat"} <= kinds
    titles = " ".join(p["title"].lower() for p in dash["panels"])
    for want in ("rtt", "drained", "route changes", "relayed", "follower lag"):
        assert want in titles, want


@needs_promtool
def test_scrape_example_passes_promtool(tmp_path: Path) -> None:
    shutil.copy(ROOT / "deploy" / "prometheus" / "prometheus.yml", tmp_path / "prometheus.yml")
    (tmp_path / "meshctl-reader.token").write_text("msh_r_example\n")  # the files it names, beside it
    (tmp_path / "meshctl-agents.json").write_text("[]\n")
    r = subprocess.run(
        ["promtool", "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True, text=True, timeout=30
    )
    assert r.returncode == 0, r.stdout + r.stderr
    text = (tmp_path / "prometheus.yml").read_text()
    assert "credentials_file" in text and "meshctl-controller" in text and "meshctl-agent" in text


def test_metrics_listen_address() -> None:
    assert metrics_address(None, 9464) == ("127.0.0.1", 9464)  # the default stays local
    assert metrics_address("0.0.0.0:9470", 9464) == ("0.0.0.0", 9470)
    assert metrics_address("[::1]:9470", 9464) == ("::1", 9470)
    assert metrics_address(":9470", 9464) == ("0.0.0.0", 9470)
    for bad in ("9470", "host:", "host:99999", "host:http"):
        with pytest.raises(AgentConfigError, match="metrics_listen"):
            metrics_address(bad, 9464)


def test_agent_serves_metrics_on_metrics_listen(tmp_path: Path) -> None:
    """The agent's /metrics on the address --metrics-listen gives (its HTTP server, as `run` starts it)."""
    import socket
    import urllib.request

    from prometheus_client import start_http_server

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = AgentConfig(controller="http://127.0.0.1:1", region=A, endpoint="192.0.2.1:51820", interface="m0",
                      state_dir=tmp_path / "agent", metrics_listen=f"127.0.0.1:{port}")  # fmt: skip
    agent = Agent(cfg)
    agent.peer_gauges.window([{"peer_node_id": "n-b", "sent": 4, "received": 4, "rtt_p50_ms": 10.0}], {})
    server, thread = start_http_server(cfg.metrics_bind_port, addr=cfg.metrics_host, registry=agent.registry)
    try:
        deadline = time.monotonic() + 5
        while True:
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        assert 'mesh_agent_peer_rtt_p50_seconds{peer="n-b",peer_region=""} 0.01' in body
    finally:
        server.shutdown()
        thread.join(5)
