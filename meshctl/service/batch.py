"""Group commit: many concurrent writers, one transaction per batch, each told its own result."""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class BatchWriter(Generic[Item, Result]):
    """Collects items submitted while a write is in flight and writes them together.

    `submit` returns only after the batch holding the item is committed, so an acknowledged
    report (or join) is durable; under load, batches grow and the per-item cost shrinks.
    """

    def __init__(
        self,
        write: Callable[[list[Item]], Awaitable[list[Result]]],
        max_batch: int = 1000,
        name: str = "report-writer",
        gather_s: float = 0.0,
    ) -> None:
        self._write = write
        self._max = max_batch
        self._name = name
        # a write begins at least this long after the one before began: what comes meanwhile joins
        # it (one commit, one fsync for more items); an item alone after a quiet spell waits not at all
        self._gather_s = gather_s
        self._queue: asyncio.Queue[tuple[Item, asyncio.Future[Result]]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    @property
    def started(self) -> bool:
        return self._task is not None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self._name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def submit(self, item: Item) -> Result:
        fut: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        await self._queue.put((item, fut))
        return await fut

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        began = -math.inf
        while True:
            batch = [await self._queue.get()]
            if (wait := began + self._gather_s - loop.time()) > 0:
                await asyncio.sleep(wait)
            began = loop.time()
            while len(batch) < self._max and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                results = await self._write([item for item, _ in batch])
            except Exception as exc:
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            for (_, fut), ok in zip(batch, results, strict=True):
                if not fut.done():
                    fut.set_result(ok)
