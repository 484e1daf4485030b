"""State-store capacity: frames/s a 1-primary vs a 3-primary Redis Cluster sustains.

    python bench/bench_store_capacity.py [--sessions 64] [--tracks 50] [--seconds 10]

No model: each synthetic session does what a live frame costs the store (take the lease and
read the metadata, then the compare-and-set save of a lossless tracker state of ``--tracks``
tracks, which also releases the lease) as fast as it can, spread over ``--clients`` client
processes. Reports frames/s, bytes written per frame and the Redis CPU time per frame
(``used_cpu_user + used_cpu_sys`` of every primary). Loopback only, bounded in time; the
clusters are started here (``bench/_cluster.py``), with no replicas.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path

import redis
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _cluster import LocalCluster  # noqa: E402

from model.tracker import codec, init_state  # noqa: E402
from service.store import RedisStore, SessionRecord  # noqa: E402


def synthetic_state(num_tracks: int, embed_dim: int = 256, cache_size: int = 10) -> bytes:
    """A lossless state of ``num_tracks`` tracks with full caches (random values)."""
    state = init_state(embed_dim, 40, cache_size)
    tensors = {}
    for name, value in state.tensors().items():
        shape = (num_tracks, *value.shape[1:])
        tensors[name] = (
            torch.randn(shape)
            if value.is_floating_point()
            else torch.ones(shape, dtype=torch.int64)
        )
    tensors["track_ids"] = torch.arange(num_tracks)
    full = type(state)(frame_index=0, next_track_id=num_tracks, **tensors)
    return codec.dumps(full, compact=False)


async def _client(url: str, sessions: list[str], payload: bytes, seconds: float) -> int:
    store = RedisStore(url)
    for sid in sessions:
        await store.create(SessionRecord(sid, {"k": 1}, payload, 0), 120)
    done = 0
    stop = time.monotonic() + seconds

    async def session(sid: str) -> None:
        nonlocal done
        while time.monotonic() < stop:
            lease = await store.acquire_frame(sid, sid, 10_000)
            assert lease is not None and lease.acquired
            await store.save_state(sid, lease.frame_index, payload, 120, release_owner=sid)
            done += 1

    await asyncio.gather(*(session(sid) for sid in sessions))
    for sid in sessions:
        await store.delete(sid)
    await store.close()
    return done


def _client_process(
    url: str, sessions: list[str], payload: bytes, seconds: float, out: mp.Queue
) -> None:  # noqa: E501
    out.put(asyncio.run(_client(url, sessions, payload, seconds)))


def _redis_cpu(ports: list[int]) -> float:
    total = 0.0
    for port in ports:
        with redis.Redis(port=port) as client:
            info = client.info("cpu")
        total += float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
    return total


def measure(primaries: int, sessions: int, tracks: int, seconds: float, clients: int) -> dict:
    """frames/s, bytes/frame and Redis CPU ms/frame on a fresh cluster of ``primaries``."""
    payload = synthetic_state(tracks)
    with (
        tempfile.TemporaryDirectory(prefix="ctvis-capacity-") as tmp,
        LocalCluster(Path(tmp), primaries=primaries, replicas=0) as cluster,
    ):
        ids = [f"cap-{i}" for i in range(sessions)]
        shares = [ids[i::clients] for i in range(clients)]
        out: mp.Queue = mp.get_context("spawn").Queue()
        ctx = mp.get_context("spawn")
        cpu0 = _redis_cpu(cluster.ports)
        procs = [
            ctx.Process(target=_client_process, args=(cluster.url, share, payload, seconds, out))
            for share in shares
        ]
        for p in procs:
            p.start()
        frames = sum(out.get(timeout=seconds + 120) for _ in procs)
        for p in procs:
            p.join(timeout=30)
        cpu = _redis_cpu(cluster.ports) - cpu0
    return {
        "primaries": primaries,
        "frames_per_s": frames / seconds,
        "bytes_per_frame": len(payload),
        "redis_cpu_ms_per_frame": 1000 * cpu / max(frames, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sessions", type=int, default=64)
    parser.add_argument("--tracks", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=2, help="client processes")
    args = parser.parse_args()
    rows = [measure(p, args.sessions, args.tracks, args.seconds, args.clients) for p in (1, 3)]
    print(f"{args.sessions} sessions, {args.tracks}-track lossless states, {args.clients} "
          f"client processes, {args.seconds:g} s each\n")  # fmt: skip
    print("| primaries | frames/s | bytes written / frame | Redis CPU ms / frame |")
    print("| --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['primaries']} | {r['frames_per_s']:.0f} | {r['bytes_per_frame']} | "
              f"{r['redis_cpu_ms_per_frame']:.3f} |")  # fmt: skip
    print(f"\n3 / 1 primaries: {rows[1]['frames_per_s'] / rows[0]['frames_per_s']:.2f}x")


if __name__ == "__main__":
    main()
