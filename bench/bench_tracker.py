"""Micro-benchmarks of the tracker hot path; prints a markdown table.

Usage: ``python bench/bench_tracker.py [--threads 1] [--repeats 200] [--malloc-tuned]``.

Cases: one ``track_step`` with 100 candidates against 50 live tracks (D=256; the state is
reused, which is valid because steps are pure), candidate selection for Q=100, the state codec
(10 and 50 tracks), and RLE encoding of 10 instances at 480x854 (alone and with the
upsampling from 1/4-resolution logits).

Each step allocates fresh ~1 MB tensors (pure functions over a 50-track state). glibc serves
those with mmap and page-faults them in on every call; ``--malloc-tuned`` raises glibc's mmap
and trim thresholds (the same as ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_``
in the environment) so freed blocks are reused, which is what a long-running service wants
and what ``ctvis serve`` / ``ctvis worker`` do by default (``CTVIS_MALLOC_TUNED``).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Callable

import torch

from cli.common import tune_malloc
from model import rle
from model.config import TrackerConfig
from model.postprocess import MaskSizes, encode_frame_masks
from model.structures import Detections
from model.tracker import codec
from model.tracker.select import mask_boxes, select_candidates
from model.tracker.state import TrackState, init_state
from model.tracker.step import track_step

EMBED_DIM = 256
NUM_CLASSES = 40


def _time_ms(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median wall and median thread-CPU time of ``fn`` in ms (after 5 warm-up calls).

    The CPU time excludes waiting for a core, which dominates on a shared, busy machine.
    """
    for _ in range(5):
        fn()
    wall, cpu = [], []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.thread_time()
        fn()
        cpu.append(time.thread_time() - c0)
        wall.append(time.perf_counter() - w0)
    wall.sort()
    cpu.sort()
    return 1000.0 * wall[len(wall) // 2], 1000.0 * cpu[len(cpu) // 2]


def _fmt(times: tuple[float, float]) -> str:
    return f"{times[0]:.3f} ms ({times[1]:.3f} ms CPU)"


def _detections(embeds: torch.Tensor, scores: torch.Tensor, hw: tuple[int, int]) -> Detections:
    n = embeds.shape[0]
    return Detections(
        query_indices=torch.arange(n),
        scores=scores,
        logits=torch.randn(n, NUM_CLASSES + 1),
        mask_logits=torch.randn(n, *hw),
        embeds=embeds,
    )


def _live_state(num_tracks: int, protos: torch.Tensor, cfg: TrackerConfig) -> TrackState:
    state = init_state(EMBED_DIM, NUM_CLASSES, cfg.cache_size)
    scores = torch.linspace(0.9, 0.5, num_tracks)
    for _ in range(12):  # fill the caches past cache_size
        noisy = protos + 0.1 * torch.randn_like(protos)
        state, _ = track_step(state, _detections(noisy, scores, (4, 4)), cfg)
    return state


def tracker_rows(cfg: TrackerConfig, repeats: int) -> list[tuple[str, str]]:
    """``track_step`` with and without the box cue, and ``select_candidates``."""
    rows: list[tuple[str, str]] = []
    protos = 6.0 * torch.nn.functional.normalize(torch.randn(50, EMBED_DIM), dim=1)
    state50 = _live_state(50, protos, cfg)
    clutter = 6.0 * torch.nn.functional.normalize(torch.randn(50, EMBED_DIM), dim=1)
    embeds = torch.cat([protos + 0.1 * torch.randn_like(protos), clutter])
    scores = torch.cat([torch.linspace(0.9, 0.5, 50), torch.linspace(0.3, 0.001, 50)])
    dets = _detections(embeds, scores, (4, 4))
    with torch.inference_mode():
        ms = _time_ms(lambda: track_step(state50, dets, cfg), repeats)
    rows.append(("track_step, 100 candidates x 50 live tracks, D=256", _fmt(ms)))
    # The box cue (box_iou_weight > 0) reads the candidates' masks: time it at a real mask size
    # (1/4 of a 480x864 input), each candidate a rectangle, the live tracks' boxes in place.
    box_cfg = dataclasses.replace(cfg, box_iou_weight=0.7)
    corner = torch.randint(0, 100, (100, 2))
    big_masks = torch.full((100, 120, 216), -5.0)
    for i, (y, x) in enumerate(corner.tolist()):
        big_masks[i, y : y + 20, x : x + 30] = 5.0
    big = dataclasses.replace(_detections(embeds, scores, (120, 216)), mask_logits=big_masks)
    box_state = dataclasses.replace(state50, last_box=mask_boxes(big_masks[:50]))
    with torch.inference_mode():
        ms = _time_ms(lambda: track_step(box_state, big, box_cfg), repeats)
    rows.append(("same with the box cue (box_iou_weight 0.7), masks 120x216", _fmt(ms)))
    q_logits = torch.randn(100, NUM_CLASSES + 1)
    q_masks = torch.randn(100, 120, 216)
    q_embeds = torch.randn(100, EMBED_DIM)
    with torch.inference_mode():
        ms = _time_ms(lambda: select_candidates(q_logits, q_masks, q_embeds, cfg), repeats)
    rows.append(("select_candidates, Q=100, masks 120x216", _fmt(ms)))
    return rows


def codec_rows(cfg: TrackerConfig, repeats: int) -> list[tuple[str, str]]:
    """State codec time and size at 10 and 50 live tracks."""
    rows: list[tuple[str, str]] = []
    protos = 6.0 * torch.nn.functional.normalize(torch.randn(50, EMBED_DIM), dim=1)
    state50 = _live_state(50, protos, cfg)
    for num_tracks in (10, 50):
        state = state50.select(torch.arange(num_tracks))
        data = codec.dumps(state, model_id="ctvis-r50")
        ms_enc = _time_ms(lambda s=state: codec.dumps(s, model_id="ctvis-r50"), repeats)
        ms_dec = _time_ms(lambda d=data: codec.loads(d, "ctvis-r50"), repeats)
        exact = len(codec.dumps(state, compact=False))
        rows.append((f"state dumps, {num_tracks} tracks", _fmt(ms_enc)))
        rows.append((f"state loads, {num_tracks} tracks", _fmt(ms_dec)))
        rows.append(
            (f"state size, {num_tracks} tracks (compact / exact)", f"{len(data)} / {exact} B")
        )
    return rows


def mask_rows(repeats: int) -> list[tuple[str, str]]:
    """RLE encoding, and upsample + binarise + RLE of 10 instances per frame."""
    rows: list[tuple[str, str]] = []
    yy, xx = torch.meshgrid(torch.arange(480), torch.arange(854), indexing="ij")
    centres = torch.rand(10, 2) * torch.tensor([480.0, 854.0])
    radius = 30 + 60 * torch.rand(10)
    dist = (yy[None] - centres[:, 0, None, None]) ** 2 + (xx[None] - centres[:, 1, None, None]) ** 2
    masks = dist < radius[:, None, None] ** 2
    ms = _time_ms(lambda: rle.encode_many(masks), max(20, repeats // 4))
    rows.append(("RLE encode, 10 instances at 480x854 (per frame)", _fmt(ms)))
    low = torch.randn(10, 120, 216)
    reps = max(10, repeats // 10)
    for original in ((480, 854), (720, 1280)):
        sizes = MaskSizes(image_size=(480, 854), padded_size=(480, 864), original_size=original)
        name = f"{original[0]}x{original[1]}"
        with torch.inference_mode():
            stream = _time_ms(lambda s=sizes: encode_frame_masks(low, s, False), reps)
            offline = _time_ms(lambda s=sizes: encode_frame_masks(low, s), reps)
        rows.append(
            (f"upsample + binarise + RLE, 10 instances to {name} (streaming)", _fmt(stream))
        )
        rows.append((f"same + rescoring sums (offline), {name}", _fmt(offline)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--malloc-tuned", action="store_true", help="see the module docstring")
    args = parser.parse_args()
    tuned = args.malloc_tuned and tune_malloc()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = TrackerConfig()
    rows = tracker_rows(cfg, args.repeats) + codec_rows(cfg, args.repeats)
    rows += mask_rows(args.repeats)
    print(
        f"torch {torch.__version__}, {args.threads} intra-op thread(s), "
        f"malloc tuned: {tuned}, median of {args.repeats} runs\n"
    )
    print("| case | time / size |")
    print("| --- | --- |")
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
