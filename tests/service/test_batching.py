"""BatchQueue: grouping, ordering, error fan-out, size check, close."""

from __future__ import annotations

import asyncio

import pytest

from service.batching import BatchQueue, BatchSizeMismatch, QueueClosed


async def test_groups_concurrent_items_and_keeps_order() -> None:
    sizes: list[int] = []

    async def double(items: list[int]) -> list[int]:
        sizes.append(len(items))
        return [2 * i for i in items]

    q: BatchQueue[int, int] = BatchQueue(double, max_batch_size=4, max_wait_s=0.05)
    q.start()
    results = await asyncio.gather(*(q.submit(i) for i in range(10)))
    await q.close()
    assert results == [2 * i for i in range(10)]
    assert max(sizes) == 4 and sum(sizes) == 10
    assert len(sizes) < 10  # some batching happened


async def test_error_fans_out_to_every_caller_and_queue_survives() -> None:
    calls = 0

    async def flaky(items: list[int]) -> list[int]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ValueError("boom")
        return items

    q: BatchQueue[int, int] = BatchQueue(flaky, max_batch_size=8, max_wait_s=0.05)
    q.start()
    outcomes = await asyncio.gather(*(q.submit(i) for i in range(3)), return_exceptions=True)
    assert all(isinstance(o, ValueError) for o in outcomes)
    assert await q.submit(7) == 7
    await q.close()


async def test_wrong_result_count_is_an_error() -> None:
    async def short(items: list[int]) -> list[int]:
        return items[:-1]

    q: BatchQueue[int, int] = BatchQueue(short, max_batch_size=2, max_wait_s=0.05)
    q.start()
    outcomes = await asyncio.gather(q.submit(1), q.submit(2), return_exceptions=True)
    await q.close()
    assert all(isinstance(o, BatchSizeMismatch) for o in outcomes)


async def test_submit_after_close_fails() -> None:
    async def ident(items: list[int]) -> list[int]:
        return items

    q: BatchQueue[int, int] = BatchQueue(ident)
    q.start()
    await q.close()
    with pytest.raises(QueueClosed):
        await q.submit(1)


def test_rejects_bad_batch_size() -> None:
    async def ident(items: list[int]) -> list[int]:
        return items

    with pytest.raises(ValueError):
        BatchQueue(ident, max_batch_size=0)


async def test_lone_caller_does_not_wait_for_company() -> None:
    import time

    async def ident(items: list[int]) -> list[int]:
        return items

    q: BatchQueue[int, int] = BatchQueue(ident, max_batch_size=8, max_wait_s=0.5)
    q.start()
    t0 = time.monotonic()
    for i in range(5):
        assert await q.submit(i) == i
    await q.close()
    assert time.monotonic() - t0 < 0.5  # five sequential calls, none waited max_wait
