"""Session stores: in-process (embedded default) and Redis (any replica continues any session).

A session is JSON metadata, the tracker state bytes (``model.tracker.codec``) and the index of
the next frame it expects. On Redis a frame costs two round trips, ``acquire_frame`` (take the
session's lease, read its metadata and frame index) and ``save_state`` (a compare-and-set on
the frame index that installs the new state, a snapshot or a delta, and releases the lease);
``service.store_scripts`` describes the protocol and holds the Lua scripts that implement it.

Live sessions are counted from the store's own expiry (``count_live``), so a session that
expires without a DELETE frees its slot when its TTL passes. Key names live in ``service.keys``.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any, Protocol, cast

from redis.exceptions import NoScriptError

from service.auth import new_id
from service.keys import SESSIONS_KEY, delta_key, lease_key, session_key, staging_key, state_key
from service.redis_conn import LazyAsyncClient, RedisMode
from service.store_scripts import SessionScripts

STAGING_TTL_MS = 30_000  # a staging key outlives its save only if the writer died mid-save


@dataclass(frozen=True)
class SessionRecord:
    """What the store keeps for one session."""

    session_id: str
    meta: dict[str, Any]
    state: bytes
    frame_index: int
    deltas: tuple[bytes, ...] = ()
    """State deltas saved after ``state`` (a snapshot), oldest first."""


@dataclass(frozen=True)
class StoredState:
    """A session's saved state: the last snapshot and the deltas saved after it."""

    snapshot: bytes
    deltas: tuple[bytes, ...] = ()


@dataclass(frozen=True)
class FrameLease:
    """The outcome of ``acquire_frame`` for a session that exists.

    Attributes:
        acquired: whether this caller now holds the session's lease (False: another frame of
            this session is running somewhere; ``meta`` and ``frame_index`` are then unset).
        meta: the session's metadata.
        frame_index: the index of the frame to process, i.e. the stored state's version.
    """

    acquired: bool
    meta: dict[str, Any] | None = None
    frame_index: int = -1


class StateConflict(RuntimeError):
    """The session moved on (another writer saved first); reload and retry."""


class SessionNotFound(KeyError):
    """No such session, or it expired."""


class SessionStore(Protocol):
    """Async session persistence used by the service."""

    kind: str

    async def ping(self) -> bool: ...

    async def create(self, record: SessionRecord, ttl_s: int) -> None: ...

    async def load(self, session_id: str) -> SessionRecord | None: ...

    async def load_meta(self, session_id: str) -> dict[str, Any] | None: ...

    async def load_state(self, session_id: str) -> StoredState | None: ...

    async def acquire_frame(
        self, session_id: str, owner: str, lease_ms: int
    ) -> FrameLease | None: ...

    async def save_state(
        self,
        session_id: str,
        expected_frame_index: int,
        state: bytes,
        ttl_s: int,
        release_owner: str | None = None,
        delta: bool = False,
    ) -> int: ...

    async def delete(self, session_id: str) -> bool: ...

    async def count_live(self) -> int:
        """Sessions that exist now (expired ones are not counted, whoever deleted them)."""
        ...

    async def release_lease(self, session_id: str, owner: str) -> None: ...

    async def close(self) -> None: ...


