"""The store's queue: urgent calls (drains) go ahead of every ordinary call still waiting."""

from __future__ import annotations

import asyncio
import threading

import pytest

from meshctl.service.store_queue import StoreQueue


def test_an_urgent_call_runs_before_the_ordinary_ones_queued_before_it() -> None:
    q = StoreQueue(workers=1)
    started, gate = threading.Event(), threading.Event()
    ran: list[str] = []
    first = q.submit(lambda: started.set() or gate.wait(5))  # holds the one thread, as a long report batch would
    assert started.wait(5)
    waiting = [q.submit(lambda i=i: ran.append(f"report {i}")) for i in range(5)]
    drains = [q.submit(lambda i=i: ran.append(f"drain {i}"), urgent=True) for i in range(2)]
    assert q.pending() == 7
    gate.set()
    for f in [first, *waiting, *drains]:
        f.result(5)
    # the running call is not interrupted; then the drains in their own order, then the rest in theirs
    assert ran == ["drain 0", "drain 1", *(f"report {i}" for i in range(5))]
    q.shutdown()


def test_results_and_errors_reach_the_caller_and_the_thread_goes_on() -> None:
    q = StoreQueue(workers=1)

    def broken() -> None:
        raise ValueError("constraint failed")

    assert q.submit(lambda: 6 * 7).result(5) == 42
    with pytest.raises(ValueError, match="constraint failed"):
        q.submit(broken).result(5)
    assert q.submit(lambda: "still here", urgent=True).result(5) == "still here"
    q.shutdown()
    with pytest.raises(RuntimeError, match="shut down"):
        q.submit(lambda: None)


def test_awaitable_from_the_event_loop_with_arguments() -> None:
    q = StoreQueue(workers=2)

    async def main() -> list[int]:
        return list(await asyncio.gather(*(q.run(pow, 2, n, urgent=n % 2 == 0) for n in range(6))))

    assert asyncio.run(main()) == [1, 2, 4, 8, 16, 32]
    q.shutdown()
