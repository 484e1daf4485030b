"""API and GPU workers as separate processes, joined through Redis Streams.

The API side (``RedisFrameQueue``) has the same ``submit`` interface as the in-process
``BatchQueue``: it appends ``(frame, state, tracker settings)`` to a stream and waits for the
reply on a per-request list; the reply carries the new state as a delta against the state
sent. Workers (``run_frame_worker``) read the stream through a consumer
group (``service.streams``), batch frames from many sessions, run ``Engine.run_batch`` and push
each outcome back.
With ``stream_shards`` > 1 the stream is that many shards (``service.keys``): the API puts a
session's frames on the shard of its id, and every worker reads all shards
(``service.shard_reader``) with the same claim and retry rules per shard.
Workers are stateless: the API keeps the session's lease and does the compare-and-set save,
exactly as in a single process, so N API replicas and M workers can run side by side.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import struct
import time
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from model.config import to_dict, tracker_config_from_dict
from model.structures import Instance
from model.tracker import codec
from model.tracker.delta import apply_delta, dumps_delta
from model.tracker.state import TrackState
from service.auth import new_id
from service.engine import Engine, FrameItem, FrameOutcome
from service.errors import ApiError, store_unavailable
from service.keys import (
    FRAMES_STREAM,
    WORKER_GROUP,
    frames_stream_key,
    frames_stream_keys,
    reply_key,
    shard_of,
)
from service.metrics import Metrics
from service.redis_conn import LazyAsyncClient, RedisMode
from service.shard_reader import ShardBatch, ShardReader, pack

if TYPE_CHECKING:
    from redis.typing import EncodableT, FieldT

log = logging.getLogger("ctvis.worker")

REPLY_TTL_S = 120
STREAM_MAXLEN = 10_000
STREAM_TTL_S = 3600
MAX_DELIVERIES = 2  # the first worker plus one retry on another


class WorkerLost(RuntimeError):
    """The frame's worker died and the one retry on another worker died too (retryable)."""


def encode_item(item: FrameItem, model_id: str, request_id: str) -> dict[FieldT, EncodableT]:
    """Stream fields of one frame request."""
    h, w = item.frame.shape[:2]
    return {
        "request_id": request_id,
        "model_id": model_id,
        "height": str(h),
        "width": str(w),
        "frame": np.ascontiguousarray(item.frame, dtype=np.uint8).tobytes(),
        "state": codec.dumps(item.state, model_id, compact=False),
        "tracker": json.dumps(to_dict(item.tracker_cfg)),
        "sent_at": repr(time.time()),
    }


def decode_item(fields: dict[bytes, bytes]) -> tuple[str, str, FrameItem]:
    """(request_id, model_id, FrameItem) of stream fields written by ``encode_item``."""
    h, w = int(fields[b"height"]), int(fields[b"width"])
    frame = np.frombuffer(fields[b"frame"], dtype=np.uint8).reshape(h, w, 3)
    state = codec.loads(fields[b"state"])
    cfg = tracker_config_from_dict(json.loads(fields[b"tracker"]))
    return (
        fields[b"request_id"].decode(),
        fields[b"model_id"].decode(),
        FrameItem(frame, state, cfg),
    )


def encode_outcome(outcome: FrameOutcome, model_id: str, prev: TrackState | None = None) -> bytes:
    """Reply bytes: 4-byte header length, JSON header, then the new state.

    With ``prev`` (the state the request carried) the new state travels as a lossless delta
    against it (``model.tracker.delta``: the rows the frame changed, a few kB instead of the
    whole K x D embedding cache); the API, which sent ``prev``, rebuilds the state bit for bit.
    """
    header = {
        "instances": [asdict(i) for i in outcome.instances],
        "model_ms": outcome.model_ms,
        "batch_size": outcome.batch_size,
        "error": None
        if outcome.error is None
        else f"{type(outcome.error).__name__}: {outcome.error}",
        "worker_lost": isinstance(outcome.error, WorkerLost),
        "state_delta": outcome.state is not None and prev is not None,
    }
    if outcome.state is None:
        state = b""
    elif prev is not None:
        state = dumps_delta(prev, outcome.state)
    else:
        state = codec.dumps(outcome.state, model_id, compact=False)
    head = json.dumps(header).encode()
    return struct.pack(">I", len(head)) + head + state


