"""The Lua scripts of ``service.store.RedisStore``, registered on its client.

A frame is one short protocol of two round trips:

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

Each script runs atomically on one Redis (or one cluster node): every key a script names, in
``KEYS`` or built from an ``ARGV`` prefix, carries the session's hash tag (``service.keys``), so
all of them live in the session's slot. ``SessionScripts.register`` wraps them in redis-py's
``AsyncScript`` objects, which run a script by its SHA1 (``EVALSHA``) and load it again when
the server does not know it (after a restart, or on a freshly promoted replica); on a cluster
redis-py sends ``SCRIPT LOAD`` to every primary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from redis.commands.core import AsyncScript

# Lease + metadata in one round trip: {-1} no session, {0} busy, {1, meta, frame_index}.
ACQUIRE_LUA = """
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
SAVE_LUA = """
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
READ_LUA = """
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
DELETE_LUA = """
local fields = redis.call('hmget', KEYS[1], 'frame_index', 'snapshot_at')
if fields[1] then
  for v = tonumber(fields[2] or '0') + 1, tonumber(fields[1]) do
    redis.call('del', ARGV[1] .. v)
  end
end
return redis.call('del', KEYS[1], KEYS[2])
"""

# Readiness: a script touching two keys of one session slot, as every frame's scripts do.
PROBE_LUA = """
redis.call('set', KEYS[2], '1', 'PX', 5000)
redis.call('hset', KEYS[1], 'probe', '1')
redis.call('pexpire', KEYS[1], 5000)
return 1
"""

# Delete the lease only if we still own it (it may have expired and been taken over).
RELEASE_LUA = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


@dataclass(frozen=True)
class SessionScripts:
    """The store's scripts, registered on one client (single, Sentinel or cluster)."""

    client: Any
    acquire: AsyncScript
    save: AsyncScript
    read: AsyncScript
    delete: AsyncScript
    probe: AsyncScript
    release: AsyncScript

    @classmethod
    def register(cls, client: Any) -> SessionScripts:
        """Wrap every script for ``client`` (computes their SHA1s; talks to no server)."""
        sources = (ACQUIRE_LUA, SAVE_LUA, READ_LUA, DELETE_LUA, PROBE_LUA, RELEASE_LUA)
        return cls(client, *(client.register_script(source) for source in sources))
