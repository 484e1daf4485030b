"""Session stores: the same contract for the in-process store and a real Redis."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator

import pytest

from service.keys import staging_key, state_key
from service.store import (
    MemoryStore,
    RedisStore,
    SessionNotFound,
    SessionRecord,
    SessionStore,
    StateConflict,
    StoredState,
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


async def test_acquire_frame_reads_meta_and_serialises_owners(store: SessionStore) -> None:
    rec = _record(frame_index=3)
    await store.create(rec, ttl_s=30)
    assert await store.acquire_frame("missing-" + rec.session_id, "a", 5_000) is None
    lease = await store.acquire_frame(rec.session_id, "a", 5_000)
    assert lease is not None and lease.acquired
    assert (lease.meta, lease.frame_index) == (rec.meta, 3)
    busy = await store.acquire_frame(rec.session_id, "b", 5_000)
    assert busy is not None and not busy.acquired
    # the save that ends the frame releases the lease: the next owner gets it at once
    assert await store.save_state(rec.session_id, 3, b"s4", 30, release_owner="a") == 4
    nxt = await store.acquire_frame(rec.session_id, "b", 5_000)
    assert nxt is not None and nxt.acquired and nxt.frame_index == 4
    assert await store.load_state(rec.session_id) == StoredState(b"s4")
    # a save by someone else never releases b's lease; a failed save by b still does
    await store.save_state(rec.session_id, 4, b"s5", 30, release_owner="not-b")
    assert not (await store.acquire_frame(rec.session_id, "c", 5_000)).acquired  # type: ignore[union-attr]
    with pytest.raises(StateConflict):
        await store.save_state(rec.session_id, 4, b"late", 30, release_owner="b")
    assert (await store.acquire_frame(rec.session_id, "c", 5_000)).acquired  # type: ignore[union-attr]
    assert (await store.load(rec.session_id)) == SessionRecord(rec.session_id, rec.meta, b"s5", 5)
    await store.delete(rec.session_id)
    assert await store.load_state(rec.session_id) is None


async def test_lease_expires(store: SessionStore) -> None:
    rec = _record()
    await store.create(rec, ttl_s=30)
    assert (await store.acquire_frame(rec.session_id, "a", 100)).acquired  # type: ignore[union-attr]
    assert not (await store.acquire_frame(rec.session_id, "b", 100)).acquired  # type: ignore[union-attr]
    await asyncio.sleep(0.25)
    assert (await store.acquire_frame(rec.session_id, "b", 100)).acquired  # type: ignore[union-attr]
    await store.delete(rec.session_id)


@pytest.mark.redis
async def test_redis_save_leaves_no_staging_keys_and_survives_script_flush() -> None:
    import redis.asyncio as redis

    store = RedisStore(REDIS_URL)
    raw = redis.Redis.from_url(REDIS_URL)
    rec = _record()
    try:
        await store.create(rec, ttl_s=30)
        state = os.urandom(128 * 1024)
        assert await store.save_state(rec.session_id, 0, state, 30, release_owner="x") == 1
        with pytest.raises(StateConflict):
            await store.save_state(rec.session_id, 0, b"stale", 30, release_owner="y")
        assert [k async for k in raw.scan_iter(staging_key(rec.session_id, "*"))] == []
        assert await store.load_state(rec.session_id) == StoredState(state)
        assert 0 < await raw.ttl(state_key(rec.session_id)) <= 30
        await raw.script_flush()  # as after a Redis restart: scripts are loaded again
        assert await store.save_state(rec.session_id, 1, b"s2", 30) == 2
        lease = await store.acquire_frame(rec.session_id, "z", 1_000)
        assert lease is not None and lease.acquired and lease.frame_index == 2
    finally:
        await store.delete(rec.session_id)
        await raw.aclose()
        await store.close()


async def test_deltas_append_and_a_snapshot_clears_them(store: SessionStore) -> None:
    rec = _record()
    await store.create(rec, ttl_s=30)
    assert await store.save_state(rec.session_id, 0, b"d1", 30, delta=True) == 1
    assert await store.save_state(rec.session_id, 1, b"d2", 30, delta=True) == 2
    with pytest.raises(StateConflict):  # the compare-and-set holds for deltas too
        await store.save_state(rec.session_id, 1, b"late", 30, delta=True)
    assert await store.load_state(rec.session_id) == StoredState(rec.state, (b"d1", b"d2"))
    loaded = await store.load(rec.session_id)
    assert loaded is not None and loaded.deltas == (b"d1", b"d2") and loaded.frame_index == 2
    assert await store.save_state(rec.session_id, 2, b"snap", 30) == 3
    assert await store.load_state(rec.session_id) == StoredState(b"snap")
    with pytest.raises(SessionNotFound):
        await store.save_state("no-such-session", 0, b"d", 30, delta=True)
    assert await store.delete(rec.session_id)
    assert await store.load_state(rec.session_id) is None
