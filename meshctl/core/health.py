"""Region health from many observers, with hysteresis, a drain cap and a freeze.

`observe` turns one window of links into per-region observations; `step` advances the state
machine by one window and returns the events to record. Both are pure.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np

from meshctl.core.links import LinkTable, PairIndex, RegionLink

State = Literal["active", "degraded", "drained"]


@dataclass(frozen=True)
class HealthPolicy:
    bad_loss_percent: float = 20.0
    bad_rtt_ratio: float = 1.5
    bad_rtt_extra_ms: float = 25.0
    degrade_after: int = 3
    recover_after: int = 5
    hold_s: float = 30.0
    max_auto_drain_fraction: float = 0.34
    freeze_fraction: float = 0.5
    report_timeout_s: float = 15.0
    flap_window_s: float = 900.0
    max_hold_s: float = 600.0

    def hold_after(self, drains_in_window: int) -> float:
        """Flap damping: each automatic drain within `flap_window_s` doubles the hold time."""
        return min(self.hold_s * 2 ** max(0, drains_in_window - 1), max(self.hold_s, self.max_hold_s))


@dataclass(frozen=True)
class Observation:
    region: str
    reporting: bool
    observers_total: int
    observers_bad: int
    reason: str
    quiet: bool = False  # silent for half the report timeout: counts toward a freeze, not yet bad

    @property
    def bad(self) -> bool:
        return not self.reporting or (self.observers_total > 0 and 2 * self.observers_bad > self.observers_total)


@dataclass
class RegionHealthState:
    state: State = "active"
    auto_drained: bool = False
    bad_streak: int = 0
    good_streak: int = 0
    since: float = 0.0
    drained_at: float | None = None
    reason: str = ""
    alerted: bool = False
    recent_drains: tuple[float, ...] = ()  # automatic drains within the flap window


@dataclass
class HealthState:
    regions: dict[str, RegionHealthState] = field(default_factory=dict)
    frozen: bool = False
    frozen_since: float | None = None


@dataclass(frozen=True)
class HealthEvent:
    kind: Literal["degraded", "drain", "recovered", "undrain", "freeze", "unfreeze", "alert"]
    region: str | None
    reason: str


def initial_state(regions: Sequence[str]) -> HealthState:
    return HealthState(regions={r: RegionHealthState() for r in regions})


class Baselines:
    """The lowest RTT p50 seen per link: what `observe` holds a link's RTT against."""

    def __init__(self) -> None:
        self._index = PairIndex()
        self._lowest = np.zeros(0)

    def update(self, table: LinkTable) -> np.ndarray:
        """Take the table's finite p50s; each row's baseline after them (NaN: none yet)."""
        ids = self._index.ids(table)
        if self._lowest.size < len(self._index.pairs):
            grown = np.full(len(self._index.pairs), np.nan)
            grown[: self._lowest.size] = self._lowest
            self._lowest = grown
        p50 = table.column(LinkTable.P50)
        finite = np.isfinite(p50)
        self._lowest[ids[finite]] = np.fmin(self._lowest[ids[finite]], p50[finite])
        return self._lowest[ids]


def observe(
    regions: Sequence[str],
    links: Mapping[tuple[str, str], RegionLink],
    baselines: Mapping[tuple[str, str], float] | np.ndarray,
    last_report_at: Mapping[str, float],
    now: float,
    policy: HealthPolicy,
) -> dict[str, Observation]:
    """One window's view of each region, from every other reporting region that measures it.

    An observer sees its target bad for loss (at least `bad_loss_percent`, or nothing came back)
    or for RTT (p50 above its baseline x `bad_rtt_ratio` + `bad_rtt_extra_ms`). `baselines`: the
    lowest p50 seen per link, by region pair, or as an array over the rows of `LinkTable.of(links)`
    (NaN: none yet). A region that has never reported is not judged (its nodes may still be
    starting). A region silent for half the report timeout is `quiet`: when most regions go quiet
    together the controller freezes before any of them counts as down.
    """
    reporting = {r: (r not in last_report_at) or (now - last_report_at[r] <= policy.report_timeout_s) for r in regions}
    quiet = {r: r in last_report_at and now - last_report_at[r] > policy.report_timeout_s / 2 for r in regions}
    table = LinkTable.of(links)
    src, dst = table.region_index(regions)
    observer = np.array([r in last_report_at and reporting[r] for r in regions] + [False])  # [-1]: not a region
    counted = observer[src] & (dst >= 0) & (src != dst)
    if isinstance(baselines, np.ndarray):
        baseline = baselines
    else:
        baseline = np.array([baselines.get(key, math.nan) for key in table], dtype=np.float64)
    p50, loss = table.column(LinkTable.P50), table.column(LinkTable.LOSS)
    bad_loss = (loss >= policy.bad_loss_percent) | ~np.isfinite(p50)
    with np.errstate(invalid="ignore"):
        bad_rtt = ~bad_loss & (p50 > baseline * policy.bad_rtt_ratio + policy.bad_rtt_extra_ms)
    r = len(regions)
    total = np.bincount(dst[counted], minlength=r).tolist()
    by_loss = np.bincount(dst[counted & bad_loss], minlength=r).tolist()
    by_rtt = np.bincount(dst[counted & bad_rtt], minlength=r).tolist()
    out: dict[str, Observation] = {}
    for i, target in enumerate(regions):
        seen, n_bad = total[i], by_loss[i] + by_rtt[i]
        if not reporting[target]:
            silent = now - last_report_at[target]
            reason = f"its nodes stopped reporting {silent:.0f} s ago"
        elif seen and 2 * n_bad > seen:
            kind = "high loss" if by_loss[i] >= by_rtt[i] else "high RTT"
            reason = f"{n_bad}/{seen} observing regions see {kind} toward it"
        else:
            reason = f"{n_bad}/{seen} observing regions see it bad"
        out[target] = Observation(target, reporting[target], seen, n_bad, reason, quiet[target])
    return out


