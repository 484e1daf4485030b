"""Session stores: in-process (embedded default) and Redis (any replica continues any session).

A session is JSON metadata, the tracker state bytes (``model.tracker.codec``) and the index of
the next frame it expects. A frame is one short protocol of two round trips:

1. ``acquire_frame``: take the session's lease (a short-lived owner token that serialises one
   session's frames across replicas) and read its metadata and frame index, in one Lua call.
   The state itself is read only when the replica does not already hold that version
   (``load_state``; a state is identified by (session, frame index), since the index only
   ever grows).
2. ``save_state``: a compare-and-set on the frame index that installs the new state and
   releases the lease. Two replicas racing on one session get a conflict instead of silently
   forking its track history. The state bytes are not passed through Lua (Redis copies a
   script argument into a Lua string and back, which costs more than the network for a
   100 KB state): they are written to a writer-private staging key in the same pipeline, and
   the script ``RENAME``s that key into place, which moves no bytes.

A save is either a snapshot (the whole state) or a delta (``model.tracker.delta``: the rows
a frame changed, a few KB), staged the same way and renamed into the state key or into the
delta key of its version; a snapshot deletes the deltas before it. Reading a state returns the
last snapshot and the deltas after it, in one script; the caller folds them.

Live sessions are counted from the store's own expiry (``count_live``), so a session that
expires without a DELETE frees its slot when its TTL passes. Key names live in ``service.keys``.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any, Protocol, cast

from service.auth import new_id
from service.keys import (
    SESSIONS_KEY,
    delta_key,
    lease_key,
    session_key,
    staging_key,
    state_key,
)
from service.redis_conn import LazyAsyncClient, RedisMode

STAGING_TTL_MS = 30_000  # a staging key outlives its save only if the writer died mid-save

# Lease + metadata in one round trip: {-1} no session, {0} busy, {1, meta, frame_index}.
_ACQUIRE_LUA = """
local fields = redis.call('hmget', KEYS[1], 'meta', 'frame_index')
if not fields[2] then return {-1} end
if not redis.call('set', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {0} end
return {1, fields[1], fields[2]}
"""

# Compare-and-set of a session's state: returns the new frame index, -1 when the session is
# gone, -2 when another writer advanced it first, -3 when the staged bytes are missing. The
# staged bytes (KEYS[2]) are RENAMEd into place, never copied: into the state (KEYS[3]) for a
# snapshot (ARGV[4] = 0), which also deletes the deltas since the previous snapshot, or into
# the delta key of the new version (KEYS[5]) for a delta (ARGV[4] = 1), which also renews the
# TTL of the earlier deltas. Delta keys are ARGV[5] .. version and share the session's hash
# tag. The staging key is always consumed, and the caller's lease (ARGV[3], if given) released.
_SAVE_LUA = """
local current = redis.call('hget', KEYS[1], 'frame_index')
local result
if not current then
  result = -1
elseif tonumber(current) ~= tonumber(ARGV[1]) then
  result = -2
elseif redis.call('exists', KEYS[2]) == 0 then
  result = -3
else
  local new = tonumber(ARGV[1]) + 1
  local since = tonumber(redis.call('hget', KEYS[1], 'snapshot_at') or '0')
  if ARGV[4] == '1' then
    redis.call('rename', KEYS[2], KEYS[5])
    redis.call('expire', KEYS[5], ARGV[2])
    for v = since + 1, new - 1 do redis.call('expire', ARGV[5] .. v, ARGV[2]) end
  else
    redis.call('rename', KEYS[2], KEYS[3])
    for v = since + 1, new - 1 do redis.call('del', ARGV[5] .. v) end
    redis.call('hset', KEYS[1], 'snapshot_at', new)
  end
  redis.call('hset', KEYS[1], 'frame_index', new)
  redis.call('expire', KEYS[1], ARGV[2])
  redis.call('expire', KEYS[3], ARGV[2])
  result = new
end
redis.call('del', KEYS[2])
if ARGV[3] ~= '' and redis.call('get', KEYS[4]) == ARGV[3] then redis.call('del', KEYS[4]) end
return result
"""

# A session's state as stored, in one consistent read: {} when the session is gone, else
# {frame_index, snapshot bytes, delta bytes of versions snapshot_at + 1 .. frame_index}.
_READ_LUA = """
local fields = redis.call('hmget', KEYS[1], 'frame_index', 'snapshot_at')
local snapshot = redis.call('get', KEYS[2])
if not fields[1] or not snapshot then return {} end
local out = {fields[1], snapshot}
for v = tonumber(fields[2] or '0') + 1, tonumber(fields[1]) do
  local delta = redis.call('get', ARGV[1] .. v)
  if not delta then return redis.error_reply('state delta ' .. v .. ' is missing') end
  out[#out + 1] = delta
end
return out
"""

# Delete a session: its hash, state and every delta key; returns 1 when it existed.
_DELETE_LUA = """
local fields = redis.call('hmget', KEYS[1], 'frame_index', 'snapshot_at')
if fields[1] then
  for v = tonumber(fields[2] or '0') + 1, tonumber(fields[1]) do
    redis.call('del', ARGV[1] .. v)
  end
end
return redis.call('del', KEYS[1], KEYS[2])
"""

# Readiness: a script touching two keys of one session slot, as every frame's scripts do.
_PROBE_LUA = """
redis.call('set', KEYS[2], '1', 'PX', 5000)
redis.call('hset', KEYS[1], 'probe', '1')
redis.call('pexpire', KEYS[1], 5000)
return 1
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

    Works on one Redis and on a Redis Cluster (``service.redis_conn`` picks the client on
    first use): a session's keys share its hash tag, so every script and transaction stays on
    its slot; only the live-session count lives elsewhere.
    """

    kind = "redis"

    def __init__(self, url: str, mode: RedisMode = "auto") -> None:
        self._lazy = LazyAsyncClient(url, mode, socket_connect_timeout=2, socket_timeout=5)
        self._shas: dict[str, str] = {}

    async def _c(self) -> Any:
        """The client, connected (and the server's mode asked) on first use."""
        return await self._lazy.get()

    @property
    def _cluster(self) -> bool:
        """Whether the client (opened by ``_c``) talks to a Redis Cluster."""
        return self._lazy.cluster

    async def _sha(self, script: str) -> str:
        sha = self._shas.get(script)
        if sha is None:
            # on a cluster SCRIPT LOAD goes to every primary (a slot may live on any)
            sha = await (await self._c()).script_load(script)
            sha = self._shas[script] = sha.decode() if isinstance(sha, bytes) else str(sha)
        return sha

    async def _evalsha(self, script: str, keys: list[str], args: list[Any]) -> Any:
        """EVALSHA, loading the script on first use and again after a Redis restart or a
        failover (a promoted replica has no scripts cached)."""
        from redis.exceptions import NoScriptError

        client = await self._c()
        try:
            return await client.evalsha(await self._sha(script), len(keys), *keys, *args)
        except NoScriptError:
            self._shas.pop(script, None)
            return await client.evalsha(await self._sha(script), len(keys), *keys, *args)

    async def _pipelined(self, *commands: tuple[Any, ...]) -> list[Any]:
        """Send ``commands`` in one write and read all their replies.

        Error replies come back as exceptions in the list; connection failures raise. On one
        Redis this writes to one connection directly, leaner than ``client.pipeline()`` for a
        hot two-command exchange (0.33 against 0.45 ms for a 128 KB SET + EVALSHA on the
        project's CI machine); on a cluster the cluster pipeline routes each command to its
        slot's node and follows redirections.
        """
        from redis.exceptions import ResponseError

        client = await self._c()
        if self._cluster:
            pipe = client.pipeline(transaction=False)
            for command in commands:
                pipe.execute_command(*command)
            return list(await pipe.execute(raise_on_error=False))
        pool = client.connection_pool
        conn = await pool.get_connection()
        try:
            await conn.send_packed_command(conn.pack_commands(commands))
            replies: list[Any] = []
            for _ in commands:
                try:
                    replies.append(await conn.read_response())
                except ResponseError as exc:
                    replies.append(exc)
            return replies
        except BaseException:
            await conn.disconnect()  # never hand back a connection with unread replies
            raise
        finally:
            await pool.release(conn)

    async def ping(self) -> bool:
        """A scripted round trip on two keys of one (random) session slot, as a frame needs:
        a store this service cannot use (unreachable, or a cluster behind a plain client)
        is not ready."""
        try:
            probe = f"readyz-{new_id()}"
            reply = await self._evalsha(_PROBE_LUA, [session_key(probe), lease_key(probe)], [])
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
        reply = await self._evalsha(_READ_LUA, keys, [delta_key(session_id, "")])
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
        reply = await self._evalsha(_ACQUIRE_LUA, keys, [owner, lease_ms])
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
        from redis.exceptions import NoScriptError

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
        for attempt in range(2):
            # one round trip: stage the bytes, then install them by RENAME in the script
            sha = await self._sha(_SAVE_LUA)
            replies = await self._pipelined(
                ("SET", staging, state, "PX", STAGING_TTL_MS),
                ("EVALSHA", sha, len(keys), *keys, *args),
                # the session's new expiry in the live-session count (XX: never re-adds one
                # that was deleted); the count key lives as long as its longest member
                ("ZADD", SESSIONS_KEY, "XX", "GT", time.time() + ttl_s, session_id),
                ("EXPIRE", SESSIONS_KEY, ttl_s, "GT"),
            )
            if isinstance(replies[1], NoScriptError) and attempt == 0:
                self._shas.pop(_SAVE_LUA, None)  # Redis restarted: load the script again
                continue
            for reply in replies:
                if isinstance(reply, Exception):
                    raise reply
            break
        return _save_result(session_id, expected_frame_index, int(replies[1]))

    async def delete(self, session_id: str) -> bool:
        keys = [session_key(session_id), state_key(session_id)]
        removed = await self._evalsha(_DELETE_LUA, keys, [delta_key(session_id, "")])
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
        await self._evalsha(_RELEASE_LUA, [lease_key(session_id)], [owner])

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
