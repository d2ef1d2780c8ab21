"""Group commit (`BatchWriter`): each submitter is told its own item's result once its batch is
written; under load, what comes while the next write is due joins it."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from meshctl.service.batch import BatchWriter


class Recorder:
    """A write that notes when it began and what it was given; item -1 fails its batch."""

    def __init__(self) -> None:
        self.batches: list[tuple[float, list[int]]] = []

    async def write(self, items: list[int]) -> list[int]:
        self.batches.append((asyncio.get_running_loop().time(), items))
        await asyncio.sleep(0.001)
        if -1 in items:
            raise OSError("the store is away")
        return [i * 10 for i in items]


def test_an_item_after_a_quiet_spell_is_written_at_once_and_load_shares_writes() -> None:
    async def go() -> None:
        rec = Recorder()
        writer: BatchWriter[int, int] = BatchWriter(rec.write, gather_s=0.2)
        writer.start()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        assert await writer.submit(1) == 10
        assert rec.batches[0][0] - t0 < 0.1  # nothing written before: no wait
        # 40 items over ~0.4 s: each write begins 0.2 s after the one before, the rest join it
        results = await asyncio.gather(*(submit_later(writer, i, i * 0.01) for i in range(2, 42)))
        assert results == [i * 10 for i in range(2, 42)]
        starts = [t for t, _ in rec.batches]
        assert all(b - a >= 0.2 - 0.005 for a, b in itertools.pairwise(starts)), starts
        assert sorted(i for _, items in rec.batches for i in items) == list(range(1, 42))
        assert len(rec.batches) <= 5, [len(items) for _, items in rec.batches]
        await writer.stop()

    asyncio.run(go())


async def submit_later(writer: BatchWriter[int, int], item: int, delay: float) -> int:
    await asyncio.sleep(delay)
    return await writer.submit(item)


@pytest.mark.parametrize("gather_s", [0.0, 0.05])
def test_a_failed_write_fails_every_item_of_its_batch_and_only_those(gather_s: float) -> None:
    async def go() -> None:
        rec = Recorder()
        writer: BatchWriter[int, int] = BatchWriter(rec.write, gather_s=gather_s)
        writer.start()
        await writer.submit(0)
        outcomes = await asyncio.gather(writer.submit(-1), writer.submit(5), return_exceptions=True)
        assert all(isinstance(o, OSError) for o in outcomes), outcomes  # written together, failed together
        assert await writer.submit(6) == 60  # the writer goes on
        await writer.stop()

    asyncio.run(go())
