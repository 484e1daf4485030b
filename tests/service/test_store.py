"""Session stores: the same contract for the in-process store and a real Redis."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator

import pytest

from service.store import (
    MemoryStore,
    RedisStore,
    SessionNotFound,
    SessionRecord,
    SessionStore,
    StateConflict,
)

REDIS_URL = os.environ.get("CTVIS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[SessionStore]:
    s: SessionStore = MemoryStore() if request.param == "memory" else RedisStore(REDIS_URL)
    yield s
    await s.close()


def _record(frame_index: int = 0) -> SessionRecord:
    return SessionRecord(f"t-{uuid.uuid4().hex}", {"model": "tiny"}, b"\x00state", frame_index)


async def test_create_load_delete(store: SessionStore) -> None:
    rec = _record()
    await store.create(rec, ttl_s=30)
    assert await store.load(rec.session_id) == rec
    assert await store.load_meta(rec.session_id) == rec.meta
    assert await store.delete(rec.session_id) is True
    assert await store.load(rec.session_id) is None
    assert await store.load_meta(rec.session_id) is None
    assert await store.delete(rec.session_id) is False


async def test_compare_and_set(store: SessionStore) -> None:
    rec = _record()
    await store.create(rec, ttl_s=30)
    assert await store.save_state(rec.session_id, 0, b"s1", ttl_s=30) == 1
    with pytest.raises(StateConflict):
        await store.save_state(rec.session_id, 0, b"stale", ttl_s=30)
    loaded = await store.load(rec.session_id)
    assert loaded is not None and loaded.state == b"s1" and loaded.frame_index == 1
    with pytest.raises(SessionNotFound):
        await store.save_state("missing-" + rec.session_id, 0, b"x", ttl_s=30)
    await store.delete(rec.session_id)


async def test_concurrent_writers_exactly_one_wins(store: SessionStore) -> None:
    rec = _record()
    await store.create(rec, ttl_s=30)
    outcomes = await asyncio.gather(
        *(store.save_state(rec.session_id, 0, f"w{i}".encode(), 30) for i in range(8)),
        return_exceptions=True,
    )
    wins = [o for o in outcomes if o == 1]
    assert len(wins) == 1
    assert all(isinstance(o, StateConflict) for o in outcomes if o != 1)
    await store.delete(rec.session_id)


async def test_ttl_expiry_memory() -> None:
    s = MemoryStore()
    rec = _record()
    await s.create(rec, ttl_s=0)
    await asyncio.sleep(0.01)
    assert await s.load(rec.session_id) is None
