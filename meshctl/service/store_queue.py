"""The store's threads, with a fast lane: drains, the leader's lease and route publication go
ahead of telemetry.

SQLite takes one writer at a time, so the controller funnels every store call through one
thread. A plain FIFO put an operator's drain behind whatever was queued before it (report
batches, reloads, the loop's reads): on a loaded machine a node drain waited most of a second
to be written, and its agent heard of it only then. Here a call marked `urgent` is taken before
every ordinary call still waiting (never before one already running: a transaction is not
interrupted), in the order urgent calls came. PostgreSQL gets several threads; the lane is the
same.

    queue = StoreQueue(workers=1)
    await queue.run(store.insert_reports, batch)
    await queue.run(store.set_node_drain, node_id, reason, by, now, urgent=True)
"""

from __future__ import annotations

import asyncio
import itertools
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")

URGENT, ORDINARY, STOP = 0, 1, 2


class StoreQueue:
    """`workers` threads taking store calls, urgent ones first, each in arrival order."""

    def __init__(self, workers: int = 1, name: str = "store") -> None:
        self._queue: queue.PriorityQueue[tuple[int, int, Future[Any] | None, Callable[[], Any] | None]] = (
            queue.PriorityQueue()
        )
        self._order = itertools.count()
        self._closed = False
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}_{i}", daemon=True) for i in range(max(1, workers))
        ]
        for t in self._threads:
            t.start()

    def submit(self, fn: Callable[[], T], urgent: bool = False) -> Future[T]:
        """Queue `fn()`; its future holds the result or the exception."""
        if self._closed:
            raise RuntimeError("the store queue is shut down")
        fut: Future[T] = Future()
        self._queue.put((URGENT if urgent else ORDINARY, next(self._order), fut, fn))
        return fut

    def run(self, fn: Callable[..., T], /, *args: Any, urgent: bool = False, **kwargs: Any) -> asyncio.Future[T]:
        """`fn(*args, **kwargs)` on a store thread, awaitable from the event loop."""
        return asyncio.wrap_future(self.submit(lambda: fn(*args, **kwargs), urgent))

    def pending(self) -> int:
        """Calls waiting for a thread (not counting those running)."""
        return self._queue.qsize()

    def shutdown(self) -> None:
        """No new calls; the threads end once what is queued is done (they never hold the process)."""
        if not self._closed:
            self._closed = True
            for _ in self._threads:
                self._queue.put((STOP, next(self._order), None, None))

    def _work(self) -> None:
        while True:
            _lane, _order, fut, fn = self._queue.get()
            if fut is None or fn is None:
                return
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn())
            except BaseException as exc:  # handed to whoever awaits it
                fut.set_exception(exc)
