"""Live sessions: create, process one frame (REST and WebSocket share this), delete.

Every frame: take the session's lease and read its metadata (one store round trip), check the
token, get the state (from this replica's cache when it saved that version itself, else from
the store), run the frame through the batch queue, then save the new state with a
compare-and-set on the frame index that also releases the lease (one round trip). One process
serialises a session's frames with a per-session lock, the lease does so across replicas, and
the compare-and-set turns any remaining race into a 409 ``state_conflict`` instead of a forked
track history.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from typing import Any, cast

import numpy as np

from model.config import TrackerConfig, TrackerOptionError, to_dict, tracker_config_from_dict
from model.tracker import TrackState, codec, init_state
from model.tracker.delta import apply_delta, dumps_delta
from service.auth import hash_secret, new_id, new_token, token_matches
from service.batching import BatchQueue
from service.engine import FrameItem, FrameOutcome
from service.errors import ApiError, store_unavailable
from service.frame_stream import RedisFrameQueue, WorkerLost
from service.metrics import Metrics
from service.schemas import RLE, FrameResult, InstanceOut, SessionCreate, SessionInfo, Timings
from service.served import ServedModel
from service.settings import Settings
from service.store import (
    FrameLease,
    SessionNotFound,
    SessionRecord,
    SessionStore,
    StateConflict,
)


def tracker_with_overrides(base: TrackerConfig, overrides: dict[str, Any]) -> TrackerConfig:
    """``base`` with a client's overrides, each type- and range-checked (422 otherwise)."""
    try:
        return tracker_config_from_dict(overrides, base)
    except TrackerOptionError as exc:
        raise ApiError(422, "invalid_tracker_option", str(exc)) from exc