def decode_outcome(data: bytes, prev: TrackState | None = None) -> FrameOutcome:
    """Inverse of ``encode_outcome``; ``prev`` is the request's state (needed for a delta)."""
    (size,) = struct.unpack(">I", data[:4])
    header = json.loads(data[4 : 4 + size])
    state_bytes = data[4 + size :]
    instances = [Instance(**{**i, "bbox": tuple(i["bbox"])}) for i in header["instances"]]
    state = None
    if header.get("state_delta"):
        if prev is None:
            raise ValueError("a delta reply needs the state its request carried")
        state = apply_delta(prev, state_bytes)
    elif state_bytes:
        state = codec.loads(state_bytes)
    return FrameOutcome(
        state=state,
        instances=instances,
        model_ms=float(header["model_ms"]),
        batch_size=int(header["batch_size"]),
        error=_decode_error(header),
    )


def _decode_error(header: dict[str, Any]) -> Exception | None:
    if not header["error"]:
        return None
    if header.get("worker_lost"):
        return WorkerLost(header["error"])
    return RuntimeError(header["error"])


class RedisFrameQueue:
    """API side: submit a frame to the workers and wait for its outcome."""

    def __init__(
        self,
        url: str,
        model_id: str,
        timeout_s: float,
        stream: str = FRAMES_STREAM,
        stream_ttl_s: int = STREAM_TTL_S,
        redis_mode: RedisMode = "auto",
        shards: int = 1,
    ) -> None:
        # BLPOP blocks for up to timeout_s: the socket must wait longer than that.
        self._lazy = LazyAsyncClient(
            url, redis_mode, socket_connect_timeout=2, socket_timeout=timeout_s + 5
        )
        self.model_id = model_id
        self.timeout_s = timeout_s
        self.stream = stream
        self.stream_ttl_s = stream_ttl_s
        self.shards = shards
        self.depth = 0

    def start(self) -> None:
        """Nothing to start: workers consume the stream."""

    async def _c(self) -> Any:
        return await self._lazy.get()

    async def submit(self, item: FrameItem) -> FrameOutcome:
        """Queue the frame for a worker; 503 ``worker_unavailable`` if nobody answers."""
        request_id = new_id()
        fields = encode_item(item, self.model_id, request_id)
        shard = shard_of(item.session_id, self.shards)
        stream = frames_stream_key(self.stream, shard, self.shards)
        try:
            client = await self._c()
            async with client.pipeline(transaction=False) as pipe:
                pipe.xadd(stream, fields, maxlen=STREAM_MAXLEN, approximate=True)
                # The stream disappears after an hour without traffic (no key outlives use).
                pipe.expire(stream, self.stream_ttl_s)
                await pipe.execute()
            self.depth += 1
            try:
                # decode_responses is off: (key, value) as bytes, or None on timeout
                reply = cast(
                    "tuple[bytes, bytes] | None",
                    await client.blpop([reply_key(request_id)], timeout=self.timeout_s),
                )
            finally:
                self.depth -= 1
        except ApiError:
            raise
        except Exception as exc:  # noqa: BLE001 - connection errors of the client library
            raise store_unavailable(exc) from exc
        if reply is None:
            raise ApiError(
                503, "worker_unavailable", f"no worker answered within {self.timeout_s:g} s"
            )
        return decode_outcome(reply[1], item.state)

    async def close(self) -> None:
        await self._lazy.close()


