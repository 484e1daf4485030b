"""A frame worker's reads of every shard of the frames stream (``CTVIS_STREAM_SHARDS``).

Each shard is a stream with its own consumer group, read through its own ``StreamConsumer``
(stale claims, then new entries), so claims, retries and acknowledgements work per shard
exactly as on one stream. Waiting for "a frame on any shard" needs one blocking read per
shard: shards of a Redis Cluster live on different nodes (one ``XREADGROUP`` cannot name two
of them), and a short ``BLOCK`` is no way to poll either, because Redis expires blocked reads
only on its clock tick (100 ms at the default ``hz 10``). ``ShardReader`` therefore keeps one
read in flight per shard, each an asyncio task on its own connection, and hands the worker
whatever the finished reads returned.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from service.redis_conn import LazyAsyncClient
from service.streams import Batch, StreamConsumer, StreamGone, run_plan_async

log = logging.getLogger("ctvis.worker")

ShardBatch = tuple[StreamConsumer, Batch]
"""A batch with the consumer of the shard it came from (which acknowledges it)."""


@dataclass
class _Shard:
    consumer: StreamConsumer
    joined: bool = False
    claim_at: float = 0.0  # monotonic time of the next look for stale entries


class ShardReader:
    """One worker's reads of every shard, the first with entries returned at once.

    ``next_batches`` starts a read on every shard that has none in flight (up to ``count``
    entries, blocking up to ``block_ms``) and returns as soon as one read has finished, with
    the entries of every read finished by then (none when they found nothing); reads still
    waiting stay in flight for the next call. A frame on any shard is taken at once however
    many shards are idle. With one shard this is one read per call, after the previous batch
    was served, as a single-stream worker does. With several, a read may finish while the
    worker runs a batch: its entries (at most ``count`` per shard) wait for the next batch,
    and, should this worker die, are claimed by another worker like the running batch's.

    Args:
        lazy: the worker's client (asyncio; concurrent reads use separate connections).
        streams: the shard streams (``service.keys.frames_stream_keys``).
        group: the workers' consumer group.
        consumer: this worker's consumer name.
        max_deliveries: see ``StreamConsumer``.
        count: entries per read (the worker's batch size).
        claim_idle_ms: entries unacknowledged this long are claimed; each shard looks for
            them at most every ``claim_idle_ms / 2``.
        block_ms: the longest a read waits for new entries.
    """

    def __init__(
        self,
        lazy: LazyAsyncClient,
        streams: Sequence[str],
        group: str,
        consumer: str,
        max_deliveries: int | None,
        count: int,
        claim_idle_ms: int,
        block_ms: int = 200,
    ) -> None:
        self._lazy = lazy
        self._shards = [_Shard(StreamConsumer(s, group, consumer, max_deliveries)) for s in streams]
        self.count = count
        self.claim_idle_ms = claim_idle_ms
        self.block_ms = block_ms
        self._reads: dict[int, asyncio.Task[Batch]] = {}

    def rejoin(self) -> None:
        """Join every group again before the next read (after an error: Redis may have
        restarted without them)."""
        for shard in self._shards:
            shard.joined = False

    async def next_batches(self) -> list[ShardBatch]:
        """The batches of the reads that finished first (empty when all came back empty)."""
        for index, shard in enumerate(self._shards):
            if index not in self._reads:
                self._reads[index] = asyncio.create_task(self._read(shard))
        await asyncio.wait(self._reads.values(), return_when=asyncio.FIRST_COMPLETED)
        return self._collect()

    async def drain(self) -> list[ShardBatch]:
        """Wait for the reads in flight (at most ``block_ms``) and return their batches, so
        that stopping leaves no entry delivered to this worker but unserved."""
        if self._reads:
            await asyncio.wait(self._reads.values())
        return self._collect()

    async def close(self) -> None:
        """Cancel the reads still in flight (the worker itself was cancelled or failed)."""
        tasks = list(self._reads.values())
        self._reads.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _collect(self) -> list[ShardBatch]:
        out = []
        for index, task in list(self._reads.items()):
            if task.done():
                del self._reads[index]
                batch = task.result()
                if batch:
                    out.append((self._shards[index].consumer, batch))
        return out

    async def _read(self, shard: _Shard) -> Batch:
        """One read of one shard; a missing stream, or an error, reads as empty (after a
        pause, so that a shard without a stream or a down node is not asked in a loop)."""
        try:
            client: Any = await self._lazy.get()
            if not shard.joined:
                shard.joined = await run_plan_async(client, shard.consumer.ensure_group())
                if not shard.joined:
                    await asyncio.sleep(0.1)  # no traffic yet (or the idle stream expired)
                    return Batch()
            claim = self.claim_idle_ms if time.monotonic() >= shard.claim_at else None
            read = shard.consumer.read(self.count, self.block_ms, claim)
            batch = await run_plan_async(client, read)
        except StreamGone:
            shard.joined = False  # the idle stream expired; wait for the API to recreate it
            return Batch()
        except Exception as exc:  # noqa: BLE001 - Redis restarts etc.: retry, stay up
            log.warning("frame worker read error (retrying): %s: %s", type(exc).__name__, exc)
            shard.joined = False
            await asyncio.sleep(0.5)
            return Batch()
        if claim is not None:
            shard.claim_at = time.monotonic() + self.claim_idle_ms / 2000
        return batch


def pack(batches: Sequence[ShardBatch], count: int) -> list[list[ShardBatch]]:
    """Group shard batches into runs of at most ``count`` entries each (every batch holds at
    most ``count``), so that no forward pass is larger than the worker's batch size."""
    runs: list[list[ShardBatch]] = []
    size = 0
    for item in batches:
        entries = len(item[1].entries)
        if not runs or size + entries > count:
            runs.append([])
            size = 0
        runs[-1].append(item)
        size += entries
    return runs
