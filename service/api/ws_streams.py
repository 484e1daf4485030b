"""This process's live WebSocket streams: each stream's bounded frame buffer, and the registry
that caps the number of streams and keeps one stream per session.

``service.api.ws`` (the route) admits a stream into the app's ``StreamRegistry``, reads frames
into its ``FrameBuffer`` and processes them from there; nothing here is shared between
replicas.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field

from fastapi import FastAPI, WebSocket


@dataclass
class Queued:
    """One received frame: its bytes (empty when it was over the size limit) and when."""

    data: bytes
    raw_shape: tuple[int, int] | None
    received_at: float
    too_large: int = 0  # byte count of a frame over max_frame_bytes, whose bytes are not kept

    @property
    def size(self) -> int:
        return len(self.data)


class FrameBuffer:
    """Frames received on one socket and not yet started, bounded by count and by bytes.

    A frame is admitted when nothing waits or when it fits both bounds, so a single frame
    larger than ``max_bytes`` still makes progress. ``peak_bytes`` / ``peak_frames`` record
    the most that ever waited, ``blocked`` says the reader waits for space (both are read by
    tests and are cheap to keep).
    """

    def __init__(self, max_frames: int, max_bytes: int) -> None:
        self.max_frames = max(1, max_frames)
        self.max_bytes = max_bytes
        self.bytes = 0
        self.peak_bytes = 0
        self.peak_frames = 0
        self.blocked = False
        self._items: deque[Queued] = deque()
        self._finished = False
        self._changed = asyncio.Condition()

    def __len__(self) -> int:
        return len(self._items)

    def _fits(self, item: Queued) -> bool:
        if not self._items:
            return True
        return len(self._items) < self.max_frames and self.bytes + item.size <= self.max_bytes

    def _append(self, item: Queued) -> None:
        self._items.append(item)
        self.bytes += item.size
        self.peak_bytes = max(self.peak_bytes, self.bytes)
        self.peak_frames = max(self.peak_frames, len(self._items))
        self._changed.notify_all()

    def _pop(self) -> Queued:
        item = self._items.popleft()
        self.bytes -= item.size
        self._changed.notify_all()
        return item

    async def put_waiting(self, item: Queued) -> None:
        """``block``: wait until ``item`` fits, then queue it."""
        async with self._changed:
            if not self._fits(item):
                self.blocked = True
                try:
                    await self._changed.wait_for(lambda: self._fits(item))
                finally:
                    self.blocked = False
            self._append(item)

    async def put_dropping(self, item: Queued) -> int:
        """``drop_oldest``: discard the oldest waiting frames until ``item`` fits; returns how
        many were discarded."""
        async with self._changed:
            dropped = 0
            while not self._fits(item):
                self._pop()
                dropped += 1
            self._append(item)
            return dropped

    async def get(self) -> Queued | None:
        """The next frame; None once ``finish`` was called and nothing waits."""
        async with self._changed:
            await self._changed.wait_for(lambda: bool(self._items) or self._finished)
            return self._pop() if self._items else None

    async def finish(self, discard: bool) -> None:
        """No more frames come; ``discard`` drops the waiting ones (disconnect / takeover)."""
        async with self._changed:
            if discard:
                self._items.clear()
                self.bytes = 0
            self._finished = True
            self._changed.notify_all()


@dataclass(eq=False)
class LiveStream:
    """One admitted stream: its socket, its frame buffer and the takeover signal."""

    ws: WebSocket
    session_id: str
    buffer: FrameBuffer
    superseded: asyncio.Event = field(default_factory=asyncio.Event)


class StreamRegistry:
    """This process's live streams: the socket cap and one stream per session.

    It lives in ``app.state.ws_streams``; nothing is shared between replicas.
    """

    def __init__(self) -> None:
        self.streams: set[LiveStream] = set()
        self.by_session: dict[str, LiveStream] = {}

    def admit(self, stream: LiveStream, limit: int) -> bool:
        """Register ``stream``, superseding the session's older stream; False past ``limit``.

        A stream that takes over its session's stream is admitted even at the limit: the
        older one is on its way out.
        """
        older = self.by_session.get(stream.session_id)
        if older is None and len(self.streams) >= limit:
            return False
        if older is not None:
            older.superseded.set()
        self.streams.add(stream)
        self.by_session[stream.session_id] = stream
        return True

    def release(self, stream: LiveStream) -> None:
        """Forget ``stream`` (its handler is done)."""
        self.streams.discard(stream)
        if self.by_session.get(stream.session_id) is stream:
            del self.by_session[stream.session_id]


def stream_registry(app: FastAPI) -> StreamRegistry:
    """The app's ``StreamRegistry`` (created on first use)."""
    registry: StreamRegistry | None = getattr(app.state, "ws_streams", None)
    if registry is None:
        registry = StreamRegistry()
        app.state.ws_streams = registry
    return registry
