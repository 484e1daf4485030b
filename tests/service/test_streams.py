"""``service.streams.StreamConsumer`` against the real Redis, through both clients."""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
import redis
import redis.asyncio as aioredis

from service.streams import StreamConsumer, StreamGone, run_plan, run_plan_async, stream_gone

pytestmark = pytest.mark.redis
REDIS_URL = os.environ.get("CTVIS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture()
def client() -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(REDIS_URL)
    yield c
    c.close()


@pytest.fixture()
def stream(client: redis.Redis) -> Iterator[str]:
    name = f"ctvis:test-streams:{uuid.uuid4().hex}"
    yield name
    client.delete(name)


def _consumer(stream: str, name: str, max_deliveries: int | None = None) -> StreamConsumer:
    return StreamConsumer(stream, "test-group", name, max_deliveries)


def test_group_waits_for_the_stream_then_is_created_once(client: redis.Redis, stream: str) -> None:
    consumer = _consumer(stream, "a")
    assert run_plan(client, consumer.ensure_group()) is False  # no stream: nothing created
    assert not client.exists(stream)
    client.xadd(stream, {"n": "1"})
    assert run_plan(client, consumer.ensure_group()) is True
    assert run_plan(client, consumer.ensure_group()) is True  # BUSYGROUP: already there
    assert run_plan(client, _consumer(stream, "b").ensure_group()) is True
    assert [g["name"] for g in client.xinfo_groups(stream)] == [b"test-group"]
    # the group reads from the stream's start: the entry added before it is delivered
    batch = run_plan(client, consumer.read(count=5, block_ms=50))
    assert [f for _, f in batch.entries] == [{b"n": b"1"}]


def test_read_then_ack_deletes_the_entries(client: redis.Redis, stream: str) -> None:
    consumer = _consumer(stream, "a")
    ids = [client.xadd(stream, {"n": str(i)}) for i in range(3)]
    run_plan(client, consumer.ensure_group())
    first = run_plan(client, consumer.read(count=2, block_ms=50))
    assert first.ids == ids[:2] and not first.exhausted
    second = run_plan(client, consumer.read(count=2, block_ms=50))
    assert second.ids == ids[2:]
    run_plan(client, consumer.ack(*first.ids, *second.ids))
    assert client.xlen(stream) == 0
    assert client.xpending(stream, "test-group")["pending"] == 0
    assert not run_plan(client, consumer.read(count=2, block_ms=50))  # idle: empty batch


def test_entry_of_a_dead_consumer_is_claimed_after_its_idle_time(
    client: redis.Redis, stream: str
) -> None:
    dead, alive = _consumer(stream, "dead"), _consumer(stream, "alive")
    client.xadd(stream, {"n": "1"})
    run_plan(client, dead.ensure_group())
    taken = run_plan(client, dead.read(count=1, block_ms=50))
    assert len(taken.entries) == 1  # "dead" never acknowledges it
    assert not run_plan(client, alive.read(count=1, block_ms=50, claim_idle_ms=60_000))
    time.sleep(0.15)
    claimed = run_plan(client, alive.read(count=1, block_ms=50, claim_idle_ms=100))
    assert claimed.ids == taken.ids and not claimed.exhausted
    pending = client.xpending_range(stream, "test-group", min="-", max="+", count=5)
    assert [p["consumer"] for p in pending] == [b"alive"]


def test_heartbeat_keeps_a_live_entry_from_being_claimed(client: redis.Redis, stream: str) -> None:
    owner, other = _consumer(stream, "owner"), _consumer(stream, "other")
    client.xadd(stream, {"n": "1"})
    run_plan(client, owner.ensure_group())
    entry_id = run_plan(client, owner.read(count=1, block_ms=50)).ids[0]
    time.sleep(0.15)
    run_plan(client, owner.heartbeat(entry_id))
    assert not run_plan(client, other.read(count=1, block_ms=20, claim_idle_ms=100))
    pending = client.xpending_range(stream, "test-group", min="-", max="+", count=5)
    assert pending[0]["times_delivered"] == 1  # a heartbeat is no delivery


def test_retry_limit_moves_an_entry_to_exhausted(client: redis.Redis, stream: str) -> None:
    """``max_deliveries=2``: the first consumer plus one retry; the third claim gives up."""
    client.xadd(stream, {"n": "1"})
    first = _consumer(stream, "first", max_deliveries=2)
    run_plan(client, first.ensure_group())
    assert len(run_plan(client, first.read(count=1, block_ms=50)).entries) == 1
    time.sleep(0.05)
    retry = run_plan(client, _consumer(stream, "retry", 2).read(1, 50, claim_idle_ms=20))
    assert len(retry.entries) == 1 and not retry.exhausted  # delivery 2: retried
    time.sleep(0.05)
    last = _consumer(stream, "last", 2)
    gave_up = run_plan(client, last.read(1, 20, claim_idle_ms=20))
    assert not gave_up.entries and gave_up.ids == retry.ids  # delivery 3: exhausted
    run_plan(client, last.ack(*gave_up.ids))
    assert client.xlen(stream) == 0


def test_requeue_appends_a_fresh_entry(client: redis.Redis, stream: str) -> None:
    consumer = _consumer(stream, "a")
    client.xadd(stream, {"job_id": "j1"})
    run_plan(client, consumer.ensure_group())
    old = run_plan(client, consumer.read(count=1, block_ms=50)).ids[0]
    run_plan(client, consumer.requeue(old, {"job_id": "j1"}))
    again = run_plan(client, consumer.read(count=1, block_ms=50))
    assert again.ids != [old] and again.entries[0][1] == {b"job_id": b"j1"}
    assert client.xlen(stream) == 1


def test_nogroup_after_the_stream_is_deleted(client: redis.Redis, stream: str) -> None:
    consumer = _consumer(stream, "a")
    client.xadd(stream, {"n": "1"})
    assert run_plan(client, consumer.ensure_group())
    client.delete(stream)  # e.g. the idle stream expired: its group went with it
    for claim in (None, 100):
        with pytest.raises(StreamGone):
            run_plan(client, consumer.read(count=1, block_ms=20, claim_idle_ms=claim))
    assert run_plan(client, consumer.ensure_group()) is False  # waits for the producer
    client.xadd(stream, {"n": "2"})
    assert run_plan(client, consumer.ensure_group()) is True  # recovered
    assert [f for _, f in run_plan(client, consumer.read(1, 50)).entries] == [{b"n": b"2"}]


def test_stream_deleted_while_a_read_blocks(client: redis.Redis, stream: str) -> None:
    consumer = _consumer(stream, "a")
    client.xadd(stream, {"n": "1"})
    run_plan(client, consumer.ensure_group())
    run_plan(client, consumer.read(count=1, block_ms=20))
    timer = threading.Timer(0.2, client.delete, [stream])
    timer.start()
    started = time.monotonic()
    with pytest.raises(StreamGone):  # UNBLOCKED: the stream key no longer exists
        run_plan(client, consumer.read(count=1, block_ms=5_000))
    assert time.monotonic() - started < 4
    timer.join()


def test_other_errors_are_not_taken_for_a_missing_stream(client: redis.Redis, stream: str) -> None:
    client.set(stream, "not a stream")
    with pytest.raises(redis.ResponseError) as caught:
        run_plan(client, _consumer(stream, "a").ensure_group())
    assert not stream_gone(caught.value) and "WRONGTYPE" in str(caught.value)
    assert not stream_gone(ValueError("NOGROUP"))


async def test_the_same_plans_run_on_the_asyncio_client(stream: str) -> None:
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        consumer = _consumer(stream, "async", max_deliveries=1)
        assert await run_plan_async(client, consumer.ensure_group()) is False
        await client.xadd(stream, {"n": "1"})
        assert await run_plan_async(client, consumer.ensure_group()) is True
        assert await run_plan_async(client, consumer.ensure_group()) is True
        batch = await run_plan_async(client, consumer.read(count=4, block_ms=50))
        assert len(batch.entries) == 1
        await asyncio.sleep(0.05)
        again = await run_plan_async(client, consumer.read(4, 20, claim_idle_ms=20))
        assert again.exhausted and not again.entries  # delivered twice, limit 1
        async with client.pipeline(transaction=False) as pipe:
            consumer.ack_into(pipe, again.ids)
            await pipe.execute()
        assert await client.xlen(stream) == 0
        await client.delete(stream)
        with pytest.raises(StreamGone):
            await run_plan_async(client, consumer.read(count=1, block_ms=20))
    finally:
        await client.aclose()
