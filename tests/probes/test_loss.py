"""The consecutive-loss tracker: down after N losses in a row, up again at the first reply."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from probes import wg
from probes.agent import Agent
from probes.config import AgentConfig
from probes.loss import LossTracker


def feed(t: LossTracker, node: str, start_seq: int, times: list[float], answered: set[int], rtt: float = 0.1):
    """Send one probe per time; answer those whose index is in `answered` after `rtt`; expire as time goes."""
    events = []
    for i, at in enumerate(times):
        seq = start_seq + i
        t.sent(node, seq, at)
        change = t.expire(at)
        events += [("down", n) for n in change.down]
        if i in answered and t.replied(node, seq, at + rtt):
            events.append(("up", node))
    return events


def test_down_after_exactly_n_consecutive_losses_and_up_at_first_reply() -> None:
    t = LossTracker(threshold=3, timeout_s=0.6)
    seen: list[tuple[str, bool]] = []
    t.listeners.append(lambda n, d: seen.append((n, d)))
    # probes every 0.2 s; 0-4 answered, 5.. lost
    times = [i * 0.2 for i in range(12)]
    events = feed(t, "a", 0, times, answered={0, 1, 2, 3, 4})
    # probe 5 (sent 1.0) expires after 1.6, 6 after 1.8, 7 after 2.0: down on the expire at 2.2 (>0.6 strictly)
    assert events == [("down", "a")]
    assert t.is_down("a") and t.down == {"a"} and seen == [("a", True)]
    assert t.misses("a") >= 3
    # one reply brings it back, once
    t.sent("a", 100, 3.0)
    assert t.replied("a", 100, 3.05) is True
    assert not t.is_down("a") and t.misses("a") == 0 and seen == [("a", True), ("a", False)]
    assert t.replied("a", 100, 3.06) is False  # a duplicate changes nothing


def test_the_crossing_is_reported_once_not_at_every_further_loss() -> None:
    t = LossTracker(threshold=3, timeout_s=0.5)
    downs = []
    for i in range(20):
        t.sent("a", i, float(i))
        downs.append(t.expire(float(i) + 0.01))
    downs.append(t.expire(100.0))
    assert sum(1 for c in downs if "a" in c.down) == 1
    assert t.misses("a") == 20


def test_losses_that_are_not_consecutive_never_cross() -> None:
    t = LossTracker(threshold=3, timeout_s=0.6)
    times = [i * 0.2 for i in range(40)]
    # two lost, one answered, repeatedly: 67% loss, never 3 in a row
    events = feed(t, "a", 0, times, answered={i for i in range(40) if i % 3 == 2})
    t.expire(100.0)
    assert events == [] and not t.is_down("a")


def test_a_reply_later_than_the_timeout_is_a_loss() -> None:
    t = LossTracker(threshold=2, timeout_s=0.6)
    t.sent("a", 1, 0.0)
    t.sent("a", 2, 0.2)
    assert t.replied("a", 1, 0.9) is False  # 0.9 s after sending: lost
    assert t.replied("a", 2, 1.0) is False
    assert t.expire(1.0).down == {"a"}


def test_a_probe_overtaken_by_an_answered_later_one_is_not_counted() -> None:
    t = LossTracker(threshold=1, timeout_s=0.6)
    t.sent("a", 1, 0.0)
    t.sent("a", 2, 0.1)
    assert t.replied("a", 2, 0.2) is False
    # probe 1 never answered, but a later probe was: no run of losses
    assert not t.expire(5.0) and t.misses("a") == 0


def test_peers_are_independent_and_forget_drops_them() -> None:
    t = LossTracker(threshold=2, timeout_s=0.5)
    for i in range(4):
        t.sent("a", i, i * 0.1)
        t.sent("b", 100 + i, i * 0.1)
        t.replied("b", 100 + i, i * 0.1 + 0.05)
    assert t.expire(2.0).down == {"a"}
    assert t.down == {"a"} and not t.is_down("b")
    t.forget(["b"])
    assert t.down == frozenset() and t.misses("a") == 0
    assert t.replied("zzz", 5, 0.0) is False  # unknown peer


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        LossTracker(threshold=0)
    with pytest.raises(ValueError):
        LossTracker(timeout_s=0)


# --- early windows: two real agents' probe loops and reflectors on loopback --------------------


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _agent(tmp_path: Path, name: str, ip: str, region: str, port: int, early_after: int) -> Agent:
    cfg = AgentConfig(
        "http://127.0.0.1:9",
        region,
        "192.0.2.1:51820",
        "mt0",
        tmp_path / name,
        stamp_port=port,
        window_s=2.0,
        probe_rate=10.0,
        early_after=early_after,
    )
    agent = Agent(cfg)
    cred = {
        "node_id": f"n-{name}",
        "node_token": "x",
        "overlay_ip": ip,
        "overlay_cidr": "127.0.0.0/8",
        "region": region,
    }
    (agent.state / "credential.json").write_text(json.dumps(cred))
    (agent.state / "seq").write_text("0")
    agent.public_key = base64.b64encode(bytes([ord(name[0])]) * 32).decode()
    return agent


def _peer(agent: Agent) -> dict[str, Any]:
    cred = agent.credential
    return {
        "node_id": cred["node_id"],
        "name": cred["node_id"],
        "region": cred["region"],
        "public_key": agent.public_key,
        "endpoint": "192.0.2.1:51820",
        "overlay_ip": cred["overlay_ip"],
        "allowed_ips": [f"{cred['overlay_ip']}/32"],
    }


def _run_early_windows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, early_after: int) -> dict[str, Any]:
    """A probes B; B stops answering 2.5 s in; what A spooled, and when."""
    monkeypatch.setattr(wg, "apply_peers", lambda *_a, **_k: (0, 0))
    port = _free_udp_port()
    a = _agent(tmp_path, "a", "127.0.0.2", "aws:us-east-1", port, early_after)
    b = _agent(tmp_path, "b", "127.0.0.3", "gcp:us-east4", port, early_after)
    a.apply_peerlist({"generation": 1, "peers": [_peer(b)]})
    b.apply_peerlist({"generation": 1, "peers": [_peer(a)]})
    for agent in (a, b):
        agent.first_seen = dict.fromkeys(agent.first_seen, 0.0)  # long known: no handshake grace
    seen: dict[int, tuple[float, dict[str, Any]]] = {}

    async def main() -> float:
        tasks = [asyncio.ensure_future(t) for t in (a.reflector(), b.reflector(), a.probe_loop())]
        try:
            cut_at = 0.0
            t0 = time.monotonic()
            while time.monotonic() - t0 < 7.0:
                for seq, report in a.spool:
                    seen.setdefault(seq, (time.monotonic(), report))
                if not cut_at and time.monotonic() - t0 >= 2.5:
                    b.by_overlay = {}  # B's reflector now answers nobody: A's probes to B are lost
                    cut_at = time.monotonic()
                await asyncio.sleep(0.01)
            return cut_at
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    cut_at = asyncio.run(main())
    reports = [r for _seq, (_at, r) in sorted(seen.items())]
    first_lossy = next(
        (at - cut_at, r)
        for _seq, (at, r) in sorted(seen.items())
        if r["peers"] and r["peers"][0]["received"] < r["peers"][0]["sent"]
    )
    return {"reports": reports, "lossy_after_s": first_lossy[0], "lossy": first_lossy[1], "agent": a}


def test_an_agent_sends_its_window_early_when_a_peer_misses_n_probes_in_a_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = _run_early_windows(tmp_path, monkeypatch, early_after=3)
    lossy, reports = run["lossy"], run["reports"]
    # 3 probes at 10/s, each lost after 0.6 s: well under the 2 s window (its end would be up to 2.6 s away)
    assert run["lossy_after_s"] < 1.5, run["lossy_after_s"]
    assert lossy["window_s"] < 2.0 and lossy["peers"][0]["peer_node_id"] == "n-b"
    assert lossy["peers"][0]["sent"] - lossy["peers"][0]["received"] >= 3
    assert run["agent"].m_early._value.get() == 1  # crossed once: the next windows run their whole length
    # windows follow one another, never overlap: no probe counted twice
    starts = [datetime.fromisoformat(r["window_start"]).timestamp() for r in reports]
    for (s0, r0), s1 in zip(zip(starts, reports, strict=True), starts[1:], strict=False):
        assert s1 >= s0 + r0["window_s"] - 0.05, (r0, s1)
    assert [r["seq"] for r in reports] == list(range(len(reports)))
    total_sent = sum(p["sent"] for r in reports for p in r["peers"])
    assert total_sent <= run["agent"].m_sent._value.get()


def test_without_early_windows_the_loss_waits_for_the_window_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = _run_early_windows(tmp_path, monkeypatch, early_after=0)
    assert all(r["window_s"] == 2.0 for r in run["reports"])
    assert run["agent"].m_early._value.get() == 0
