"""Per-video counts of a head, their overall IDF1 / AssA, and the study's intervals.

A head's score on a set is the overall IDF1 / AssA of ``training.assoc_metrics`` (counts
summed over videos; AssA per alpha TP-weighted, then averaged over alphas). Keeping each
video's counts (:func:`video_counts`) lets the overall numbers be recomputed for any
re-weighting of the videos, which the bootstrap needs.

Intervals (all 95 %):

* :func:`t_interval`: over the training seeds: the mean of the per-seed overall scores with a
  Student-t interval (n - 1 degrees of freedom); for a paired difference, over the per-seed
  differences (the same seed = the same clips and initial head in both recipes). It measures
  how much the result depends on the training seed, on this one evaluation set.
* :func:`two_way_bootstrap`: resamples the seeds *and* the videos (with replacement,
  independently) and recomputes the mean over resampled seeds of the overall score on the
  resampled videos; percentile interval. It also counts the chance of the evaluation set, so
  it is the wider of the two.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats
from torch import nn

from model.config import ModelConfig, TrackerConfig
from training.assoc_metrics import HOTA_ALPHAS
from training.reid_study.cache import VideoCache
from training.reid_study.evaluate import score_head

__all__ = [
    "detectable_difference",
    "overall",
    "t_interval",
    "two_way_bootstrap",
    "video_counts",
]

_A = len(HOTA_ALPHAS)


def video_counts(
    head: nn.Module, caches: Sequence[VideoCache], model_cfg: ModelConfig, trk_cfg: TrackerConfig
) -> list[list[float]]:
    """Per video: ``[IDTP, IDFP, IDFN, AssA_alpha * TP_alpha (A values), TP_alpha (A)]``."""
    rows = []
    for s in score_head(head, caches, model_cfg, trk_cfg):
        weighted = (s.assa_alpha * s.hota_tp).tolist()
        rows.append([s.idtp, s.idfp, s.idfn, *weighted, *s.hota_tp.astype(float).tolist()])
    return rows


def overall(counts: np.ndarray, weights: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
    """Overall (IDF1, AssA) from per-video counts.

    Args:
        counts: [..., V, 3 + 2A] per-video counts (:func:`video_counts`).
        weights: [B, V] video weights (bootstrap multiplicities), or None (each video once).

    Returns:
        (idf1, assa) of shape [...] (no weights) or [B, ...].
    """
    summed = counts.sum(-2) if weights is None else np.einsum("bv,...vk->b...k", weights, counts)
    idtp, idfp, idfn = summed[..., 0], summed[..., 1], summed[..., 2]
    idf1 = idtp / np.maximum(1.0, idtp + 0.5 * idfp + 0.5 * idfn)
    weighted, tp = summed[..., 3 : 3 + _A], summed[..., 3 + _A :]
    assa = (weighted / np.maximum(1.0, tp)).mean(-1)
    return idf1, assa


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """(mean, lo, hi): Student-t interval of the mean of ``values`` (n - 1 df)."""
    x = np.asarray(values, dtype=np.float64)
    mean = float(x.mean())
    if len(x) < 2:
        return mean, mean, mean
    half = float(stats.t.ppf(0.5 + level / 2, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x)))
    return mean, mean - half, mean + half


def detectable_difference(diffs: Sequence[float], alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest true mean paired difference a two-sided paired t-test at ``alpha`` detects
    with probability ``power``, given the observed SD of the differences:
    ``(t_{1-alpha/2} + t_{power}) * SD / sqrt(n)`` (n - 1 df; the usual approximation)."""
    x = np.asarray(diffs, dtype=np.float64)
    df = len(x) - 1
    factor = stats.t.ppf(1 - alpha / 2, df) + stats.t.ppf(power, df)
    return float(factor * x.std(ddof=1) / np.sqrt(len(x)))


def two_way_bootstrap(
    counts: dict[str, np.ndarray],
    pairs: Sequence[tuple[str, str]],
    replicates: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[dict[str, dict[str, tuple[float, float]]], dict[tuple[str, str], tuple[float, float]]]:
    """Percentile intervals over seeds x videos, for each variant and paired IDF1 difference.

    Args:
        counts: per variant, [S, V, 3 + 2A] counts of its S seeds on the same V videos
            (variants with equal S share the seed order, so seed i is paired across them).
        pairs: (a, b) variants with equal S whose IDF1 difference a - b is wanted.
        replicates: bootstrap replicates.
        seed: the bootstrap's generator seed.

    Returns:
        ({variant: {"idf1": (lo, hi), "assa": (lo, hi)}}, {(a, b): (lo, hi)}).
    """
    rng = np.random.default_rng(seed)
    n_videos = next(iter(counts.values())).shape[1]
    video_w = rng.multinomial(n_videos, np.full(n_videos, 1 / n_videos), size=replicates)
    seed_w: dict[int, np.ndarray] = {}  # one seed resampling per seed count: shared by pairs
    for n in sorted({c.shape[0] for c in counts.values()}):
        seed_w[n] = rng.multinomial(n, np.full(n, 1 / n), size=replicates) / n
    q = [(1 - level) / 2 * 100, (1 + level) / 2 * 100]
    idf1_reps: dict[str, np.ndarray] = {}
    out: dict[str, dict[str, tuple[float, float]]] = {}
    for name, c in counts.items():
        idf1, assa = overall(c, video_w.astype(np.float64))  # [B, S]
        w = seed_w[c.shape[0]]
        idf1_reps[name] = (idf1 * w).sum(1)
        lo_i, hi_i = np.percentile(idf1_reps[name], q)
        lo_a, hi_a = np.percentile((assa * w).sum(1), q)
        out[name] = {"idf1": (float(lo_i), float(hi_i)), "assa": (float(lo_a), float(hi_a))}
    diffs = {}
    for a, b in pairs:
        lo, hi = np.percentile(idf1_reps[a] - idf1_reps[b], q)
        diffs[(a, b)] = (float(lo), float(hi))
    return out, diffs
