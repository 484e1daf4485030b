"""One consumer of a Redis Streams consumer group, for blocking and asyncio clients alike.

The frame workers (``service.frame_stream``, asyncio) and the job workers
(``service.jobs.redis_worker``, a blocking client in a thread) read their streams the same way:
join the group (created once, idempotently), take over entries another consumer left
unacknowledged for too long (``XAUTOCLAIM``), read new ones (``XREADGROUP``), and
acknowledge and delete what they finished. ``StreamConsumer`` holds that logic once. Each
operation is a *plan*: a generator that yields the Redis commands it needs and receives their
replies, so the same code runs on either client through ``run_plan`` (blocking) or
``run_plan_async`` (asyncio). A Redis error is thrown back into the plan at the command that
raised it, so the plan also decides, in one place (``stream_gone``), which errors mean that the
stream or its group does not exist.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from redis.exceptions import ResponseError

if TYPE_CHECKING:
    from redis.typing import EncodableT, FieldT

T = TypeVar("T")
Command = tuple[str, tuple[Any, ...], dict[str, Any]]
"""A client method name with its positional and keyword arguments."""
Plan = Generator[Command, Any, T]
"""Yields commands, receives each command's reply, returns the operation's result."""
Entry = tuple[bytes, dict[bytes, bytes]]
"""A stream entry as a client without ``decode_responses`` returns it: (id, fields)."""


class StreamGone(Exception):
    """The stream or its consumer group does not exist (any more): join the group again."""


def stream_gone(exc: BaseException) -> bool:
    """Whether a Redis error says the stream or the group is missing.

    redis-py raises these as plain ``ResponseError``, so the server's message tells them
    apart: ``NOGROUP`` (no such key or group, from ``XREADGROUP`` / ``XAUTOCLAIM`` /
    ``XCLAIM``), ``UNBLOCKED ... no longer exists`` (the stream was deleted, e.g. expired, while
    a read blocked on it) and ``XGROUP CREATE``'s "requires the key to exist" (older servers:
    "no such key").
    """
    if not isinstance(exc, ResponseError):
        return False
    text = str(exc)
    return (
        "NOGROUP" in text
        or "no longer exists" in text
        or "requires the key to exist" in text
        or "no such key" in text.lower()
    )


def _busy_group(exc: BaseException) -> bool:
    """``XGROUP CREATE`` of a group that exists already."""
    return isinstance(exc, ResponseError) and "BUSYGROUP" in str(exc)


def _call(name: str, *args: Any, **kwargs: Any) -> Command:
    return name, args, kwargs


@dataclass
class Batch:
    """What one read returned.

    Attributes:
        entries: entries to process: stale ones claimed from other consumers first, then new.
        exhausted: claimed entries already delivered more than ``max_deliveries`` times
            (every consumer that took them died): answer them as lost, then acknowledge.
    """

    entries: list[Entry] = field(default_factory=list)
    exhausted: list[Entry] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.entries or self.exhausted)

    @property
    def ids(self) -> list[bytes]:
        """The ids of every entry of the batch (to acknowledge once all are answered)."""
        return [eid for eid, _ in self.entries] + [eid for eid, _ in self.exhausted]


@dataclass(frozen=True)
class StreamConsumer:
    """One consumer of ``group`` on ``stream``.

    Attributes:
        stream: the stream key.
        group: the consumer group.
        consumer: this consumer's name (unique per process: ``<host>-<pid>``).
        max_deliveries: a claimed entry delivered more often than this goes to
            ``Batch.exhausted`` instead of being retried; None: always retried (the caller
            counts attempts itself).
    """

    stream: str
    group: str
    consumer: str
    max_deliveries: int | None = None

    def ensure_group(self) -> Plan[bool]:
        """Create the group (reading from the stream's start) unless it exists.

        The stream itself is never created here: its producer creates it (with a TTL), so an
        idle system keeps no key. Returns False while the stream does not exist.
        """
        try:
            yield _call("xgroup_create", self.stream, self.group, id="0", mkstream=False)
        except ResponseError as exc:
            if _busy_group(exc):
                return True
            if stream_gone(exc):
                return False
            raise
        return True

    def read(self, count: int, block_ms: int, claim_idle_ms: int | None = None) -> Plan[Batch]:
        """Up to ``count`` entries: stale claims first (when ``claim_idle_ms`` is given),
        then new entries, waiting up to ``block_ms`` (> 0) for them when none were claimed.

        Raises:
            StreamGone: the stream or the group is missing (``ensure_group`` again).
        """
        batch = Batch()
        try:
            if claim_idle_ms is not None:
                claimed = yield _call(
                    "xautoclaim", self.stream, self.group, self.consumer,
                    min_idle_time=claim_idle_ms, start_id="0-0", count=count,
                )  # fmt: skip
                for entry in [(eid, fields) for eid, fields in claimed[1] if fields]:
                    deliveries = yield from self._deliveries(entry[0])
                    over = self.max_deliveries is not None and deliveries > self.max_deliveries
                    (batch.exhausted if over else batch.entries).append(entry)
            if len(batch.entries) < count:
                got = yield _call(
                    "xreadgroup", self.group, self.consumer, {self.stream: ">"},
                    count=count - len(batch.entries), block=block_ms,
                )  # fmt: skip
                if got:
                    batch.entries += got[0][1]
        except ResponseError as exc:
            if stream_gone(exc):
                raise StreamGone(self.stream) from exc
            raise
        return batch

    def _deliveries(self, entry_id: bytes) -> Plan[int]:
        """How many times the entry was delivered (its claim just now included)."""
        if self.max_deliveries is None:
            return 0
        info = yield _call(
            "xpending_range", self.stream, self.group, min=entry_id, max=entry_id, count=1
        )
        return int(info[0]["times_delivered"]) if info else 1

    def ack(self, *entry_ids: bytes) -> Plan[None]:
        """Acknowledge and delete finished entries (nobody reads an entry twice)."""
        if entry_ids:
            yield _call("xack", self.stream, self.group, *entry_ids)
            yield _call("xdel", self.stream, *entry_ids)

    def ack_into(self, pipe: Any, entry_ids: list[bytes]) -> None:
        """Queue ``ack``'s commands on a pipeline (blocking or asyncio), e.g. after the
        replies to those entries, so both go in one round trip."""
        if entry_ids:
            pipe.xack(self.stream, self.group, *entry_ids)
            pipe.xdel(self.stream, *entry_ids)

    def heartbeat(self, entry_id: bytes) -> Plan[None]:
        """Reset the idle time of an entry this consumer is still working on, so no other
        consumer claims it (``XCLAIM ... JUSTID`` does not count as a delivery)."""
        yield _call("xclaim", self.stream, self.group, self.consumer, 0, [entry_id], justid=True)

    def requeue(self, entry_id: bytes, fields: dict[FieldT, EncodableT]) -> Plan[None]:
        """Append ``fields`` as a new entry (any consumer may take it), then acknowledge
        ``entry_id``."""
        yield _call("xadd", self.stream, fields)
        yield from self.ack(entry_id)


def _advance(plan: Plan[T], reply: Any, error: BaseException | None) -> tuple[bool, Any]:
    """Feed the last reply (or error) to ``plan``: (True, result) or (False, next command)."""
    try:
        return False, (plan.throw(error) if error is not None else plan.send(reply))
    except StopIteration as done:
        return True, done.value


def run_plan(client: Any, plan: Plan[T]) -> T:
    """Run ``plan`` on a blocking redis-py client (``decode_responses`` off)."""
    reply: Any = None
    error: BaseException | None = None
    while True:
        finished, value = _advance(plan, reply, error)
        if finished:
            return value
        name, args, kwargs = value
        try:
            reply, error = getattr(client, name)(*args, **kwargs), None
        except Exception as exc:  # noqa: BLE001 - handed to the plan, which re-raises
            reply, error = None, exc


async def run_plan_async(client: Any, plan: Plan[T]) -> T:
    """Run ``plan`` on an asyncio redis-py client (``decode_responses`` off)."""
    reply: Any = None
    error: BaseException | None = None
    while True:
        finished, value = _advance(plan, reply, error)
        if finished:
            return value
        name, args, kwargs = value
        try:
            reply, error = await getattr(client, name)(*args, **kwargs), None
        except Exception as exc:  # noqa: BLE001 - handed to the plan, which re-raises
            reply, error = None, exc
