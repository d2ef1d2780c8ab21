"""Every health rule: majority, hysteresis, hold time, the drain cap, the freeze, manual drains."""

from __future__ import annotations

from meshctl.core.health import HealthPolicy, HealthState, Observation, initial_state, observe, step
from meshctl.core.links import RegionLink

REGIONS = [f"aws:r{i}" for i in range(9)]
POLICY = HealthPolicy(degrade_after=3, recover_after=4, hold_s=30, max_auto_drain_fraction=0.34, freeze_fraction=0.5)


def obs(bad: set[str] = frozenset(), silent: set[str] = frozenset()) -> dict[str, Observation]:  # type: ignore[assignment]
    return {
        r: Observation(r, r not in silent, 8, 8 if r in bad else 0, "8/8 see loss" if r in bad else "fine")
        for r in REGIONS
    }


def run(
    state: HealthState,
    windows: list[dict[str, Observation]],
    t0: float = 0.0,
    manual: set[str] = frozenset(),  # type: ignore[assignment]
    policy: HealthPolicy = POLICY,
) -> tuple[HealthState, list[tuple[float, str, str | None]]]:
    events = []
    for n, o in enumerate(windows):
        now = t0 + n
        state, evs = step(state, o, manual, policy, now)
        events += [(now, e.kind, e.region) for e in evs]
    return state, events


def link(src: str, dst: str, rtt: float = 10.0, loss: float = 0.0) -> RegionLink:
    return RegionLink(src, dst, rtt, rtt, 0.1, loss, 100.0, 1)


def test_majority_of_observers_decides() -> None:
    regions = ["a:x", "b:y", "c:z", "d:w"]
    reported = {r: 100.0 for r in regions}
    links = {(s, d): link(s, d) for s in regions for d in regions if s != d}
    links[("a:x", "d:w")] = link("a:x", "d:w", loss=100.0)
    one_liar = observe(regions, links, {}, reported, 100.0, POLICY)
    assert one_liar["d:w"].observers_bad == 1 and not one_liar["d:w"].bad
    links[("b:y", "d:w")] = link("b:y", "d:w", loss=60.0)
    two = observe(regions, links, {}, reported, 100.0, POLICY)
    assert two["d:w"].observers_bad == 2 and two["d:w"].observers_total == 3 and two["d:w"].bad
    assert "2/3" in two["d:w"].reason


def test_high_rtt_against_baseline_is_bad() -> None:
    regions = ["a:x", "b:y", "c:z"]
    links = {(s, d): link(s, d, rtt=10.0) for s in regions for d in regions if s != d}
    links[("a:x", "c:z")] = link("a:x", "c:z", rtt=80.0)
    links[("b:y", "c:z")] = link("b:y", "c:z", rtt=80.0)
    o = observe(
        regions, links, {("a:x", "c:z"): 10.0, ("b:y", "c:z"): 10.0}, dict.fromkeys(regions, 100.0), 100.0, POLICY
    )
    assert o["c:z"].bad and "RTT" in o["c:z"].reason


def test_silent_region_is_bad_and_never_reported_is_not_judged() -> None:
    regions = ["a:x", "b:y", "c:z"]
    last = {"a:x": 100.0, "b:y": 50.0}
    o = observe(regions, {}, {}, last, 100.0, POLICY)
    assert not o["b:y"].reporting and o["b:y"].bad and "stopped reporting 50 s ago" in o["b:y"].reason
    assert o["c:z"].reporting and not o["c:z"].bad


def test_drain_after_k_bad_windows_not_before() -> None:
    state, events = run(initial_state(REGIONS), [obs({"aws:r1"})] * 2)
    assert not [e for e in events if e[1] == "drain"]
    assert state.regions["aws:r1"].state == "active"
    state, events = run(state, [obs({"aws:r1"})], t0=2)
    assert events == [(2, "drain", "aws:r1")]
    assert state.regions["aws:r1"].state == "drained" and state.regions["aws:r1"].auto_drained


def test_recovery_needs_m_good_windows_and_hold_time() -> None:
    state, _ = run(initial_state(REGIONS), [obs({"aws:r1"})] * 3)  # drained at t=2
    state, events = run(state, [obs()] * 10, t0=3)  # 10 good windows, but only until t=12
    assert state.regions["aws:r1"].state == "drained" and not events
    state, events = run(state, [obs()], t0=32)  # hold time (30 s) passed, streak long enough
    assert events and events[0][1:] == ("undrain", "aws:r1")
    assert state.regions["aws:r1"].state == "active"


def test_good_streak_must_be_unbroken() -> None:
    state, _ = run(initial_state(REGIONS), [obs({"aws:r1"})] * 3)
    windows = [obs(), obs(), obs(), obs({"aws:r1"}), obs(), obs(), obs()]
    state, events = run(state, windows, t0=40)
    assert state.regions["aws:r1"].state == "drained" and not events
    state, events = run(state, [obs()], t0=50)
    assert [e[1] for e in events] == ["undrain"]


def test_flapping_region_never_drains() -> None:
    flaps = [obs({"aws:r2"}) if n % 2 == 0 else obs() for n in range(60)]
    _, events = run(initial_state(REGIONS), flaps)
    assert not [e for e in events if e[1] in ("drain", "undrain")]


def test_flapping_after_a_drain_stays_one_drain() -> None:
    windows = [obs({"aws:r2"})] * 3 + [obs({"aws:r2"}) if n % 3 == 0 else obs() for n in range(60)]
    _, events = run(initial_state(REGIONS), windows)
    assert [e[1] for e in events if e[2] == "aws:r2"].count("drain") == 1


