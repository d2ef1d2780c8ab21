"""When to probe each target: rates within the node's probe budget, and the due times they give.

At 150 regions a node probes ~300 targets (k per other region) and is probed by as many. At the
full rate (5/s) to every one of them the agent would handle some 6,000 packets a second, more
than a core of a media server. So the node has a budget of probes per second (`probe_budget`):

- targets that lost a probe lately (*suspects*: a loss in the last window or the one running)
  keep the full rate, so three losses in a row (an early window) come as fast as before;
- the stable ones share what is left evenly, never less than one probe per window (the floor)
  and never more than the full rate.

A region pair is measured by k nodes on each of M nodes of the region, so its statistics keep
their samples (150 probes/s over 298 targets: 2.5 per target per 5 s window, 100 per region
pair at 20 nodes a region), while each node sends and reflects a fifth of the packets.

`ProbeSchedule` spreads the targets' probes evenly (a target's first probe at its share of its
interval) and answers which are due; the agent sends those at each wake-up, so the number of
wake-ups does not grow with the targets. Pure: the caller gives every time.
"""

from __future__ import annotations

import heapq
from collections.abc import Collection, Sequence


def probe_rates(
    targets: Sequence[str], rate: float, budget: float, suspects: Collection[str], floor: float
) -> dict[str, float]:
    """Probes per second for each target: `rate` to suspects (within the budget), the rest of the
    budget shared by the others, each between `floor` and `rate`."""
    if not targets:
        return {}
    suspect = [t for t in targets if t in suspects]
    stable = len(targets) - len(suspect)
    suspect_rate = max(floor, min(rate, budget / len(suspect))) if suspect else rate
    left = budget - suspect_rate * len(suspect)
    stable_rate = max(floor, min(rate, left / stable)) if stable else rate
    return {t: suspect_rate if t in suspects else stable_rate for t in targets}


class ProbeSchedule:
    """Due times of each target's probes at its rate; `hurry` moves a target to a higher rate."""

    def __init__(self, rates: dict[str, float], start: float) -> None:
        self.rates = dict(rates)
        self._version = dict.fromkeys(rates, 0)
        n = max(1, len(rates))
        self._heap = [(start + i / n / r, t, 0) for i, (t, r) in enumerate(rates.items())]
        heapq.heapify(self._heap)

    def due(self, now: float) -> list[str]:
        """The targets whose probe is due by `now`, each scheduled again one interval later (from
        `now` when it fell more than an interval behind: a late wake-up is not made up in a burst)."""
        heap, out = self._heap, []
        while heap and heap[0][0] <= now:
            at, target, version = heapq.heappop(heap)
            if version != self._version[target]:
                continue  # replaced by `hurry`
            out.append(target)
            interval = 1.0 / self.rates[target]
            heapq.heappush(heap, (max(at + interval, now), target, version))
        return out

    def hurry(self, target: str, rate: float, now: float) -> None:
        """Probe `target` at `rate` from now on (a lost probe: make it a suspect at once)."""
        if target not in self.rates or self.rates[target] >= rate:
            return
        self.rates[target] = rate
        self._version[target] += 1
        heapq.heappush(self._heap, (now + 1.0 / rate, target, self._version[target]))
