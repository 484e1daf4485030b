"""Redis clients for one server or a Redis Cluster, chosen from what the server says it is.

``CTVIS_REDIS_URL`` names one node. With ``CTVIS_REDIS_MODE=auto`` (the default) the first
connection asks that node ``INFO cluster``: a node with ``cluster_enabled:1`` gets redis-py's
cluster client (which discovers the other nodes and follows ``MOVED`` / ``ASK`` redirections),
any other a plain client. ``single`` and ``cluster`` skip the question. Every key a session or
a job's script touches shares one hash tag (``service.keys``), so scripts and pipelines stay on
one slot in either mode.

Sentinel-managed Redis (one primary, replicas, Sentinels that promote a replica when the
primary fails) is named by a ``redis+sentinel://host:port[,host:port...]/<service>[/<db>]``
URL: the client asks the Sentinels for the current primary and asks again after a connection
error, so a failover needs no restart.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

RedisMode = Literal["auto", "single", "cluster"]
SENTINEL_SCHEME = "redis+sentinel://"


def parse_sentinel_url(url: str) -> tuple[list[tuple[str, int]], str, int]:
    """(sentinel addresses, service name, db) of a ``redis+sentinel://`` URL.

    Raises:
        ValueError: a malformed URL (no address, no service name, bad port or db).
    """
    rest = url.removeprefix(SENTINEL_SCHEME)
    hosts, _, path = rest.partition("/")
    parts = [p for p in path.split("/") if p]
    if not hosts or not parts or len(parts) > 2:
        raise ValueError(f"expected {SENTINEL_SCHEME}host:port[,host:port]/service[/db]")
    addresses = []
    for item in hosts.split(","):
        host, _, port = item.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"sentinel address {item!r} is not host:port")
        addresses.append((host, int(port)))
    db = parts[1] if len(parts) == 2 else "0"
    if not db.isdigit():
        raise ValueError(f"db {db!r} is not a number")
    return addresses, parts[0], int(db)


def _is_cluster_info(info: dict[str, Any]) -> bool:
    return str(info.get("cluster_enabled", "0")) == "1"


def _from_sentinels(sentinel_class: Any, url: str, options: dict[str, Any]) -> Any:
    """A client of the primary the Sentinels of a ``redis+sentinel://`` URL name."""
    addresses, service, db = parse_sentinel_url(url)
    return sentinel_class(addresses, **options).master_for(service, db=db, **options)


async def open_async(url: str, mode: RedisMode = "auto", **options: Any) -> Any:
    """An asyncio client for ``url``: ``redis.asyncio.Redis`` or ``RedisCluster``.

    Args:
        url: ``redis://``, ``rediss://`` or ``unix://`` URL of one node, or a
            ``redis+sentinel://`` URL.
        mode: ``auto`` (ask the node), ``single`` or ``cluster``.
        options: passed to the client (timeouts, ...).

    Raises:
        redis.exceptions.RedisError / OSError: the node cannot be reached (``auto``).
    """
    import redis.asyncio as redis
    from redis.asyncio.cluster import RedisCluster
    from redis.asyncio.sentinel import Sentinel

    if url.startswith(SENTINEL_SCHEME):
        return _from_sentinels(Sentinel, url, options)
    if mode == "auto":
        probe = redis.Redis.from_url(url, **options)
        try:
            mode = "cluster" if _is_cluster_info(await probe.info("cluster")) else "single"
        finally:
            await probe.aclose()
    return (RedisCluster if mode == "cluster" else redis.Redis).from_url(url, **options)


def open_sync(url: str, mode: RedisMode = "auto", **options: Any) -> Any:
    """A blocking client for ``url`` (``redis.Redis`` or ``redis.cluster.RedisCluster``);
    the same choice as ``open_async``."""
    import redis
    from redis.cluster import RedisCluster
    from redis.sentinel import Sentinel

    if url.startswith(SENTINEL_SCHEME):
        return _from_sentinels(Sentinel, url, options)
    if mode == "auto":
        probe = redis.Redis.from_url(url, **options)
        try:
            mode = "cluster" if _is_cluster_info(probe.info("cluster")) else "single"
        finally:
            probe.close()
    return (RedisCluster if mode == "cluster" else redis.Redis).from_url(url, **options)


def is_cluster(client: Any) -> bool:
    """Whether ``client`` is a cluster client (sync or asyncio)."""
    from redis.asyncio.cluster import RedisCluster as AsyncCluster
    from redis.cluster import RedisCluster

    return isinstance(client, (AsyncCluster, RedisCluster))


class LazyAsyncClient:
    """An asyncio client opened on first use (so a service starts while Redis is down, and
    ``auto`` can ask the server what it is), once even when many requests ask at the same
    time."""

    def __init__(self, url: str, mode: RedisMode = "auto", **options: Any) -> None:
        self._url, self._mode, self._options = url, mode, options
        self._client: Any = None
        self._lock = asyncio.Lock()
        self.cluster = False
        """Whether the opened client is a cluster client (known once ``get`` returned)."""

    async def get(self) -> Any:
        """The connected client (raises like ``open_async`` while Redis cannot be reached)."""
        if self._client is None:
            async with self._lock:
                if self._client is None:
                    client = await open_async(self._url, self._mode, **self._options)
                    self.cluster = is_cluster(client)
                    self._client = client
        return self._client

    @property
    def opened(self) -> Any:
        """The client if it was opened, else None."""
        return self._client

    async def close(self) -> None:
        """Close the client if it was opened (and, for Sentinel, its Sentinel connections)."""
        if self._client is not None:
            pool = getattr(self._client, "connection_pool", None)
            manager = getattr(pool, "sentinel_manager", None)
            await self._client.aclose()
            for sentinel in getattr(manager, "sentinels", ()):
                await sentinel.aclose()
            self._client = None