class MemoryStore:
    """In-process store with TTLs; the embedded default for a single replica."""

    kind = "memory"

    def __init__(self) -> None:
        self._data: dict[str, tuple[SessionRecord, float]] = {}
        self._leases: dict[str, tuple[str, float]] = {}
        self._lock = asyncio.Lock()

    async def ping(self) -> bool:
        return True

    def _get(self, session_id: str) -> SessionRecord | None:
        item = self._data.get(session_id)
        if item is None:
            return None
        if item[1] < time.monotonic():
            del self._data[session_id]
            self._leases.pop(session_id, None)
            return None
        return item[0]

    async def create(self, record: SessionRecord, ttl_s: int) -> None:
        async with self._lock:
            self._data[record.session_id] = (record, time.monotonic() + ttl_s)

    async def load(self, session_id: str) -> SessionRecord | None:
        return self._get(session_id)

    async def load_meta(self, session_id: str) -> dict[str, Any] | None:
        record = self._get(session_id)
        return None if record is None else record.meta

    async def load_state(self, session_id: str) -> StoredState | None:
        record = self._get(session_id)
        return None if record is None else StoredState(record.state, record.deltas)

    async def acquire_frame(self, session_id: str, owner: str, lease_ms: int) -> FrameLease | None:
        record = self._get(session_id)
        if record is None:
            return None
        now = time.monotonic()
        holder = self._leases.get(session_id)
        if holder is not None and holder[1] > now and holder[0] != owner:
            return FrameLease(acquired=False)
        self._leases[session_id] = (owner, now + lease_ms / 1000)
        return FrameLease(True, record.meta, record.frame_index)

    async def save_state(
        self,
        session_id: str,
        expected_frame_index: int,
        state: bytes,
        ttl_s: int,
        release_owner: str | None = None,
        delta: bool = False,
    ) -> int:
        async with self._lock:
            try:
                current = self._get(session_id)
                if current is None:
                    raise SessionNotFound(session_id)
                if current.frame_index != expected_frame_index:
                    raise StateConflict(
                        f"session {session_id} is at frame {current.frame_index}, "
                        f"not {expected_frame_index}"
                    )
                index = expected_frame_index + 1
                if delta:
                    deltas = (*current.deltas, state)
                    new = SessionRecord(session_id, current.meta, current.state, index, deltas)
                else:
                    new = SessionRecord(session_id, current.meta, state, index)
                self._data[session_id] = (new, time.monotonic() + ttl_s)
                return new.frame_index
            finally:
                if release_owner is not None:
                    await self.release_lease(session_id, release_owner)

    async def delete(self, session_id: str) -> bool:
        async with self._lock:
            self._leases.pop(session_id, None)
            return self._data.pop(session_id, None) is not None

    async def count_live(self) -> int:
        now = time.monotonic()
        async with self._lock:
            for session_id in [k for k, (_, expiry) in self._data.items() if expiry < now]:
                del self._data[session_id]
                self._leases.pop(session_id, None)
            return len(self._data)

    async def release_lease(self, session_id: str, owner: str) -> None:
        holder = self._leases.get(session_id)
        if holder is not None and holder[0] == owner:
            del self._leases[session_id]

    async def close(self) -> None:
        self._data.clear()