class SessionService:
    """The one place REST and WebSocket frame handling go through."""

    def __init__(
        self,
        settings: Settings,
        served: ServedModel,
        store: SessionStore,
        queue: BatchQueue[FrameItem, FrameOutcome] | RedisFrameQueue,
        metrics: Metrics,
    ) -> None:
        self.settings = settings
        self.served = served
        self.store = store
        self.queue = queue
        self.metrics = metrics
        self._locks: dict[str, asyncio.Lock] = {}
        self._buckets: dict[str, tuple[float, float]] = {}
        # monotonic time each session was last used here: per-session tables are pruned of
        # sessions idle longer than the TTL (the store has expired them by then, or another
        # replica keeps them alive and these tables simply refill)
        self._last_used: dict[str, float] = {}
        self._last_sweep = time.monotonic()
        # (version, state) of the sessions this replica saved last: the next frame of such a
        # session skips reading the ~100 KB state back (see service/store.py)
        self._states: OrderedDict[str, tuple[int, TrackState]] = OrderedDict()

    @property
    def model_id(self) -> str:
        return self.served.model_id

    async def _store_call(self, coro: Any) -> Any:
        try:
            return await coro
        except (SessionNotFound, StateConflict, ApiError):
            raise
        except Exception as exc:  # noqa: BLE001 - connection errors of any client library
            raise store_unavailable(exc) from exc

    async def create(self, options: SessionCreate) -> tuple[str, str, float]:
        """Create a session; returns (session_id, token, expires_at)."""
        if options.model not in (None, self.served.name):
            raise ApiError(404, "model_not_found", f"model {options.model!r} is not served here")
        self._sweep()
        live = await self._store_call(self.store.count_live())
        self.metrics.live_sessions.set(live)
        if live >= self.settings.max_sessions:
            raise ApiError(
                429,
                "too_many_sessions",
                f"live session limit ({self.settings.max_sessions}) reached; idle sessions "
                f"expire after {self.settings.session_ttl_s} s",
                headers={"Retry-After": str(min(60, self.settings.session_ttl_s))},
            )
        cfg = tracker_with_overrides(self.served.tracker_cfg, options.tracker)
        state = init_state(
            self.served.model_cfg.embed_dim, self.served.model_cfg.num_classes, cfg.cache_size
        )
        session_id, token = new_id(), new_token()
        meta = {
            "token_sha256": hash_secret(token),
            "model": self.served.name,
            "model_id": self.model_id,
            "tracker": to_dict(cfg),
            "backpressure": options.backpressure,
            "queue_size": options.queue_size,
            "created_at": time.time(),
        }
        record = SessionRecord(
            session_id, meta, codec.dumps(state, self.model_id, compact=False), 0
        )
        await self._store_call(self.store.create(record, self.settings.session_ttl_s))
        self._remember(session_id, 0, state)
        self._touch(session_id)
        self.metrics.live_sessions.set(live + 1)
        return session_id, token, time.time() + self.settings.session_ttl_s

    def _check(self, session_id: str, meta: dict[str, Any] | None, token: str | None) -> None:
        """404 unknown/expired, 401 bad token, 409 session pinned to another model."""
        if meta is None:
            self._drop_tables(session_id)
            raise ApiError(404, "session_not_found", f"session {session_id} not found or expired")
        if not token_matches(token, meta["token_sha256"]):
            raise ApiError(401, "invalid_token", "missing or wrong session token")
        if meta.get("model_id") != self.model_id:
            raise ApiError(
                409, "model_mismatch", "session was started with a model not served here"
            )

    async def authorize(self, session_id: str, token: str | None) -> SessionRecord:
        """Load a session (with its tracker state) and check access (see ``_check``)."""
        record = await self._store_call(self.store.load(session_id))
        self._check(session_id, None if record is None else record.meta, token)
        assert record is not None
        return record

    async def check_access(self, session_id: str, token: str | None) -> dict[str, Any]:
        """Check access reading only the session's metadata; returns that metadata."""
        meta = await self._store_call(self.store.load_meta(session_id))
        self._check(session_id, meta, token)
        assert meta is not None
        return meta

    async def info(self, session_id: str, token: str | None) -> SessionInfo:
        record = await self.authorize(session_id, token)
        # the newest of the snapshot and its deltas says how many tracks live now
        meta = codec.read_metadata(record.deltas[-1] if record.deltas else record.state)
        return SessionInfo(
            session_id=session_id,
            model=record.meta["model"],
            frame_index=record.frame_index,
            live_tracks=int(meta["num_tracks"]),
            backpressure=record.meta["backpressure"],
            expires_at=time.time() + self.settings.session_ttl_s,
            tracker=record.meta["tracker"],
        )

    async def delete(self, session_id: str, token: str | None) -> None:
        await self.check_access(session_id, token)
        await self._store_call(self.store.delete(session_id))
        self._drop_tables(session_id)
        self.metrics.live_sessions.dec()

    def _touch(self, session_id: str) -> None:
        self._last_used[session_id] = time.monotonic()

    def _drop_tables(self, session_id: str) -> None:
        """Forget everything this process keeps about one session."""
        self._forget(session_id)
        self._buckets.pop(session_id, None)
        self._last_used.pop(session_id, None)
        lock = self._locks.get(session_id)
        if lock is not None and not lock.locked():
            del self._locks[session_id]

    def _sweep(self) -> None:
        """Drop the per-session tables of sessions idle here for longer than the TTL.

        Runs at most once a second, from session creation and frames, so the tables stay
        bounded by the sessions used within one TTL whatever clients abandon.
        """
        now = time.monotonic()
        if now - self._last_sweep < 1.0:
            return
        self._last_sweep = now
        horizon = now - self.settings.session_ttl_s
        for session_id in [k for k, used in self._last_used.items() if used < horizon]:
            self._drop_tables(session_id)
        # locks that were held when their session's tables were dropped
        for session_id in [k for k in self._locks if k not in self._last_used]:
            self._drop_tables(session_id)

    def _check_rate(self, session_id: str) -> None:
        """Token bucket of ``max_session_fps`` frames per second (burst of one second)."""
        rate = self.settings.max_session_fps
        now = time.monotonic()
        tokens, last = self._buckets.get(session_id, (rate, now))
        tokens = min(rate, tokens + (now - last) * rate)
        if tokens < 1.0:
            retry = max(1, int((1.0 - tokens) / rate + 0.999))
            self.metrics.errors.labels("rate_limited").inc()
            raise ApiError(
                429,
                "rate_limited",
                f"more than {rate:g} frames/s for this session",
                headers={"Retry-After": str(retry)},
            )
        self._buckets[session_id] = (tokens - 1.0, now)

    async def _acquire_frame(self, session_id: str, owner: str) -> FrameLease:
        """Take the session's lease (waiting up to ``lease_wait_ms`` for another replica)."""
        deadline = time.monotonic() + self.settings.lease_wait_ms / 1000
        while True:
            lease = await self._store_call(
                self.store.acquire_frame(session_id, owner, self.settings.lease_ms)
            )
            if lease is None:
                self._check(session_id, None, None)  # raises 404
            assert lease is not None
            if lease.acquired:
                return lease
            if time.monotonic() >= deadline:
                raise ApiError(
                    409, "session_busy", "another replica is processing this session's frame"
                )
            await asyncio.sleep(0.01)

    def _forget(self, session_id: str) -> None:
        self._states.pop(session_id, None)

    def _remember(self, session_id: str, frame_index: int, state: TrackState) -> None:
        """Keep the state this replica just saved (as version ``frame_index``), LRU-bounded."""
        if self.settings.state_cache_sessions <= 0:
            return
        self._states[session_id] = (frame_index, state)
        self._states.move_to_end(session_id)
        while len(self._states) > self.settings.state_cache_sessions:
            self._states.popitem(last=False)

    async def _state_at(self, session_id: str, frame_index: int) -> TrackState:
        """The session's state of version ``frame_index``: from this replica's cache when it
        saved that version itself, else from the store."""
        cached = self._states.get(session_id)
        if cached is not None and cached[0] == frame_index:
            self._states.move_to_end(session_id)
            return cached[1]
        self.metrics.state_cache_misses.inc()
        stored = await self._store_call(self.store.load_state(session_id))
        if stored is None:
            self._check(session_id, None, None)  # raises 404
        state = codec.loads(stored.snapshot, expected_model_id=self.model_id)
        for data in stored.deltas:
            state = apply_delta(state, data)
        return state

    async def process_frame(
        self,
        session_id: str,
        token: str | None,
        frame: np.ndarray,
        received_at: float,
        path: str,
        lag: int = 0,
        dropped: int = 0,
    ) -> FrameResult:
        """Run one frame of a session and persist the new state (strictly in order)."""
        self._sweep()
        self._check_rate(session_id)
        self._touch(session_id)
        lock = self._locks.setdefault(session_id, asyncio.Lock())
        async with lock:
            owner = new_token()
            lease = await self._acquire_frame(session_id, owner)
            released = False
            try:
                self._check(session_id, lease.meta, token)
                outcome, queue_ms = await self._run_locked(session_id, lease, frame, owner)
                released = True  # the state save released the lease
            finally:
                if not released:
                    with contextlib.suppress(Exception):
                        await self.store.release_lease(session_id, owner)
        total_ms = (time.perf_counter() - received_at) * 1000
        self.metrics.frames.labels(path).inc()
        self.metrics.frame_seconds.observe(total_ms / 1000)
        return self._result(
            session_id, lease.frame_index, frame, outcome, queue_ms, total_ms, lag, dropped
        )

    async def _run_locked(
        self, session_id: str, lease: FrameLease, frame: np.ndarray, owner: str
    ) -> tuple[FrameOutcome, float]:
        assert lease.meta is not None
        cfg = tracker_with_overrides(TrackerConfig(), lease.meta["tracker"])
        state = await self._state_at(session_id, lease.frame_index)
        queued_at = time.perf_counter()
        outcome = await self.queue.submit(FrameItem(frame, state, cfg, session_id))
        queue_ms = (time.perf_counter() - queued_at) * 1000 - outcome.model_ms
        if isinstance(outcome.error, WorkerLost):
            self.metrics.errors.labels("worker_lost").inc()
            raise ApiError(503, "worker_lost", f"{outcome.error} (retryable; state unchanged)")
        if outcome.error is not None or outcome.state is None:
            self.metrics.errors.labels("frame_failed").inc()
            raise ApiError(422, "frame_failed", f"the model failed on this frame: {outcome.error}")
        # Lossless either way: a float16 cache could flip a near-tie and break equality with
        # `ctvis track`. Most frames save a delta; every state_snapshot_every-th a snapshot, so
        # a state is read back as one snapshot and fewer than that many deltas.
        as_delta = (lease.frame_index + 1) % self.settings.state_snapshot_every != 0
        if as_delta:
            payload = dumps_delta(state, outcome.state)
        else:
            payload = codec.dumps(outcome.state, self.model_id, compact=False)
        self.metrics.state_bytes.observe(len(payload))
        try:
            saved = await self._store_call(
                self.store.save_state(
                    session_id,
                    lease.frame_index,
                    payload,
                    self.settings.session_ttl_s,
                    release_owner=owner,
                    delta=as_delta,
                )
            )
        except StateConflict as exc:
            self._forget(session_id)
            self.metrics.errors.labels("state_conflict").inc()
            raise ApiError(409, "state_conflict", str(exc)) from exc
        except SessionNotFound as exc:
            self._forget(session_id)
            raise ApiError(404, "session_not_found", "session expired while running") from exc
        self._remember(session_id, saved, outcome.state)
        return outcome, queue_ms

    def _result(
        self,
        session_id: str,
        frame_index: int,
        frame: np.ndarray,
        outcome: FrameOutcome,
        queue_ms: float,
        total_ms: float,
        lag: int,
        dropped: int,
    ) -> FrameResult:
        cfg = self.served.model_cfg
        instances = [
            InstanceOut(
                track_id=inst.track_id,
                category_id=cfg.category_id(inst.label),
                category_name=cfg.class_name(inst.label),
                score=inst.score,
                bbox=inst.bbox,
                segmentation=RLE(
                    size=tuple(cast("list[int]", inst.rle["size"])),
                    counts=str(inst.rle["counts"]),
                ),
            )
            for inst in outcome.instances
        ]
        return FrameResult(
            session_id=session_id,
            frame_index=frame_index,
            height=int(frame.shape[0]),
            width=int(frame.shape[1]),
            instances=instances,
            timings=Timings(
                queue_ms=max(queue_ms, 0.0), model_ms=outcome.model_ms, total_ms=total_ms
            ),
            lag=lag,
            dropped_frames=dropped,
        )
