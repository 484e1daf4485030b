"""Training clips of the re-id study: T = 8-10 frames that span one of the video's events.

Every ``reid`` video scripts two events (``training.data.reid_synth``): a look-alike pair
swapping places fully hidden behind a bar for 2-5 frames, and a twin leaving the frame and
coming back 5-20 frames later. A clip is drawn so that the single-reference baseline and the
memory-bank recipes differ where they should, across an occlusion: it holds the event's last
frame before the gap and its first frame after it, inside a window of ``span + 0..7`` frames
(at least T), and T - 2 further frames of that window drawn uniformly without replacement
(hidden frames included), sorted. All randomness comes from the ``numpy`` generator passed
in, so one seed gives the same clips to every recipe (the paired design).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from training.reid_study.cache import VideoCache

__all__ = ["CLIP_FRAMES", "sample_clip", "sample_step"]

CLIP_FRAMES = (8, 10)
"""Smallest and largest clip length T."""


def sample_clip(
    rng: np.random.Generator, num_frames: int, event: tuple[int, int], lengths: tuple[int, int]
) -> np.ndarray:
    """Sorted frame indices of one clip around an event hidden for frames ``start..end-1``.

    Args:
        rng: the clip sampler's generator.
        num_frames: frames in the video.
        event: (start, end) of the gap; frames ``start - 1`` and ``end`` are always in the clip.
        lengths: (smallest, largest) T.
    """
    start, end = event
    t_len = int(rng.integers(lengths[0], lengths[1] + 1))
    before, after = max(start - 1, 0), min(end, num_frames - 1)
    span = after - before + 1
    width = min(num_frames, max(t_len, span + int(rng.integers(0, 8))))
    lo, hi = max(0, after - width + 1), min(before, num_frames - width)
    first = int(rng.integers(lo, hi + 1))
    others = [f for f in range(first, first + width) if f not in (before, after)]
    picked = rng.choice(others, size=min(t_len - 2, len(others)), replace=False)
    return np.sort(np.concatenate([[before, after], picked]).astype(np.int64))


def sample_step(
    rng: np.random.Generator,
    caches: Sequence[VideoCache],
    clips: int,
    lengths: tuple[int, int] = CLIP_FRAMES,
) -> list[tuple[int, np.ndarray]]:
    """``clips`` (video index, frames) pairs: a uniform video, one of its events, a clip."""
    out = []
    for _ in range(clips):
        v = int(rng.integers(len(caches)))
        cache = caches[v]
        _, _, start, end = cache.events[int(rng.integers(len(cache.events)))]
        out.append((v, sample_clip(rng, cache.feats.shape[0], (start, end), lengths)))
    return out