class RedisStore:
    """Store backed by ``redis.asyncio``: a frame costs two round trips (see the module doc).

    Works on one Redis, behind Sentinels and on a Redis Cluster (``service.redis_conn`` picks
    the client on first use): a session's keys share its hash tag, so every script and
    pipeline of one session stays on its slot; only the live-session count lives elsewhere.
    """

    kind = "redis"

    def __init__(self, url: str, mode: RedisMode = "auto") -> None:
        self._lazy = LazyAsyncClient(url, mode, socket_connect_timeout=2, socket_timeout=5)
        self._scripts: SessionScripts | None = None

    async def _c(self) -> Any:
        """The client, connected (and the server's mode asked) on first use."""
        return await self._lazy.get()

    async def _lua(self) -> SessionScripts:
        """The scripts, registered on the current client (again if it was reopened)."""
        client = await self._c()
        if self._scripts is None or self._scripts.client is not client:
            self._scripts = SessionScripts.register(client)
        return self._scripts

    @property
    def _cluster(self) -> bool:
        """Whether the client (opened by ``_c``) talks to a Redis Cluster."""
        return self._lazy.cluster

    async def ping(self) -> bool:
        """A scripted round trip on two keys of one (random) session slot, as a frame needs:
        a store this service cannot use (unreachable, or a cluster behind a plain client)
        is not ready."""
        try:
            probe = f"readyz-{new_id()}"
            keys = [session_key(probe), lease_key(probe)]
            reply = await (await self._lua()).probe(keys=keys)
            if not self._cluster:  # a plain client on a cluster node works for some slots only
                info = await (await self._c()).info("cluster")
                if str(info.get("cluster_enabled", "0")) == "1":
                    return False
            return int(reply) == 1
        except Exception:  # noqa: BLE001 - any failure means "not usable"
            return False

    async def create(self, record: SessionRecord, ttl_s: int) -> None:
        sid = record.session_id
        client = await self._c()
        async with client.pipeline(transaction=True) as pipe:
            pipe.hset(
                session_key(sid),
                mapping={
                    "meta": json.dumps(record.meta),
                    "frame_index": record.frame_index,
                    "snapshot_at": record.frame_index,
                },
            )
            pipe.expire(session_key(sid), ttl_s)
            pipe.set(state_key(sid), record.state, ex=ttl_s)
            await pipe.execute()
        # the count lives on its own slot: a second round trip, at creation only
        async with client.pipeline(transaction=not self._cluster) as pipe:
            pipe.zadd(SESSIONS_KEY, {sid: time.time() + ttl_s})
            pipe.expire(SESSIONS_KEY, ttl_s, gt=True)
            pipe.expire(SESSIONS_KEY, ttl_s, nx=True)
            await pipe.execute()

    async def load(self, session_id: str) -> SessionRecord | None:
        # decode_responses is off: the client returns bytes
        meta = await self.load_meta(session_id)
        read = await self._read(session_id)
        if meta is None or read is None:
            return None
        frame_index, stored = read
        return SessionRecord(session_id, meta, stored.snapshot, frame_index, stored.deltas)

    async def _read(self, session_id: str) -> tuple[int, StoredState] | None:
        """(frame index, snapshot and deltas) in one consistent read, None when gone."""
        keys = [session_key(session_id), state_key(session_id)]
        reply = await (await self._lua()).read(keys=keys, args=[delta_key(session_id, "")])
        if not reply:
            return None
        return int(reply[0]), StoredState(bytes(reply[1]), tuple(bytes(d) for d in reply[2:]))

    async def load_meta(self, session_id: str) -> dict[str, Any] | None:
        # only the small JSON field, not the (large) tracker state
        raw = await (await self._c()).hget(session_key(session_id), "meta")
        return None if raw is None else cast("dict[str, Any]", json.loads(raw))

    async def load_state(self, session_id: str) -> StoredState | None:
        read = await self._read(session_id)
        return None if read is None else read[1]

    async def acquire_frame(self, session_id: str, owner: str, lease_ms: int) -> FrameLease | None:
        keys = [session_key(session_id), lease_key(session_id)]
        reply = await (await self._lua()).acquire(keys=keys, args=[owner, lease_ms])
        if int(reply[0]) < 0:
            return None
        if int(reply[0]) == 0:
            return FrameLease(acquired=False)
        return FrameLease(True, json.loads(reply[1]), int(reply[2]))

    async def save_state(
        self,
        session_id: str,
        expected_frame_index: int,
        state: bytes,
        ttl_s: int,
        release_owner: str | None = None,
        delta: bool = False,
    ) -> int:
        """Stage the bytes, run the compare-and-set script and renew the session's place in
        the live count, in one pipelined round trip.

        The pipeline queues ``EVALSHA`` by the script's SHA1 rather than the script object:
        redis-py's pipeline would otherwise ask ``SCRIPT EXISTS`` first, one more round trip
        per frame. When the server does not know the script (a restart or a failover), the
        script object loads it and runs it again; the staged bytes are still in place.
        """
        owner = release_owner or ""
        staging = staging_key(session_id, owner or new_id())
        keys = [
            session_key(session_id),
            staging,
            state_key(session_id),
            lease_key(session_id),
            delta_key(session_id, expected_frame_index + 1),
        ]
        args: list[int | str] = [
            expected_frame_index, ttl_s, owner, int(delta), delta_key(session_id, ""),
        ]  # fmt: skip
        client, save = await self._c(), (await self._lua()).save
        async with client.pipeline(transaction=False) as pipe:
            pipe.set(staging, state, px=STAGING_TTL_MS)
            pipe.evalsha(save.sha, len(keys), *keys, *args)
            # the session's new expiry in the live-session count (XX: never re-adds one that
            # was deleted); the count key lives as long as its longest member
            pipe.zadd(SESSIONS_KEY, {session_id: time.time() + ttl_s}, xx=True, gt=True)
            pipe.expire(SESSIONS_KEY, ttl_s, gt=True)
            replies = await pipe.execute(raise_on_error=False)
        if isinstance(replies[1], NoScriptError) and not isinstance(replies[0], Exception):
            replies[1] = await save(keys=keys, args=args)
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return _save_result(session_id, expected_frame_index, int(replies[1]))

    async def delete(self, session_id: str) -> bool:
        keys = [session_key(session_id), state_key(session_id)]
        removed = await (await self._lua()).delete(keys=keys, args=[delta_key(session_id, "")])
        await (await self._c()).zrem(SESSIONS_KEY, session_id)
        return bool(removed)

    async def count_live(self) -> int:
        client = await self._c()
        async with client.pipeline(transaction=not self._cluster) as pipe:
            pipe.zremrangebyscore(SESSIONS_KEY, "-inf", time.time())
            pipe.zcard(SESSIONS_KEY)
            _, count = await pipe.execute()
        return int(count)

    async def release_lease(self, session_id: str, owner: str) -> None:
        await (await self._lua()).release(keys=[lease_key(session_id)], args=[owner])

    async def close(self) -> None:
        await self._lazy.close()


def _save_result(session_id: str, expected_frame_index: int, result: int) -> int:
    """The new frame index of a save script's result, or the error it stands for."""
    if result == -1:
        raise SessionNotFound(session_id)
    if result == -2:
        raise StateConflict(
            f"session {session_id} moved past frame {expected_frame_index} (another writer)"
        )
    if result == -3:
        raise StateConflict(f"session {session_id}: the staged state expired before saving")
    return result


def make_store(redis_url: str | None, redis_mode: RedisMode = "auto") -> SessionStore:
    """A RedisStore for a URL, else the in-process MemoryStore."""
    if redis_url:
        return RedisStore(redis_url, redis_mode)
    return MemoryStore()
