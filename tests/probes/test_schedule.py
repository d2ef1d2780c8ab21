"""Probe rates within the node's budget, and the schedule that spreads them (`probes.schedule`)."""

from __future__ import annotations

from collections import Counter

import pytest

from probes.schedule import ProbeSchedule, probe_rates

TARGETS = [f"n-{i:03d}" for i in range(298)]  # 149 other regions, k=2


def test_a_small_fleet_is_probed_at_the_full_rate() -> None:
    rates = probe_rates(TARGETS[:11], rate=5.0, budget=150.0, suspects=set(), floor=0.2)
    assert set(rates.values()) == {5.0}


def test_a_large_fleet_shares_the_budget_and_suspects_keep_the_full_rate() -> None:
    suspects = {"n-007", "n-100"}
    rates = probe_rates(TARGETS, rate=5.0, budget=150.0, suspects=suspects, floor=0.2)
    assert rates["n-007"] == rates["n-100"] == 5.0
    stable = [r for t, r in rates.items() if t not in suspects]
    assert len(stable) == 296 and all(r == pytest.approx((150.0 - 10.0) / 296) for r in stable)
    assert sum(rates.values()) == pytest.approx(150.0)


def test_never_below_one_probe_a_window_nor_past_the_budget_for_suspects() -> None:
    rates = probe_rates(TARGETS, rate=5.0, budget=20.0, suspects=set(), floor=0.2)
    assert set(rates.values()) == {0.2}  # the floor wins over the budget: each target seen every window
    many = set(TARGETS[:100])
    rates = probe_rates(TARGETS, rate=5.0, budget=150.0, suspects=many, floor=0.2)
    assert {rates[t] for t in many} == {1.5} and {rates[t] for t in TARGETS[100:]} == {0.2}


def test_the_schedule_keeps_each_rate_and_spreads_the_probes() -> None:
    rates = {"fast": 5.0, "slow": 0.5, **{f"s{i}": 1.0 for i in range(8)}}
    schedule = ProbeSchedule(rates, start=0.0)
    sent: Counter[str] = Counter()
    per_tick: list[int] = []
    t = 0.0
    while t < 10.0:
        due = schedule.due(t)
        sent.update(due)
        per_tick.append(len(due))
        t += 0.02
    assert sent["fast"] == 50 and sent["slow"] == 5 and all(sent[f"s{i}"] == 10 for i in range(8))
    # spread: 16 probes/s at 50 ticks/s leave one or two a tick, a few three (intervals that meet)
    assert per_tick[0] == 1 and max(per_tick) <= 3 and Counter(per_tick)[3] <= 10, Counter(per_tick)
    assert schedule.due(10.2), "a probe is due within the next tick"


def test_hurry_moves_a_target_to_the_full_rate_at_once() -> None:
    schedule = ProbeSchedule({"a": 0.2, "b": 0.2}, start=0.0)
    assert schedule.due(0.0) == ["a"]  # b's first probe is half an interval later
    schedule.hurry("a", 5.0, now=1.0)
    sent = [t / 100 for t in range(100, 300) if "a" in schedule.due(t / 100)]
    assert sent[:3] == [1.2, 1.4, 1.6]
    schedule.hurry("a", 1.0, now=3.0)  # never slows a target down
    assert schedule.rates["a"] == 5.0
    schedule.hurry("zz", 5.0, now=3.0)  # not a target of this window
    assert "zz" not in schedule.rates