async def run_frame_worker(
    url: str,
    engine: Engine,
    model_id: str,
    max_batch_size: int,
    stop: asyncio.Event,
    stream: str = FRAMES_STREAM,
    metrics: Metrics | None = None,
    claim_idle_ms: int = 5_000,
    redis_mode: RedisMode = "auto",
    shards: int = 1,
) -> int:
    """Consume frame requests until ``stop`` is set; returns the number of frames processed.

    Every read takes up to ``max_batch_size`` requests (from different sessions: a session
    never has two frames in flight), runs them as one batch, pushes every reply, then
    acknowledges the entries. Entries another worker took but never acknowledged (it died)
    are claimed after ``claim_idle_ms`` and retried once; a second loss answers
    ``WorkerLost``. On ``stop`` the current batch, and whatever reads in flight return, are
    finished and acknowledged first. With ``shards`` > 1 all shard streams are read
    (``ShardReader``); a batch may mix shards, each entry is acknowledged on its own.
    Workers never create a stream: the API creates it with its first frame and gives it a
    TTL, so an idle system leaves no key behind; until then (and after it expired) the worker
    waits for it.
    """
    lazy = LazyAsyncClient(url, redis_mode, socket_connect_timeout=2, socket_timeout=30)
    reader = ShardReader(
        lazy, frames_stream_keys(stream, shards), WORKER_GROUP,
        f"{socket.gethostname()}-{os.getpid()}", MAX_DELIVERIES, max_batch_size, claim_idle_ms,
    )  # fmt: skip
    processed = 0
    try:
        while not stop.is_set():
            batches = await reader.next_batches()
            processed += await _serve_all(lazy, reader, engine, model_id, batches, metrics)
        last = await reader.drain()  # on stop: serve what the reads in flight bring
        processed += await _serve_all(lazy, reader, engine, model_id, last, metrics)
    finally:
        await reader.close()
        await lazy.close()
    return processed


async def _serve_all(
    lazy: LazyAsyncClient,
    reader: ShardReader,
    engine: Engine,
    model_id: str,
    batches: list[ShardBatch],
    metrics: Metrics | None,
) -> int:
    """Serve ``batches`` in runs of at most the batch size; returns the frames run. A Redis
    error is logged and paused on (the entries of the run it hit stay unacknowledged, so
    they are claimed and retried)."""
    processed = 0
    for run in pack(batches, reader.count):
        try:
            client = await lazy.get()
            processed += await _serve_batch(client, engine, model_id, run, metrics)
        except Exception as exc:  # noqa: BLE001 - Redis restarts etc.: retry, stay up
            log.warning("frame worker loop error (retrying): %s: %s", type(exc).__name__, exc)
            reader.rejoin()
            await asyncio.sleep(0.5)
    return processed


def _lost(fields: dict[bytes, bytes]) -> tuple[str, FrameOutcome]:
    """The ``WorkerLost`` reply to an entry every worker that took it died on."""
    error = WorkerLost("the worker processing this frame was lost; retry it")
    return fields[b"request_id"].decode(), FrameOutcome(None, [], 0.0, 0, error)


async def _serve_batch(
    client: Any,
    engine: Engine,
    model_id: str,
    batches: list[ShardBatch],
    metrics: Metrics | None,
) -> int:
    """Run the frames of ``batches`` (of one or more shards) as one batch, push every reply
    and acknowledge every entry on its shard (one pipeline); returns the number of frames
    run."""
    exhausted = [fields for _, batch in batches for _, fields in batch.exhausted]
    replies: dict[str, tuple[FrameOutcome, TrackState | None]] = {
        request_id: (outcome, None) for request_id, outcome in map(_lost, exhausted)
    }
    decoded = []
    for entry_id, fields in (entry for _, batch in batches for entry in batch.entries):
        try:
            request_id, item_model, item = decode_item(fields)
        except Exception as exc:  # noqa: BLE001 - a malformed entry fails alone
            log.warning("dropping malformed frame request %s: %s", entry_id, exc)
            continue
        if item_model != model_id:
            error = RuntimeError("worker serves a different model")
            replies[request_id] = (FrameOutcome(None, [], 0.0, 0, error), None)
        else:
            decoded.append((request_id, item))
    if decoded:
        outcomes = await asyncio.to_thread(engine.run_batch, [i for _, i in decoded])
        for (request_id, item), outcome in zip(decoded, outcomes, strict=True):
            replies[request_id] = (outcome, item.state)
    async with client.pipeline(transaction=False) as pipe:
        for request_id, (outcome, prev) in replies.items():
            key = reply_key(request_id)
            pipe.lpush(key, encode_outcome(outcome, model_id, prev))
            pipe.expire(key, REPLY_TTL_S)
        for consumer, batch in batches:
            consumer.ack_into(pipe, batch.ids)
        await pipe.execute()
    if metrics is not None and decoded:
        metrics.batch_size.observe(len(decoded))
    return len(decoded)