def step(
    state: HealthState,
    observations: Mapping[str, Observation],
    manual_drains: Collection[str],
    policy: HealthPolicy,
    now: float,
) -> tuple[HealthState, list[HealthEvent]]:
    """Advance one window: streaks, drains (capped), recoveries (held), freeze."""
    events: list[HealthEvent] = []
    regions = {r: replace(s) for r, s in state.regions.items()}
    judged = list(observations)
    silent = sum(1 for o in observations.values() if not o.reporting or o.quiet)
    frozen = bool(judged) and silent > policy.freeze_fraction * len(judged)
    frozen_since = state.frozen_since
    if frozen and not state.frozen:
        frozen_since = now
        events.append(
            HealthEvent(
                "freeze",
                None,
                f"reports from {silent} of {len(judged)} regions stopped at once: most likely the controller's "
                "own network; draining nothing until they return",
            )
        )
    elif not frozen and state.frozen:
        frozen_since = None
        events.append(HealthEvent("unfreeze", None, f"reports are back from {len(judged) - silent} regions"))
        for s in regions.values():  # what was counted while blind says nothing: start afresh
            s.bad_streak = s.good_streak = 0

    cap = math.floor(policy.max_auto_drain_fraction * len(judged))
    auto_drained = sum(1 for r, s in regions.items() if s.auto_drained and r not in manual_drains)
    for region in sorted(judged):
        obs = observations[region]
        s = regions.setdefault(region, RegionHealthState(since=now))
        if obs.bad:
            s.bad_streak += 1
            s.good_streak = 0
        else:
            s.good_streak += 1
            s.bad_streak = 0
        if region in manual_drains:
            continue  # the operator's drain: never touched here
        if s.state in ("active", "degraded") and s.bad_streak >= policy.degrade_after and not frozen:
            if auto_drained + 1 > cap:
                if not s.alerted:
                    events.append(
                        HealthEvent(
                            "alert",
                            region,
                            f"{region} looks down ({obs.reason}) but {auto_drained} of {len(judged)} regions are "
                            f"already drained automatically (max {policy.max_auto_drain_fraction:.0%}): not draining",
                        )
                    )
                    s.alerted = True
                if s.state == "active":
                    s.state, s.since, s.reason = "degraded", now, obs.reason
                    events.append(HealthEvent("degraded", region, obs.reason))
            else:
                s.state, s.auto_drained, s.since, s.drained_at = "drained", True, now, now
                s.recent_drains = (*(t for t in s.recent_drains if now - t < policy.flap_window_s), now)
                s.reason = f"{obs.reason} for {s.bad_streak} windows in a row"
                if len(s.recent_drains) > 1:
                    hold = policy.hold_after(len(s.recent_drains))
                    s.reason += f"; drained {len(s.recent_drains)} times recently: held at least {hold:.0f} s"
                s.alerted = False
                auto_drained += 1
                events.append(HealthEvent("drain", region, s.reason))
        elif s.state == "degraded" and s.good_streak >= policy.recover_after:
            s.state, s.since, s.reason, s.alerted = "active", now, "recovered", False
            events.append(HealthEvent("recovered", region, f"{policy.recover_after} good windows in a row"))
        elif (
            s.state == "drained"
            and s.auto_drained
            and s.good_streak >= policy.recover_after
            and s.drained_at is not None
            and now - s.drained_at >= policy.hold_after(len(s.recent_drains))
        ):
            held = now - s.drained_at
            s.state, s.auto_drained, s.since, s.drained_at = "active", False, now, None
            s.reason = "recovered"
            auto_drained -= 1
            events.append(
                HealthEvent(
                    "undrain",
                    region,
                    f"recovered: {policy.recover_after} good windows in a row after {held:.0f} s drained",
                )
            )
    return HealthState(regions=regions, frozen=frozen, frozen_since=frozen_since), events
