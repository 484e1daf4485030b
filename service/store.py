"""Session stores: in-process (embedded default) and Redis (any replica continues any session).

A session is one record: JSON metadata, the tracker state bytes (``model.tracker.codec``), and
the index of the next frame it expects. Saving a new state is a compare-and-set on that frame
index (one Lua script, so one round trip), so two replicas racing on one session get a conflict
instead of silently forking its track history. Key names live in this one block.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any, Protocol, cast

KEY_PREFIX = "ctvis:"
SESSION_KEY = KEY_PREFIX + "session:{session_id}"  # hash: meta, state, frame_index
LEASE_KEY = KEY_PREFIX + "lease:{session_id}"  # str: owner token, short PX expiry

# Compare-and-set of a session's state in one round trip: returns the new frame index,
# -1 when the session is gone, -2 when another writer advanced it first.
_SAVE_LUA = """
local current = redis.call('hget', KEYS[1], 'frame_index')
if not current then return -1 end
if tonumber(current) ~= tonumber(ARGV[1]) then return -2 end
redis.call('hset', KEYS[1], 'state', ARGV[2], 'frame_index', tonumber(ARGV[1]) + 1)
redis.call('expire', KEYS[1], ARGV[3])
return tonumber(ARGV[1]) + 1
"""

# Delete the lease only if we still own it (it may have expired and been taken over).
_RELEASE_LUA = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


@dataclass(frozen=True)
class SessionRecord:
    """What the store keeps for one session."""

    session_id: str
    meta: dict[str, Any]
    state: bytes
    frame_index: int


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

    async def save_state(
        self, session_id: str, expected_frame_index: int, state: bytes, ttl_s: int
    ) -> int: ...

    async def delete(self, session_id: str) -> bool: ...

    async def acquire_lease(self, session_id: str, owner: str, ttl_ms: int) -> bool: ...

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

    async def save_state(
        self, session_id: str, expected_frame_index: int, state: bytes, ttl_s: int
    ) -> int:
        async with self._lock:
            current = self._get(session_id)
            if current is None:
                raise SessionNotFound(session_id)
            if current.frame_index != expected_frame_index:
                raise StateConflict(
                    f"session {session_id} is at frame {current.frame_index}, "
                    f"not {expected_frame_index}"
                )
            new = SessionRecord(session_id, current.meta, state, expected_frame_index + 1)
            self._data[session_id] = (new, time.monotonic() + ttl_s)
            return new.frame_index

    async def delete(self, session_id: str) -> bool:
        async with self._lock:
            return self._data.pop(session_id, None) is not None

    async def acquire_lease(self, session_id: str, owner: str, ttl_ms: int) -> bool:
        now = time.monotonic()
        holder = self._leases.get(session_id)
        if holder is not None and holder[1] > now and holder[0] != owner:
            return False
        self._leases[session_id] = (owner, now + ttl_ms / 1000)
        return True

    async def release_lease(self, session_id: str, owner: str) -> None:
        holder = self._leases.get(session_id)
        if holder is not None and holder[0] == owner:
            del self._leases[session_id]

    async def close(self) -> None:
        self._data.clear()


class RedisStore:
    """Store backed by ``redis.asyncio``; state saves are a one-round-trip Lua compare-and-set."""

    kind = "redis"

    def __init__(self, url: str) -> None:
        import redis.asyncio as redis

        self._client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)
        self._save = self._client.register_script(_SAVE_LUA)

    async def ping(self) -> bool:
        try:
            return bool(await self._client.ping())
        except Exception:  # noqa: BLE001 - any connection failure means "not reachable"
            return False

    async def create(self, record: SessionRecord, ttl_s: int) -> None:
        key = SESSION_KEY.format(session_id=record.session_id)
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.hset(
                key,
                mapping={
                    "meta": json.dumps(record.meta),
                    "state": record.state,
                    "frame_index": record.frame_index,
                },
            )
            pipe.expire(key, ttl_s)
            await pipe.execute()

    async def load(self, session_id: str) -> SessionRecord | None:
        # decode_responses is off: the client returns bytes
        raw = cast(
            "dict[bytes, bytes]",
            await self._client.hgetall(SESSION_KEY.format(session_id=session_id)),
        )
        if not raw:
            return None
        return SessionRecord(
            session_id=session_id,
            meta=json.loads(raw[b"meta"]),
            state=bytes(raw[b"state"]),
            frame_index=int(raw[b"frame_index"]),
        )

    async def load_meta(self, session_id: str) -> dict[str, Any] | None:
        # only the small JSON field, not the (large) tracker state
        raw = await self._client.hget(SESSION_KEY.format(session_id=session_id), "meta")
        return None if raw is None else cast("dict[str, Any]", json.loads(raw))

    async def save_state(
        self, session_id: str, expected_frame_index: int, state: bytes, ttl_s: int
    ) -> int:
        key = SESSION_KEY.format(session_id=session_id)
        result = int(await self._save(keys=[key], args=[expected_frame_index, state, ttl_s]))
        if result == -1:
            raise SessionNotFound(session_id)
        if result == -2:
            raise StateConflict(
                f"session {session_id} moved past frame {expected_frame_index} (another writer)"
            )
        return result

    async def delete(self, session_id: str) -> bool:
        return bool(await self._client.delete(SESSION_KEY.format(session_id=session_id)))

    async def acquire_lease(self, session_id: str, owner: str, ttl_ms: int) -> bool:
        key = LEASE_KEY.format(session_id=session_id)
        return bool(await self._client.set(key, owner, nx=True, px=ttl_ms))

    async def release_lease(self, session_id: str, owner: str) -> None:
        await self._client.eval(_RELEASE_LUA, 1, LEASE_KEY.format(session_id=session_id), owner)

    async def close(self) -> None:
        await self._client.aclose()


def make_store(redis_url: str | None) -> SessionStore:
    """A RedisStore for a URL, else the in-process MemoryStore."""
    if redis_url:
        return RedisStore(redis_url)
    return MemoryStore()
