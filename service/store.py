"""Session-state stores: in-process (embedded default) and Redis.

Both hold opaque bytes (``model.tracker.codec`` output) per key with a TTL. Key names live in
one block here so that every replica agrees on them.
"""

from __future__ import annotations

import time
from typing import Protocol

SESSION_KEY = "ctvis:session:{session_id}"
SESSION_STATE_KEY = "ctvis:session:{session_id}:state"


class SessionStore(Protocol):
    """Minimal async key/value interface the service needs."""

    kind: str

    async def ping(self) -> bool: ...

    async def get(self, key: str) -> bytes | None: ...

    async def set(self, key: str, value: bytes, ttl_s: int) -> None: ...

    async def delete(self, key: str) -> None: ...

    async def close(self) -> None: ...


class MemoryStore:
    """In-process store with TTLs; the embedded default for a single replica."""

    kind = "memory"

    def __init__(self) -> None:
        self._data: dict[str, tuple[bytes, float]] = {}

    async def ping(self) -> bool:
        return True

    async def get(self, key: str) -> bytes | None:
        item = self._data.get(key)
        if item is None:
            return None
        value, expires = item
        if expires < time.monotonic():
            del self._data[key]
            return None
        return value

    async def set(self, key: str, value: bytes, ttl_s: int) -> None:
        self._data[key] = (value, time.monotonic() + ttl_s)

    async def delete(self, key: str) -> None:
        self._data.pop(key, None)

    async def close(self) -> None:
        self._data.clear()


class RedisStore:
    """Store backed by ``redis.asyncio`` so that any replica can continue any session."""

    kind = "redis"

    def __init__(self, url: str) -> None:
        import redis.asyncio as redis

        self._client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)

    async def ping(self) -> bool:
        try:
            return bool(await self._client.ping())
        except Exception:  # noqa: BLE001 - any connection failure means "not reachable"
            return False

    async def get(self, key: str) -> bytes | None:
        value = await self._client.get(key)
        return bytes(value) if value is not None else None

    async def set(self, key: str, value: bytes, ttl_s: int) -> None:
        await self._client.set(key, value, ex=ttl_s)

    async def delete(self, key: str) -> None:
        await self._client.delete(key)

    async def close(self) -> None:
        await self._client.aclose()


def make_store(redis_url: str | None) -> SessionStore:
    """A RedisStore for a URL, else the in-process MemoryStore."""
    if redis_url:
        return RedisStore(redis_url)
    return MemoryStore()
