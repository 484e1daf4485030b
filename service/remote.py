"""API and GPU workers as separate processes, joined through Redis Streams.

The API side (``RedisFrameQueue``) has the same ``submit`` interface as the in-process
``BatchQueue``: it appends ``(frame, state, tracker settings)`` to a stream and waits for the
reply on a per-request list. Workers (``run_worker``) read the stream through a consumer
group, batch frames from many sessions, run ``Engine.run_batch`` and push each outcome back.
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
from typing import Any

import numpy as np

from model.config import TrackerConfig, to_dict
from model.structures import Instance
from model.tracker import codec
from service.auth import new_id
from service.engine import Engine, FrameItem, FrameOutcome
from service.errors import ApiError
from service.metrics import Metrics

log = logging.getLogger("ctvis.worker")

FRAMES_STREAM = "ctvis:frames"
WORKER_GROUP = "ctvis-workers"
REPLY_KEY = "ctvis:reply:{request_id}"
REPLY_TTL_S = 120
STREAM_MAXLEN = 10_000


def encode_item(item: FrameItem, model_id: str, request_id: str) -> dict[str, bytes | str]:
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
    cfg = TrackerConfig(**json.loads(fields[b"tracker"]))
    return (
        fields[b"request_id"].decode(),
        fields[b"model_id"].decode(),
        FrameItem(frame, state, cfg),
    )


def encode_outcome(outcome: FrameOutcome, model_id: str) -> bytes:
    """Reply bytes: 4-byte header length, JSON header, then the state codec bytes."""
    header = {
        "instances": [asdict(i) for i in outcome.instances],
        "model_ms": outcome.model_ms,
        "batch_size": outcome.batch_size,
        "error": None
        if outcome.error is None
        else f"{type(outcome.error).__name__}: {outcome.error}",
    }
    state = b"" if outcome.state is None else codec.dumps(outcome.state, model_id, compact=False)
    head = json.dumps(header).encode()
    return struct.pack(">I", len(head)) + head + state


def decode_outcome(data: bytes) -> FrameOutcome:
    """Inverse of ``encode_outcome``."""
    (size,) = struct.unpack(">I", data[:4])
    header = json.loads(data[4 : 4 + size])
    state_bytes = data[4 + size :]
    instances = [
        Instance(
            track_id=i["track_id"],
            label=i["label"],
            score=i["score"],
            bbox=tuple(i["bbox"]),
            rle=i["rle"],
            area=i["area"],
        )
        for i in header["instances"]
    ]
    return FrameOutcome(
        state=codec.loads(state_bytes) if state_bytes else None,
        instances=instances,
        model_ms=float(header["model_ms"]),
        batch_size=int(header["batch_size"]),
        error=RuntimeError(header["error"]) if header["error"] else None,
    )


class RedisFrameQueue:
    """API side: submit a frame to the workers and wait for its outcome."""

    def __init__(
        self, url: str, model_id: str, timeout_s: float, stream: str = FRAMES_STREAM
    ) -> None:
        import redis.asyncio as redis

        # BLPOP blocks for up to timeout_s: the socket must wait longer than that.
        self._client = redis.Redis.from_url(
            url, socket_connect_timeout=2, socket_timeout=timeout_s + 5
        )
        self.model_id = model_id
        self.timeout_s = timeout_s
        self.stream = stream
        self.depth = 0

    def start(self) -> None:
        """Nothing to start: workers consume the stream."""

    async def submit(self, item: FrameItem) -> FrameOutcome:
        """Queue the frame for a worker; 503 ``worker_unavailable`` if nobody answers."""
        request_id = new_id()
        fields = encode_item(item, self.model_id, request_id)
        try:
            await self._client.xadd(self.stream, fields, maxlen=STREAM_MAXLEN, approximate=True)
            self.depth += 1
            try:
                reply = await self._client.blpop(
                    [REPLY_KEY.format(request_id=request_id)], timeout=self.timeout_s
                )
            finally:
                self.depth -= 1
        except ApiError:
            raise
        except Exception as exc:  # noqa: BLE001 - connection errors of the client library
            raise ApiError(503, "state_store_unavailable", f"Redis unavailable: {exc}") from exc
        if reply is None:
            raise ApiError(
                503, "worker_unavailable", f"no worker answered within {self.timeout_s:g} s"
            )
        return decode_outcome(reply[1])

    async def close(self) -> None:
        await self._client.aclose()


async def _ensure_group(client: Any, stream: str) -> None:
    import redis.exceptions

    try:
        await client.xgroup_create(stream, WORKER_GROUP, id="0", mkstream=True)
    except redis.exceptions.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


async def run_worker(
    url: str,
    engine: Engine,
    model_id: str,
    max_batch_size: int,
    stop: asyncio.Event,
    stream: str = FRAMES_STREAM,
    metrics: Metrics | None = None,
) -> int:
    """Consume frame requests until ``stop`` is set; returns the number of frames processed.

    Every read takes up to ``max_batch_size`` requests (from different sessions: a session
    never has two frames in flight), runs them as one batch, pushes every reply, then
    acknowledges the entries.
    """
    import redis.asyncio as redis

    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=30)
    consumer = f"{socket.gethostname()}-{os.getpid()}"
    await _ensure_group(client, stream)
    processed = 0
    try:
        while not stop.is_set():
            response = await client.xreadgroup(
                WORKER_GROUP, consumer, {stream: ">"}, count=max_batch_size, block=500
            )
            if not response:
                continue
            entries = response[0][1]
            decoded, replies = [], {}
            for entry_id, fields in entries:
                try:
                    request_id, item_model, item = decode_item(fields)
                except Exception as exc:  # noqa: BLE001 - a malformed entry fails alone
                    log.warning("dropping malformed frame request %s: %s", entry_id, exc)
                    continue
                if item_model != model_id:
                    replies[request_id] = FrameOutcome(
                        None, [], 0.0, 0, RuntimeError("worker serves a different model")
                    )
                else:
                    decoded.append((request_id, item))
            outcomes = await asyncio.to_thread(engine.run_batch, [i for _, i in decoded])
            for (request_id, _), outcome in zip(decoded, outcomes, strict=True):
                replies[request_id] = outcome
            async with client.pipeline(transaction=False) as pipe:
                for request_id, outcome in replies.items():
                    key = REPLY_KEY.format(request_id=request_id)
                    pipe.lpush(key, encode_outcome(outcome, model_id))
                    pipe.expire(key, REPLY_TTL_S)
                ids = [entry_id for entry_id, _ in entries]
                pipe.xack(stream, WORKER_GROUP, *ids)
                pipe.xdel(stream, *ids)
                await pipe.execute()
            processed += len(decoded)
            if metrics is not None:
                metrics.batch_size.observe(len(decoded))
    finally:
        await client.aclose()
    return processed
