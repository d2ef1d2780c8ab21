"""Jitter is RFC 3550's running interarrival jitter, carried across windows (issue 14, item 6).

Held to an independent computation on a recorded packet sequence (`data/jitter_packets.csv`:
400 probes to one peer with losses, reordered and duplicated replies): the RFC's own C fragment
(appendix A.8) transcribed in integer microseconds, and the closed form of the same filter,
J_n = sum_k (1/16) (15/16)^(n-k) |D_k|. The agent's windows are fed exactly as its reply handler
feeds them (each reply, in arrival order, to the window of the probe it answers) and each must
report J as it stood after its own last reply.
"""

from __future__ import annotations

import csv
import itertools
from pathlib import Path

import pytest

from probes.agent import Agent
from probes.config import AgentConfig
from probes.stats import PeerWindow

DATA = Path(__file__).parent / "data" / "jitter_packets.csv"
PER_WINDOW = 25  # 5 s windows at 5 probes/s
PEER = "n-peer"

Packet = tuple[int, int, int]  # (seq, send_us, recv_us)


def recorded() -> tuple[list[tuple[int, int]], list[Packet]]:
    """(every probe sent as (seq, send_us), every reply in arrival order, duplicates included)."""
    with DATA.open() as f:
        rows = list(csv.DictReader(line for line in f if not line.startswith("#")))
    sent = sorted({(int(r["seq"]), int(r["send_us"])) for r in rows})
    replies = [(int(r["seq"]), int(r["send_us"]), int(r["recv_us"])) for r in rows if r["recv_us"]]
    replies.sort(key=lambda p: p[2])
    return sent, replies


def received_once(replies: list[Packet]) -> list[Packet]:
    """In arrival order, each probe's first reply (a duplicate is the same packet again)."""
    seen: set[int] = set()
    out = []
    for p in replies:
        if p[0] not in seen:
            seen.add(p[0])
            out.append(p)
    return out


def rfc3550_a8(packets: list[Packet]) -> list[float]:
    """J after each packet, transcribed from RFC 3550 appendix A.8 (timestamps in microseconds):

        int transit = arrival - r->ts;
        int d = transit - s->transit;
        s->transit = transit;
        if (d < 0) d = -d;
        s->jitter += (1./16.) * ((double)d - s->jitter);

    with s->transit set by the first packet (A.8 leaves its start to the implementation).
    Returns milliseconds.
    """
    s_transit: int | None = None
    s_jitter = 0.0
    out = []
    for _seq, r_ts, arrival in packets:
        transit = arrival - r_ts
        if s_transit is None:
            s_transit = transit
        d = transit - s_transit
        s_transit = transit
        if d < 0:
            d = -d
        s_jitter += (1.0 / 16.0) * (float(d) - s_jitter)
        out.append(s_jitter / 1000.0)
    return out


def closed_form(packets: list[Packet]) -> list[float]:
    """The same filter unrolled: J_n = sum over k <= n of (1/16) (15/16)^(n-k) |D_k|, in ms."""
    transits = [(arrival - sent) / 1000.0 for _seq, sent, arrival in packets]
    d = [0.0] + [abs(b - a) for a, b in itertools.pairwise(transits)]
    return [sum(d[k] / 16.0 * (15.0 / 16.0) ** (n - k) for k in range(1, n + 1)) for n in range(len(d))]


def agent_windows(tmp_path: Path, sent: list[tuple[int, int]], replies: list[Packet]) -> list[PeerWindow]:
    """The agent's own windows for the peer, fed as `Agent.probe_loop` and its reply handler do."""
    cfg = AgentConfig("http://ctl", "aws:us-east-1", "192.0.2.1:51820", "mt0", tmp_path / "state")
    agent = Agent(cfg)
    agent.peerlist = {"peers": [{"node_id": PEER, "region": "gcp:europe-west1", "public_key": "K"}]}
    windows: list[PeerWindow] = []
    for number in range(len(sent) // PER_WINDOW):
        agent.choose_targets(number)
        windows.append(agent.windows[PEER])
    for seq, _send in sent:
        windows[seq // PER_WINDOW].on_sent()
    for seq, send_us, recv_us in replies:  # arrival order: a late reply may land after the next window began
        windows[seq // PER_WINDOW].on_reply(seq, (recv_us - send_us) / 1000.0)
    return windows


def test_the_recording_has_what_the_test_is_about() -> None:
    sent, replies = recorded()
    once = received_once(replies)
    assert len(sent) == 400 and 0.9 < len(once) / len(sent) < 0.98, "some lost"
    assert len(replies) > len(once), "some answered twice"
    assert any(a[0] > b[0] for a, b in itertools.pairwise(once)), "some reordered"
    assert any(a[0] // PER_WINDOW > b[0] // PER_WINDOW for a, b in itertools.pairwise(once)), (
        "some reply of a window arrives after a reply of the next one"
    )


def test_the_two_references_agree() -> None:
    _sent, replies = recorded()
    once = received_once(replies)
    assert rfc3550_a8(once) == pytest.approx(closed_form(once), rel=1e-9, abs=1e-9)


def test_each_window_reports_rfc3550_jitter_carried_across_windows(tmp_path: Path) -> None:
    sent, replies = recorded()
    once = received_once(replies)
    truth = rfc3550_a8(once)
    last_arrival = {seq // PER_WINDOW: i for i, (seq, _s, _r) in enumerate(once)}  # window -> its last reply
    windows = agent_windows(tmp_path, sent, replies)
    reported = [float(w.summary(PEER)["jitter_ms"]) for w in windows]  # type: ignore[arg-type]
    expected = [truth[last_arrival[k]] for k in range(len(windows))]
    assert reported == pytest.approx(expected, abs=1e-4)  # the report rounds to 4 decimals
    assert sum(w.duplicates for w in windows) == len(replies) - len(once)


def test_a_jitter_restarted_in_every_window_would_be_far_too_low(tmp_path: Path) -> None:
    """What the agent reported before: J from 0 in each window, about 79% of the truth at 25 samples.

    The agent's windows must not look like that (this fails on a per-window restart).
    """
    sent, replies = recorded()
    once = received_once(replies)
    by_window: dict[int, list[Packet]] = {}
    for p in once:
        by_window.setdefault(p[0] // PER_WINDOW, []).append(p)
    restarted = [rfc3550_a8(by_window[k])[-1] for k in sorted(by_window)]
    truth = rfc3550_a8(once)
    last = {seq // PER_WINDOW: i for i, (seq, _s, _r) in enumerate(once)}
    carried = [truth[last[k]] for k in sorted(by_window)]
    later = slice(2, None)  # once the carried J has settled
    ratio = sum(restarted[later]) / sum(carried[later])
    assert ratio < 0.9, ratio
    windows = agent_windows(tmp_path, sent, replies)
    reported = [float(w.summary(PEER)["jitter_ms"]) for w in windows]  # type: ignore[arg-type]
    assert sum(reported[later]) / sum(restarted[later]) > 1 / 0.9


def test_a_new_window_without_shared_state_starts_from_zero() -> None:
    """A bare PeerWindow (no peer state given) is one window's own filter, as before."""
    w = PeerWindow()
    for seq, rtt in enumerate([80.0, 90.0, 80.0]):
        w.on_sent()
        w.on_reply(seq, rtt)
    assert w.summary(PEER)["jitter_ms"] == round(10 / 16 + (10 - 10 / 16) / 16, 4)
