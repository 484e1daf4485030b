"""Service benchmarks (loopback only, bounded): batching gain, Redis state round trip,
service overhead and a WebSocket load run.

    python bench/bench_service.py [--sessions 8] [--frames 40] [--redis-url URL] [--store-only]

Prints a markdown report. Every measurement is bounded in count and time and talks only to
127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _proc import free_port, rss_mb  # noqa: E402

from model.tracker import codec, init_state  # noqa: E402
from service.batching import BatchQueue  # noqa: E402
from service.store import RedisStore, SessionRecord  # noqa: E402
from service.store_scripts import RELEASE_LUA  # noqa: E402
from training.data.synthetic import config_for, render_video  # noqa: E402


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


async def batching_gain(sessions: int, frames: int, a_ms: float, b_ms: float) -> dict:
    """Stub backend sleeping a + b*batch ms; 8 sessions batched vs unbatched."""

    async def stub(items: list[int]) -> list[int]:
        await asyncio.sleep((a_ms + b_ms * len(items)) / 1000)
        return items

    out = {}
    for size in (1, sessions):
        q: BatchQueue[int, int] = BatchQueue(stub, max_batch_size=size, max_wait_s=0.002)
        q.start()

        async def session(q: BatchQueue[int, int] = q) -> None:
            for i in range(frames):
                await q.submit(i)

        t0 = time.perf_counter()
        await asyncio.gather(*(session() for _ in range(sessions)))
        out[size] = sessions * frames / (time.perf_counter() - t0)
        await q.close()
    return {"unbatched_fps": out[1], "batched_fps": out[sessions], "gain": out[sessions] / out[1]}


def _state_sequence(frames: int, tracks: int = 10) -> list:
    """Successive tracker states of one live session: ``tracks`` objects, every one matched
    in every frame (the steady state of a stream), from ``track_step`` itself."""
    import torch
    from bench_tracker import EMBED_DIM, NUM_CLASSES, _detections

    from model.config import TrackerConfig
    from model.tracker import track_step

    torch.manual_seed(0)
    cfg = TrackerConfig()
    protos = 6.0 * torch.nn.functional.normalize(torch.randn(tracks, EMBED_DIM), dim=1)
    state = init_state(EMBED_DIM, NUM_CLASSES, cfg.cache_size)
    states = []
    for _ in range(frames + 12):  # 12 warm-up frames fill the raw-embedding caches
        embeds = protos + 0.1 * torch.randn_like(protos)
        dets = _detections(embeds, torch.linspace(0.9, 0.5, tracks), (4, 4))
        state, _ = track_step(state, dets, cfg)
        states.append(state)
    return states[12:]


# The protocol before the staged save (kept here only to measure against, in the same run): a
# frame read the whole record (HGETALL, state inside the hash) and saved through a Lua
# compare-and-set that received the state bytes as a script argument.
_LEGACY_SAVE_LUA = """
local current = redis.call('hget', KEYS[1], 'frame_index')
if not current then return -1 end
if tonumber(current) ~= tonumber(ARGV[1]) then return -2 end
redis.call('hset', KEYS[1], 'state', ARGV[2], 'frame_index', tonumber(ARGV[1]) + 1)
redis.call('expire', KEYS[1], ARGV[3])
return tonumber(ARGV[1]) + 1
"""


async def redis_round_trip(url: str, n: int = 300) -> dict:
    """Store time of one live-session frame with lossless 10-track states, n of each kind,
    interleaved.

    The states are the successive states of a real tracker run (10 tracks, all matched every
    frame; ~128 KB each), so each save carries what a stream's frame really changes.

    * ``hit``: the replica saved the previous frame itself (the steady state): lease + meta
      (one Lua call), then the staged compare-and-set save that releases the lease;
    * ``miss``: another replica saved it: the same plus reading the state;
    * ``legacy``: a baseline four-round-trip protocol's load + save (HGETALL of a hash that
      holds the state, a Lua CAS that takes the state as a script argument);
      ``legacy_frame``: the same with its separate lease acquire and release, i.e. that
      protocol's whole store time per frame;
    * ``codec``: ``hit`` plus the codec encode the service does per frame;
    * ``hit_save``: the state's own round trip in ``hit`` (the save; nothing is read).
    """
    import redis.asyncio as redis

    store = RedisStore(url)
    raw = redis.Redis.from_url(url)
    legacy = raw.register_script(_LEGACY_SAVE_LUA)
    states = _state_sequence(3 * n + 1)
    payloads = [codec.dumps(s, compact=False) for s in states]
    sid, legacy_key = "bench-rt", "ctvis:bench-legacy"
    await store.create(SessionRecord(sid, {"k": 1}, payloads[0], 0), 60)
    await raw.hset(legacy_key, mapping={"meta": "{}", "state": payloads[0], "frame_index": 0})
    kinds = ("hit", "hit_save", "miss", "legacy", "legacy_frame", "codec")
    times: dict[str, list[float]] = {k: [] for k in kinds}

    async def frame(kind: str, owner: str, i: int) -> None:
        t0 = time.perf_counter()
        lease = await store.acquire_frame(sid, owner, 10_000)
        assert lease is not None and lease.acquired
        if kind == "miss":
            assert await store.load_state(sid) is not None
        data = codec.dumps(states[i], compact=False) if kind == "codec" else payloads[i]
        t1 = time.perf_counter()
        await store.save_state(sid, lease.frame_index, data, 60, release_owner=owner)
        t2 = time.perf_counter()
        times[kind].append((t2 - t0) * 1000)
        if kind == "hit":
            times["hit_save"].append((t2 - t1) * 1000)

    for i in range(1, n + 1):
        await frame("hit", f"o{i}a", 3 * i - 2)
        await frame("miss", f"o{i}b", 3 * i - 1)
        t0 = time.perf_counter()
        assert await raw.set("ctvis:bench-legacy-lease", f"o{i}", nx=True, px=10_000)
        t1 = time.perf_counter()
        assert await raw.hgetall(legacy_key)
        assert int(await legacy(keys=[legacy_key], args=[i - 1, payloads[i], 60])) == i
        t2 = time.perf_counter()
        await raw.eval(RELEASE_LUA, 1, "ctvis:bench-legacy-lease", f"o{i}")
        times["legacy"].append((t2 - t1) * 1000)
        times["legacy_frame"].append((time.perf_counter() - t0) * 1000)
        await frame("codec", f"o{i}c", 3 * i)
    await store.delete(sid)
    await raw.delete(legacy_key, "ctvis:bench-legacy-lease")
    await store.close()
    await raw.aclose()
    out = {f"{k}_p50_ms": pct(v, 50) for k, v in times.items()}
    out.update({f"{k}_p99_ms": pct(v, 99) for k, v in times.items()})
    out["state_bytes"] = len(payloads[0])
    return out


def _jpeg(frame: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


async def ws_load(base: str, sessions: int, frames: int) -> dict:
    import httpx
    import websockets

    video, _ = render_video(3, config_for("val", num_frames=frames, height=120, width=160))
    payloads = [_jpeg(f) for f in video]
    latencies, overheads, errors, dropped = [], [], 0, 0

    async def one() -> None:
        nonlocal errors, dropped
        async with httpx.AsyncClient() as http:
            created = (await http.post(f"{base}/v1/sessions")).json()
        url = base.replace("http", "ws") + (
            f"/v1/sessions/{created['session_id']}/stream?token={created['token']}"
        )
        async with websockets.connect(url, max_size=None) as ws:
            for data in payloads:
                t0 = time.perf_counter()
                await ws.send(data)
                msg = json.loads(await ws.recv())
                if msg.get("type") != "frame":
                    errors += 1
                    continue
                ms = (time.perf_counter() - t0) * 1000
                latencies.append(ms)
                overheads.append(ms - msg["timings"]["model_ms"])
                dropped = max(dropped, msg["dropped_frames"])
            await ws.send(json.dumps({"type": "end"}))
            await ws.recv()

    t0 = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(sessions)))
    elapsed = time.perf_counter() - t0
    return {
        "frames_per_s": len(latencies) / elapsed,
        "p50_ms": pct(latencies, 50),
        "p95_ms": pct(latencies, 95),
        "p99_ms": pct(latencies, 99),
        "overhead_p50_ms": pct(overheads, 50),
        "overhead_p99_ms": pct(overheads, 99),
        "errors": errors,
        "dropped": dropped,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument(
        "--redis-url", default=os.environ.get("CTVIS_REDIS_URL", "redis://127.0.0.1:6379/0")
    )
    parser.add_argument("--store-only", action="store_true", help="only the Redis store timing")
    args = parser.parse_args()

    rt = asyncio.run(redis_round_trip(args.redis_url))
    if args.store_only:
        for kind in ("hit", "hit_save", "miss", "legacy", "legacy_frame", "codec"):
            print(f"{kind}: p50 {rt[kind + '_p50_ms']:.3f} ms, p99 {rt[kind + '_p99_ms']:.3f} ms")
        return
    gain = asyncio.run(batching_gain(8, 20, a_ms=40.0, b_ms=2.0))
    port = free_port()
    exe = shutil.which("ctvis") or str(Path(sys.executable).parent / "ctvis")
    # the recorded numbers use the random-weight tiny preset; CTVIS_CHECKPOINT overrides
    env = {**os.environ, "CTVIS_CHECKPOINT": os.environ.get("CTVIS_CHECKPOINT") or "tiny-random"}
    server = subprocess.Popen(
        [exe, "serve", "--port", str(port), "--log-level", "error"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
    )  # fmt: skip
    try:
        import httpx

        for _ in range(600):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        rss_before = rss_mb(server.pid)
        load = asyncio.run(ws_load(f"http://127.0.0.1:{port}", args.sessions, args.frames))
        rss_after = rss_mb(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=30)

    print("| measurement | value |")
    print("| --- | --- |")
    print(f"| stub backend a=40 ms, b=2 ms: unbatched | {gain['unbatched_fps']:.1f} frames/s |")
    print(f"| stub backend, 8 sessions batched | {gain['batched_fps']:.1f} frames/s |")
    print(f"| batching gain | {gain['gain']:.2f}x |")
    for kind, what in (
        ("hit", "steady state: lease + meta, staged CAS save + release"),
        ("hit_save", "steady state, the state round trip alone (staged CAS save)"),
        ("miss", "another replica saved last: + state read"),
        ("legacy", "baseline protocol: HGETALL + big-argument Lua CAS, leases not counted"),
        ("legacy_frame", "baseline protocol incl. its lease acquire + release"),
        ("codec", "steady state + codec encode"),
    ):
        print(f"| Redis store time per frame, {what}, {rt['state_bytes']} B state, p50 / p99 | "
              f"{rt[kind + '_p50_ms']:.3f} / {rt[kind + '_p99_ms']:.3f} ms |")  # fmt: skip
    print(f"| WS load: {args.sessions} sessions x {args.frames} frames (tiny, 160x120 JPEG) | "
          f"{load['frames_per_s']:.1f} frames/s |")  # fmt: skip
    print(f"| latency p50 / p95 / p99 | {load['p50_ms']:.1f} / {load['p95_ms']:.1f} / "
          f"{load['p99_ms']:.1f} ms |")  # fmt: skip
    print(f"| service overhead (latency - model time) p50 / p99 | "
          f"{load['overhead_p50_ms']:.1f} / {load['overhead_p99_ms']:.1f} ms |")  # fmt: skip
    print(f"| errors / dropped | {load['errors']} / {load['dropped']} |")
    print(f"| server RSS before / after | {rss_before:.0f} / {rss_after:.0f} MB |")


if __name__ == "__main__":
    main()
