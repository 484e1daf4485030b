"""A generic asyncio batch queue: many callers, one consumer, one batched call at a time.

Items from different callers (sessions) are grouped into batches of at most ``max_batch_size``,
waiting at most ``max_wait_s`` for a batch to fill. The batch function runs once per batch; its
results are fanned back to the callers in order. If the batch function raises, every caller
of that batch gets the exception; if it returns the wrong number of results, every caller gets
a ``BatchSizeMismatch``. The queue knows nothing about models.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

In = TypeVar("In")
Out = TypeVar("Out")


class BatchSizeMismatch(RuntimeError):
    """The batch function returned a different number of results than it was given."""


class QueueClosed(RuntimeError):
    """The queue was closed before the item could run."""


@dataclass
class _Pending(Generic[In, Out]):
    item: In
    future: asyncio.Future[Out]
    enqueued_at: float


class BatchQueue(Generic[In, Out]):
    """Collects items into batches for ``batch_fn``; start with ``start()``, stop with ``close()``.

    Args:
        batch_fn: async function mapping a list of items to a list of results of equal length.
        max_batch_size: most items per call.
        max_wait_s: longest time the first item of a batch waits for more items.
        on_batch: optional callback ``(batch_size, seconds)`` after every call (metrics).
    """

    def __init__(
        self,
        batch_fn: Callable[[list[In]], Awaitable[Sequence[Out]]],
        max_batch_size: int = 8,
        max_wait_s: float = 0.005,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        self._batch_fn = batch_fn
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self._on_batch = on_batch
        self._queue: asyncio.Queue[_Pending[In, Out]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._last_size = 0

    @property
    def depth(self) -> int:
        """Items waiting for a batch."""
        return self._queue.qsize()

    def start(self) -> None:
        """Start the consumer task on the running loop (idempotent)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._consume())

    async def submit(self, item: In) -> Out:
        """Queue ``item`` and wait for its result (or the exception of its batch)."""
        if self._closed:
            raise QueueClosed("the batch queue is closed")
        future: asyncio.Future[Out] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(item, future, time.monotonic()))
        return await future

    async def close(self) -> None:
        """Stop the consumer; items still queued fail with ``QueueClosed``."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        while not self._queue.empty():
            pending = self._queue.get_nowait()
            if not pending.future.done():
                pending.future.set_exception(QueueClosed("the batch queue was closed"))

    async def _collect(self) -> list[_Pending[In, Out]]:
        batch = [await self._queue.get()]
        if self._last_size <= 1 and self._queue.empty():
            # A lone caller (the last batch had one item and nobody else is waiting) runs at
            # once instead of paying max_wait for company that is not coming. Under
            # concurrent load batches are larger than one, so waiting resumes.
            self._last_size = 1
            return batch
        deadline = time.monotonic() + self.max_wait_s
        while len(batch) < self.max_batch_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                while len(batch) < self.max_batch_size and not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        self._last_size = len(batch)
        return [p for p in batch if not p.future.cancelled()]

    async def _consume(self) -> None:
        while True:
            batch = await self._collect()
            if not batch:
                continue
            started = time.monotonic()
            try:
                results = await self._batch_fn([p.item for p in batch])
                if len(results) != len(batch):
                    raise BatchSizeMismatch(
                        f"batch function returned {len(results)} results for {len(batch)} items"
                    )
            except asyncio.CancelledError:
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(QueueClosed("the batch queue was closed"))
                raise
            except Exception as exc:  # noqa: BLE001 - fanned out to every caller
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(exc)
            else:
                for p, result in zip(batch, results, strict=True):
                    if not p.future.done():
                        p.future.set_result(result)
            if self._on_batch is not None:
                self._on_batch(len(batch), time.monotonic() - started)
