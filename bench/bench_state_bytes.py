"""Bytes and Redis CPU time per live frame: whole lossless states vs snapshot + deltas.

    python bench/bench_state_bytes.py [--frames 64] [--snapshot-every 32]

Runs the real tracker (D=256, K=10, 40 classes) on synthetic detections for three sessions:
10 live tracks all seen every frame; 50 live tracks all seen every frame; 50 live tracks of
which 10 are seen each frame (the rest wait within ``num_dead_frames``). Each session's
states are saved through ``service.store.RedisStore`` to a private ``redis-server`` twice:
whole states every frame (the baseline) and the service's scheme (a delta per
frame, a snapshot every ``--snapshot-every``). Reports bytes sent per frame and the Redis
CPU time per frame (``INFO cpu`` before and after). A second table gives the state bytes a
``--no-worker`` frame carries on the frames stream: the request's whole state, and the reply's
new state whole or as a delta against the request's (``service.frame_stream``). Loopback only,
bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

import redis
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _cluster import _free_cluster_port, _spawn_redis, _stop_all  # noqa: E402

from model.config import TrackerConfig  # noqa: E402
from model.structures import Detections  # noqa: E402
from model.tracker import TrackState, codec, init_state, track_step  # noqa: E402
from model.tracker.delta import dumps_delta  # noqa: E402
from service.engine import FrameOutcome  # noqa: E402
from service.frame_stream import encode_outcome  # noqa: E402
from service.store import RedisStore, SessionRecord  # noqa: E402

EMBED_DIM, NUM_CLASSES = 256, 40


def run_states(live: int, seen: int, frames: int, seed: int = 0) -> list[TrackState]:
    """Tracker states of a session with ``live`` objects, ``seen`` of them in each frame."""
    gen = torch.Generator().manual_seed(seed)
    protos = 6.0 * torch.nn.functional.normalize(torch.randn(live, EMBED_DIM, generator=gen), dim=1)
    cfg = TrackerConfig()
    state = init_state(EMBED_DIM, NUM_CLASSES, cfg.cache_size)
    states = []
    for t in range(frames + 1):
        which = torch.arange(live) if t == 0 else (torch.arange(seen) + t * seen) % live
        n = which.numel()
        dets = Detections(
            query_indices=torch.arange(n),
            scores=torch.linspace(0.9, 0.5, n),
            logits=torch.randn(n, NUM_CLASSES + 1, generator=gen),
            mask_logits=torch.randn(n, 4, 4, generator=gen),
            embeds=protos[which] + 0.1 * torch.randn(n, EMBED_DIM, generator=gen),
        )
        state, _ = track_step(state, dets, cfg)
        states.append(state)
    return states


def _cpu(port: int) -> float:
    with redis.Redis(port=port) as client:
        info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def _save_all(url: str, states: list[TrackState], every: int | None) -> list[int]:
    """Save ``states[1:]`` as whole states (``every`` None) or as the service does."""
    store = RedisStore(url)
    sid = f"bytes-{every}-{len(states)}-{states[0].num_tracks}"
    await store.create(SessionRecord(sid, {}, codec.dumps(states[0], compact=False), 0), 60)
    sent = []
    for i, (prev, new) in enumerate(zip(states, states[1:], strict=False)):
        delta = every is not None and (i + 1) % every != 0
        payload = dumps_delta(prev, new) if delta else codec.dumps(new, compact=False)
        await store.save_state(sid, i, payload, 60, delta=delta)
        sent.append(len(payload))
    await store.delete(sid)
    await store.close()
    return sent


def stream_bytes(states: list[TrackState]) -> tuple[float, float, float]:
    """Mean bytes per frame on the frames stream: request state, reply whole, reply delta."""
    request, whole, delta = [], [], []
    for prev, new in zip(states, states[1:], strict=False):
        outcome = FrameOutcome(new, [], 0.0, 1)
        request.append(len(codec.dumps(prev, "m", compact=False)))
        whole.append(len(encode_outcome(outcome, "m")))
        delta.append(len(encode_outcome(outcome, "m", prev)))
    n = len(request)
    return sum(request) / n, sum(whole) / n, sum(delta) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--snapshot-every", type=int, default=32)
    args = parser.parse_args()
    cases = [
        ("10 live, 10 seen", 10, 10),
        ("50 live, 50 seen", 50, 50),
        ("50 live, 10 seen", 50, 10),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        port = _free_cluster_port()
        procs = {port: _spawn_redis(port, ["--port", str(port), "--save", ""], Path(tmp))}
        url = f"redis://127.0.0.1:{port}/0"
        try:
            print(f"{args.frames} frames per session, snapshot every {args.snapshot_every}\n")
            print("| session | whole states: B / frame | deltas: B / frame | ratio | "
                  "Redis CPU us / frame (whole / deltas) |")  # fmt: skip
            print("| --- | --- | --- | --- | --- |")
            for name, live, seen in cases:
                states = run_states(live, seen, args.frames)
                row = []
                for every in (None, args.snapshot_every):
                    cpu0 = _cpu(port)
                    sent = asyncio.run(_save_all(url, states, every))
                    row.append((sum(sent) / len(sent), 1e6 * (_cpu(port) - cpu0) / len(sent)))
                (whole, cpu_w), (delta, cpu_d) = row
                print(f"| {name} | {whole:.0f} | {delta:.0f} | {whole / delta:.1f}x | "
                      f"{cpu_w:.0f} / {cpu_d:.0f} |")  # fmt: skip
        finally:
            _stop_all(procs)
    print("\n| session | request state B / frame | reply: whole state | reply: delta | "
          "stream bytes per frame, whole -> delta |")  # fmt: skip
    print("| --- | --- | --- | --- | --- |")
    for name, live, seen in cases:
        request, whole, delta = stream_bytes(run_states(live, seen, args.frames))
        print(f"| {name} | {request:.0f} | {whole:.0f} | {delta:.0f} | "
              f"{request + whole:.0f} -> {request + delta:.0f} "
              f"({(request + whole) / (request + delta):.2f}x) |")  # fmt: skip


if __name__ == "__main__":
    main()