def test_never_auto_drains_more_than_the_fraction() -> None:
    bad = {"aws:r1", "aws:r2", "aws:r3", "aws:r4"}  # 4 of 9; cap is floor(0.34 * 9) = 3
    state, events = run(initial_state(REGIONS), [obs(bad)] * 5)
    drained = {e[2] for e in events if e[1] == "drain"}
    assert len(drained) == 3
    left = (bad - drained).pop()
    assert state.regions[left].state == "degraded"
    alerts = [e for e in events if e[1] == "alert"]
    assert len(alerts) == 1 and alerts[0][2] == left


def test_freeze_when_most_regions_stop_reporting() -> None:
    silent = set(REGIONS[:5])  # 5 of 9 > half
    state, events = run(initial_state(REGIONS), [obs(silent=silent)] * 6)
    assert [e[1] for e in events] == ["freeze"]
    assert state.frozen and all(s.state == "active" for s in state.regions.values())
    state, events = run(state, [obs()], t0=6)
    assert [e[1] for e in events] == ["unfreeze"] and not state.frozen


def test_minority_silence_still_drains() -> None:
    state, events = run(initial_state(REGIONS), [obs(silent={"aws:r5"})] * 3)
    assert not state.frozen and (2, "drain", "aws:r5") in events


def test_manual_drain_is_untouched_and_not_counted() -> None:
    manual = {"aws:r1", "aws:r2", "aws:r3"}
    state, events = run(initial_state(REGIONS), [obs({"aws:r4", "aws:r5", "aws:r6"})] * 3, manual=manual)
    assert {e[2] for e in events if e[1] == "drain"} == {"aws:r4", "aws:r5", "aws:r6"}
    state, events = run(state, [obs()] * 50, t0=10, manual=manual)
    assert not [e for e in events if e[2] in manual]


def test_flap_damping_doubles_the_hold_for_a_repeat_drain() -> None:
    state, events = run(initial_state(REGIONS), [obs({"aws:r1"})] * 3)  # drain 1 at t=2
    state, events = run(state, [obs()] * 31, t0=3)  # undrained once 30 s held (t=32)
    assert [e[1] for e in events] == ["undrain"]
    state, events = run(state, [obs({"aws:r1"})] * 3, t0=40)  # drain 2 at t=42, within the flap window
    assert [e[1] for e in events] == ["drain"] and "drained 2 times recently" in state.regions["aws:r1"].reason
    state, events = run(state, [obs()] * 58, t0=43)  # 30 s would have been enough the first time
    assert not events and state.regions["aws:r1"].state == "drained"
    state, events = run(state, [obs()] * 3, t0=101)  # 60 s held (t=102): back
    assert [e[1] for e in events] == ["undrain"] and events[0][0] == 102


def test_hold_is_capped_and_forgets_old_drains() -> None:
    policy = HealthPolicy(hold_s=30, max_hold_s=100, flap_window_s=600)
    assert [policy.hold_after(n) for n in (1, 2, 3, 4, 5)] == [30, 60, 100, 100, 100]
    state, _ = run(initial_state(REGIONS), [obs({"aws:r1"})] * 3, policy=policy)  # t=2
    state, _ = run(state, [obs()] * 40, t0=3, policy=policy)
    state, events = run(state, [obs({"aws:r1"})] * 3, t0=1000, policy=policy)  # long after: a first drain again
    assert [e[1] for e in events] == ["drain"] and "times recently" not in state.regions["aws:r1"].reason


def test_most_regions_going_quiet_together_freeze_before_any_drain() -> None:
    """The controller's own network fails: every region's reports stop within a second of each other."""
    policy = HealthPolicy(degrade_after=2, report_timeout_s=4.0, freeze_fraction=0.5)
    regions = REGIONS
    links = {(s, d): link(s, d) for s in regions for d in regions if s != d}
    last = {r: 100.0 + 0.3 * i for i, r in enumerate(regions)}  # stopped over 2.4 s
    state, kinds = initial_state(regions), []
    for tick in range(40):
        now = 100.0 + 0.5 * tick
        state, evs = step(state, observe(regions, links, {}, last, now, policy), set(), policy, now)
        kinds += [e.kind for e in evs]
    assert kinds == ["freeze"] and all(s.state == "active" for s in state.regions.values())
    last = dict.fromkeys(regions, 120.0)  # reports are back
    state, evs = step(state, observe(regions, links, {}, last, 120.5, policy), set(), policy, 120.5)
    assert [e.kind for e in evs] == ["unfreeze"]


def test_unfreeze_starts_the_streaks_afresh() -> None:
    silent = set(REGIONS[:5])
    state, _ = run(initial_state(REGIONS), [obs(silent=silent)] * 6)
    assert state.frozen and state.regions["aws:r0"].bad_streak == 6
    state, events = run(state, [obs(silent={"aws:r0"})], t0=6)  # back, but r0's agents not yet
    assert [e[1] for e in events] == ["unfreeze"] and state.regions["aws:r0"].bad_streak == 1  # not 7
    state, events = run(state, [obs(silent={"aws:r0"})], t0=7)
    assert not events  # two bad windows since the unfreeze are not yet the three it takes
    state, events = run(state, [obs(silent={"aws:r0"})], t0=8)
    assert [e[1:] for e in events] == [("drain", "aws:r0")]
