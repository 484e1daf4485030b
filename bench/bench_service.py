"""Service benchmarks (loopback only, bounded): batching gain, Redis state round trip,
service overhead and a WebSocket load run.

    python bench/bench_service.py [--sessions 8] [--frames 40] [--redis-url URL]

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
from model.tracker.state import TrackState  # noqa: E402
from service.batching import BatchQueue  # noqa: E402
from service.store import RedisStore, SessionRecord  # noqa: E402
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


def _state(tracks: int, dim: int = 256, classes: int = 40) -> TrackState:
    import torch

    s = init_state(dim, classes, 10)
    fields = {}
    for name, value in s.tensors().items():
        shape = (tracks, *value.shape[1:])
        fields[name] = (
            torch.randn(shape)
            if value.is_floating_point()
            else torch.ones(shape, dtype=value.dtype)
        )
    fields["track_ids"] = torch.arange(tracks)
    import dataclasses

    return dataclasses.replace(s, frame_index=5, next_track_id=tracks, **fields)


async def redis_round_trip(url: str, n: int = 300) -> dict:
    """Per frame: load the session (1 round trip) and compare-and-set the new state (1 Lua
    round trip), with the lossless 10-track state the service stores; then the same plus the
    codec decode/encode."""
    store = RedisStore(url)
    state = _state(10)
    payload = codec.dumps(state, compact=False)
    await store.create(SessionRecord("bench-rt", {"k": 1}, payload, 0), 60)
    redis_only, with_codec = [], []
    for i in range(n):
        t0 = time.perf_counter()
        record = await store.load("bench-rt")
        assert record is not None
        await store.save_state("bench-rt", 2 * i, payload, 60)
        redis_only.append((time.perf_counter() - t0) * 1000)
        t0 = time.perf_counter()
        record = await store.load("bench-rt")
        assert record is not None
        codec.loads(record.state)
        await store.save_state("bench-rt", 2 * i + 1, codec.dumps(state, compact=False), 60)
        with_codec.append((time.perf_counter() - t0) * 1000)
    await store.delete("bench-rt")
    await store.close()
    return {"p50_ms": pct(redis_only, 50), "p99_ms": pct(redis_only, 99),
            "codec_p50_ms": pct(with_codec, 50), "state_bytes": len(payload)}  # fmt: skip


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
    args = parser.parse_args()

    gain = asyncio.run(batching_gain(8, 20, a_ms=40.0, b_ms=2.0))
    rt = asyncio.run(redis_round_trip(args.redis_url))
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
    print(f"| Redis state round trip (load + CAS save), 10 tracks, p50 / p99 | "
          f"{rt['p50_ms']:.3f} / {rt['p99_ms']:.3f} ms ({rt['state_bytes']} B) |")  # fmt: skip
    print(f"| same incl. codec decode + encode, p50 | {rt['codec_p50_ms']:.3f} ms |")
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
