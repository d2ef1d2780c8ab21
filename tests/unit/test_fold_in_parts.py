"""The fold split in two (`LinkBook.fold_in_parts`): its number work runs on a thread while the
event loop keeps recording reports and forgetting nodes. What the control loop relies on: the
result is a fold of samples of the right pairs, whatever was recorded or forgotten meanwhile."""

from __future__ import annotations

import random
import threading

import numpy as np
import pytest

from meshctl.core.links import LinkBook


def _book(regions: int = 4, nodes_per_region: int = 3, rtt_of: float = 10.0) -> tuple[LinkBook, dict[str, str]]:
    """Every node samples every node of the other regions; RTT = rtt_of x (|i - j| + 1) ms for regions i, j."""
    book = LinkBook(capacity=4)
    region_of = {f"n{r}-{k}": f"r{r}" for r in range(regions) for k in range(nodes_per_region)}
    for obs, obs_region in region_of.items():
        targets = [t for t, tr in region_of.items() if tr != obs_region]
        rtt = np.array([rtt_of * (abs(int(obs_region[1:]) - int(region_of[t][1:])) + 1) for t in targets])
        book.record_report(
            obs, obs_region, targets, region_of.get, rtt, rtt * 1.1, rtt * 0.01, np.zeros(len(targets)), 100.0
        )
    return book, region_of


def _p50s(table: object) -> dict[tuple[str, str], float]:
    return {k: v.rtt_p50_ms for k, v in table.items()}  # type: ignore[attr-defined]


def test_the_numbers_run_later_and_fold_what_was_there() -> None:
    book, _ = _book()
    whole = _p50s(book.fold(100.0, 20.0))
    numbers = book.fold_in_parts(100.0, 20.0)
    assert _p50s(numbers()) == whole
    assert whole[("r0", "r3")] == 40.0 and len(whole) == 12


def test_a_slot_freed_during_a_fold_is_not_given_to_another_pair_before_the_next_fold() -> None:
    book, region_of = _book(nodes_per_region=1)  # one sample a link: a median hides nothing
    numbers = book.fold_in_parts(100.0, 20.0)
    book.forget_node("n0-0")  # frees the slots of everything n0-0 measured and was measured by
    # a new node of a new region takes slots now: with the freed ones, its 1,000 ms samples would
    # land in the groups of r0's links that the pending fold already laid out
    region_of["n9-0"] = "r9"
    targets = [t for t in region_of if t not in ("n9-0", "n0-0")]
    targets += [f"x{i}" for i in range(6)]  # more new slots than were freed
    for t in targets[-6:]:
        region_of[t] = "r8"
    far = np.full(len(targets), 1000.0)
    book.record_report("n9-0", "r9", targets, region_of.get, far, far, far * 0.0, np.zeros(len(targets)), 100.0)
    folded = _p50s(numbers())
    assert max(folded.values()) <= 40.0, "a sample of another pair was folded into these links"
    assert ("r0", "r3") in folded and ("r9", "r1") not in folded  # the new pairs wait for the next fold
    after = _p50s(book.fold(101.0, 20.0))
    assert after[("r9", "r1")] == after[("r9", "r8")] == 1000.0 and after[("r1", "r3")] == 30.0
    assert ("r0", "r3") not in after


def test_the_slots_freed_are_taken_again_once_the_next_fold_began() -> None:
    book, region_of = _book()
    used = book._used
    for round_ in range(5):  # nodes leave and come back, a fold each time: the book does not grow
        book.fold(100.0 + round_, 20.0)
        book.forget_node("n1-1")
        book.fold(100.0 + round_, 20.0)
        targets = [t for t, r in region_of.items() if r != "r1"]
        rtt = np.full(len(targets), 25.0)
        book.record_report("n1-1", "r1", targets, region_of.get, rtt, rtt, rtt * 0, np.zeros(len(targets)), 100.0)
    assert book._used == used


def test_reports_recorded_while_the_numbers_run_on_a_thread() -> None:
    """The control loop's use, for real: the numbers on a thread, reports recorded meanwhile. Each
    link is a median of samples of its own region pair, old or new: within the pair's two RTTs."""
    rng = random.Random(7)
    book, region_of = _book(regions=6, nodes_per_region=8)
    nodes = list(region_of)
    stop = threading.Event()
    results = []

    def fold_loop() -> None:
        while not stop.is_set():
            results.append(book.fold_in_parts(200.0, 1000.0)())

    for _ in range(3):
        thread = threading.Thread(target=fold_loop)
        thread.start()
        try:
            for _ in range(400):  # each a report with RTTs 2x the first: a link is between the two
                obs = rng.choice(nodes)
                targets = [t for t in nodes if region_of[t] != region_of[obs]]
                rtt = np.array([20.0 * (abs(int(region_of[obs][1:]) - int(region_of[t][1:])) + 1) for t in targets])
                book.record_report(
                    obs, region_of[obs], targets, region_of.get, rtt, rtt, rtt * 0, np.zeros(len(targets)), 150.0
                )
        finally:
            stop.set()
            thread.join()
        stop.clear()
    assert results
    for table in results:
        for (src, dst), link in table.items():
            base = 10.0 * (abs(int(src[1:]) - int(dst[1:])) + 1)
            assert base <= link.rtt_p50_ms <= 2 * base, (src, dst, link)
            assert link.samples == 64
    final = _p50s(book.fold(200.0, 1000.0))
    assert all(v >= 10.0 for v in final.values()) and len(final) == 30


@pytest.mark.parametrize("stale_after_s", [20.0, 0.5])
def test_fold_is_its_parts_run_at_once(stale_after_s: float) -> None:
    book, _ = _book(regions=5)
    assert _p50s(book.fold(100.2, stale_after_s)) == _p50s(book.fold_in_parts(100.2, stale_after_s)())
