"""The link book's per-report (vectorised) recording and its fold, against simple references.

`RefBook` is the old behaviour written plainly: one sample per (observer, target) pair, kept
as `LinkBook.record` keeps it, and medians over the fresh samples of each region pair.
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from meshctl.core.links import LinkBook, RegionLink

Sample = tuple[str, str, float | None, float | None, float | None, float]


class RefBook:
    def __init__(self) -> None:
        self.kept: dict[tuple[str, str], tuple[str, str, float, float, float, float, float]] = {}

    def record(
        self,
        obs: str,
        obs_region: str,
        tgt: str,
        tgt_region: str,
        p50: float | None,
        p90: float | None,
        jitter: float | None,
        loss: float,
        at: float,
    ) -> None:
        lost = p50 is None or loss >= 100.0
        self.kept[(obs, tgt)] = (
            obs_region,
            tgt_region,
            math.inf if lost or p50 is None else p50,
            math.inf if lost else (p90 if p90 is not None else p50),  # type: ignore[arg-type]
            0.0 if lost or jitter is None else jitter,
            loss,
            at,
        )

    def forget(self, node: str) -> None:
        self.kept = {k: v for k, v in self.kept.items() if node not in k}

    def fold(self, now: float, stale_after_s: float) -> dict[tuple[str, str], tuple[float | int, ...]]:
        groups: dict[tuple[str, str], list[tuple[str, str, float, float, float, float, float]]] = {}
        for v in self.kept.values():
            if v[6] >= now - stale_after_s:
                groups.setdefault((v[0], v[1]), []).append(v)
        out = {}
        for (src, dst), vs in groups.items():
            if src == dst:
                continue
            c = len(vs)

            def median(k: int, vs: list[tuple[str, str, float, float, float, float, float]] = vs, c: int = c) -> float:
                xs = sorted(v[k] for v in vs)
                lo, hi = xs[(c - 1) // 2], xs[c // 2]
                return max(lo, hi) if math.isinf(lo) or math.isinf(hi) else (lo + hi) / 2

            out[(src, dst)] = (median(2), median(3), median(4), median(5), max(v[6] for v in vs), c)
        return out


def as_tuples(links: dict[tuple[str, str], RegionLink]) -> dict[tuple[str, str], tuple[float | int, ...]]:
    for (src, dst), link in links.items():
        assert (link.src, link.dst) == (src, dst) and isinstance(link, RegionLink)
    return {
        k: (x.rtt_p50_ms, x.rtt_p90_ms, x.jitter_ms, x.loss_percent, x.updated_at, x.samples) for k, x in links.items()
    }


def random_samples(rng: random.Random, targets: list[str], region: dict[str, str]) -> list[Sample]:
    out: list[Sample] = []
    for t in targets:
        p50 = None if rng.random() < 0.1 else rng.choice([1.0, 2.0, 3.0, round(rng.random() * 100, 3)])
        p90 = None if rng.random() < 0.2 else round(rng.random() * 200, 3)
        jitter = None if rng.random() < 0.2 else rng.random()
        loss = rng.choice([0.0, 0.0, 50.0, 100.0, rng.random() * 100])
        out.append((t, region[t], p50, p90, jitter, loss))
    return out


@pytest.mark.parametrize("smoothing", [1.0, 0.5])
@pytest.mark.parametrize("seed", range(12))
def test_record_report_matches_one_sample_at_a_time(seed: int, smoothing: float) -> None:
    """Whole reports, one sample at a time, and (without loss smoothing) a plain-Python book agree."""
    rng = random.Random(seed)
    nodes = [f"n{i}" for i in range(rng.randint(2, 30))]
    region = {n: f"aws:r{rng.randint(0, 5)}" for n in nodes}
    book = LinkBook(capacity=4, loss_smoothing=smoothing)
    one_by_one, ref = LinkBook(capacity=4, loss_smoothing=smoothing), RefBook()
    unknown = set(rng.sample(nodes, len(nodes) // 4))  # not joined yet (as seen by this replica)
    t = 0.0
    for _ in range(250):
        t += rng.random()
        if unknown and rng.random() < 0.05:
            unknown.pop()
        op = rng.random()
        if op < 0.04:
            victim = rng.choice(nodes)
            for b in (book, one_by_one):
                b.forget_node(victim)
            ref.forget(victim)
            continue
        obs = rng.choice(nodes)
        k = rng.randint(0, len(nodes))
        targets = rng.sample(nodes, k) if rng.random() < 0.3 else nodes[:k]  # mostly the same list again
        if targets and rng.random() < 0.05:
            targets = [*targets, targets[0]]  # listed twice: the later sample wins
        samples = random_samples(rng, targets, region)
        keep = np.array([rng.random() > 0.1 for _ in samples], dtype=bool)
        cols = np.array([x[2:] for x in samples], dtype=np.float64).reshape(len(samples), 4)
        book.record_report(
            obs,
            region[obs],
            targets,
            lambda n: None if n in unknown else region[n],
            cols[:, 0],
            cols[:, 1],
            cols[:, 2],
            cols[:, 3],
            t,
            keep,
        )
        for (tgt, reg, p50, p90, jitter, loss), kept in zip(samples, keep.tolist(), strict=True):
            if kept and tgt not in unknown:
                one_by_one.record(obs, region[obs], tgt, reg, p50, p90, jitter, loss, t)
                ref.record(obs, region[obs], tgt, reg, p50, p90, jitter, loss, t)
        assert len(book) == len(one_by_one) == len(ref.kept)
        if rng.random() < 0.3:
            now, stale = t + rng.random(), rng.choice([1.0, 3.0, 1000.0])
            got = as_tuples(book.fold(now, stale))
            assert got == as_tuples(one_by_one.fold(now, stale))
            if smoothing == 1.0:
                assert got == ref.fold(now, stale)


def test_record_per_sample_folds_as_the_reference() -> None:
    rng = random.Random(7)
    nodes = [f"n{i}" for i in range(20)]
    region = {n: f"gcp:r{i % 4}" for i, n in enumerate(nodes)}
    book, ref = LinkBook(), RefBook()
    for step in range(200):
        obs = nodes[step % len(nodes)]
        samples = random_samples(rng, [n for n in nodes if rng.random() < 0.7], region)
        for s in samples:
            book.record(obs, region[obs], *s, at=float(step))
            ref.record(obs, region[obs], *s, at=float(step))
    assert as_tuples(book.fold(200.0, 50.0)) == ref.fold(200.0, 50.0)


def test_a_node_seen_under_another_region_moves_its_samples() -> None:
    book = LinkBook()
    nan = np.array([np.nan])
    book.record_report("o", "aws:a", ["t"], lambda _: "gcp:b", np.array([10.0]), nan, nan, np.array([0.0]), 1.0)
    book.record("o", "aws:a", "t", "azure:c", 20.0, None, None, 0.0, 2.0)  # the slow path says otherwise
    assert set(book.fold(3.0, 10.0)) == {("aws:a", "azure:c")}
    book.record_report("o", "aws:a", ["t"], lambda _: "gcp:b", np.array([30.0]), nan, nan, np.array([0.0]), 3.0)
    links = book.fold(3.0, 10.0)
    assert set(links) == {("aws:a", "gcp:b")} and links[("aws:a", "gcp:b")].rtt_p50_ms == 30.0


def test_an_unknown_target_is_skipped_until_it_is_known() -> None:
    book = LinkBook()
    known: set[str] = {"t1"}
    ones = np.ones(2)
    for at in (1.0, 2.0):
        book.record_report(
            "o", "aws:a", ["t1", "t2"], lambda n: "gcp:b" if n in known else None, ones, ones, ones, 0 * ones, at
        )
        assert len(book) == len(known)
        known.add("t2")


@pytest.mark.parametrize(("sizes", "padded"), [([1, 2, 3, 4, 5, 6, 7], True), ([1] * 50 + [400], False)])
def test_fold_medians_with_both_sorts(sizes: list[int], padded: bool) -> None:
    """Groups of even and odd size, inf among them; sorted as rows of a padded matrix, or (one
    group much larger than the rest) by lexsort."""
    rng = random.Random(len(sizes))
    book, ref = LinkBook(), RefBook()
    for g, size in enumerate(sizes):
        for i in range(size):
            sample = (rng.choice([None, 5.0, rng.random() * 50]), None, rng.random(), rng.random() * 100)
            book.record(f"o{g}-{i}", f"aws:s{g}", "t", "gcp:d", *sample, at=float(i))
            ref.record(f"o{g}-{i}", f"aws:s{g}", "t", "gcp:d", *sample, at=float(i))
    for now, stale in ((1000.0, 1000.0), (1000.0, 1000.0), (3.5, 2.0)):  # the second reuses the grouping
        assert as_tuples(book.fold(now, stale)) == ref.fold(now, stale)
    book.fold(1000.0, 1000.0)
    assert (book._grouping is not None) and (book._grouping.cells is not None) == padded


def test_loss_is_smoothed_over_windows_of_the_same_pair() -> None:
    """Five probes a window make a noisy loss figure: an exponential average keeps routes still."""
    book = LinkBook(loss_smoothing=0.5, smoothing_horizon_s=10.0)
    for t, loss in ((1.0, 40.0), (2.0, 0.0), (3.0, 20.0)):
        book.record("a", "aws:x", "b", "gcp:y", 10.0, 11.0, 0.5, loss, t)
    assert book.fold(3.0, 30.0)[("aws:x", "gcp:y")].loss_percent == 20.0  # 40, then (0 + 40)/2, then (20 + 20)/2
    book.record("a", "aws:x", "b", "gcp:y", 10.0, 11.0, 0.5, 60.0, 20.0)  # after the horizon: as measured
    assert book.fold(20.0, 30.0)[("aws:x", "gcp:y")].loss_percent == 60.0
    book.record("a", "aws:x", "b", "gcp:y", None, None, None, 100.0, 21.0)  # nothing back: unusable at once
    link = book.fold(21.0, 30.0)[("aws:x", "gcp:y")]
    assert link.rtt_p50_ms == float("inf") and link.loss_percent == 80.0


def test_a_loss_that_stopped_goes_back_to_zero() -> None:
    """The average halves at each clean window; below LOSS_FLOOR_PERCENT it is 0, not 1e-20 forever
    (the lab's convergence check, and a person reading `meshctl links`, want a clean link to say 0)."""
    book = LinkBook(loss_smoothing=0.5, smoothing_horizon_s=10.0)
    vectorised = LinkBook(loss_smoothing=0.5, smoothing_horizon_s=10.0)
    seen = []
    for t in range(40):
        loss = 20.0 if t == 0 else 0.0  # one probe of five lost, then clean windows
        book.record("a", "aws:x", "b", "gcp:y", 10.0, 11.0, 0.5, loss, float(t))
        arrays = [np.array([v]) for v in (10.0, 11.0, 0.5, loss)]
        vectorised.record_report("a", "aws:x", ["b"], lambda _: "gcp:y", *arrays, at=float(t))
        seen.append(book.fold(float(t), 30.0)[("aws:x", "gcp:y")].loss_percent)
        assert vectorised.fold(float(t), 30.0)[("aws:x", "gcp:y")].loss_percent == seen[-1]
    assert seen[:4] == [20.0, 10.0, 5.0, 2.5]
    first_zero = seen.index(0.0)
    assert all(x > 0 for x in seen[:first_zero]) and all(x == 0.0 for x in seen[first_zero:])
    assert first_zero == 11  # 20 / 2**11 = 0.0098 % < LOSS_FLOOR_PERCENT: 11 clean windows, not a quarter of an hour
