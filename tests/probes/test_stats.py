"""The window percentiles, computed without numpy on the node, equal numpy's (its default method)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from probes.stats import PeerWindow, percentile

rtts = st.lists(st.floats(0.0, 5000.0, allow_nan=False), min_size=1, max_size=300)


@settings(max_examples=500, deadline=None)
@given(rtts, st.sampled_from([0, 1, 10, 25, 50, 75, 90, 99, 99.9, 100]))
def test_percentile_equals_numpy(values: list[float], p: float) -> None:
    assert percentile(sorted(values), p) == float(np.percentile(np.asarray(values), p))


@settings(max_examples=300, deadline=None)
@given(rtts)
def test_summary_equals_the_numpy_reference(values: list[float]) -> None:
    w = PeerWindow()
    for seq, rtt in enumerate(values):
        w.on_sent()
        w.on_reply(seq, rtt)
    s = w.summary("n-peer")
    a = np.asarray(values)
    assert s["rtt_min_ms"] == round(float(a.min()), 4) and s["rtt_max_ms"] == round(float(a.max()), 4)
    assert s["rtt_p50_ms"] == round(float(np.percentile(a, 50)), 4)
    assert s["rtt_p90_ms"] == round(float(np.percentile(a, 90)), 4)


def test_percentile_of_nothing_is_an_error() -> None:
    with pytest.raises(ValueError):
        percentile([], 50)
