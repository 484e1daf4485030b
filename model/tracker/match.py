"""Detection-to-track similarity and assignment.

The reference is ``SimpleTracker.track`` (``ctvis/modeling/tracker/simple_tracker.py`` of
https://github.com/KainingYing/CTVIS): bi-softmax similarity (paper eq. 3, Ying et al., ICCV
2023, arXiv:2307.12616, whose printed form repeats one denominator) and greedy assignment.

Assignment is discrete, so it runs on a detached float32 NumPy copy: the greedy loop is
inherently sequential and NumPy's per-op overhead is ~10x lower than torch's on tiny arrays.
"""

from __future__ import annotations

import itertools
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from model.config import TrackerConfig


def similarity(
    det_embeds: torch.Tensor,
    track_embeds: torch.Tensor,
    metric: Literal["bisoftmax", "cosine"] = "bisoftmax",
) -> torch.Tensor:
    """Match scores between the N candidates of a frame and M live tracks.

    Args:
        det_embeds: NxD candidate embeddings (all candidates of the frame, unnormalised).
        track_embeds: MxD track embeddings from ``memory.read_embeddings``.
        metric: ``bisoftmax`` = mean of the row softmax (over tracks) and the column softmax
            (over all N candidates) of raw dot products; ``cosine`` = normalised dot products.

    Returns:
        NxM match scores.
    """
    if metric == "bisoftmax":
        sims = det_embeds @ track_embeds.t()
        return (sims.softmax(dim=1) + sims.softmax(dim=0)) / 2
    if metric == "cosine":
        return F.normalize(det_embeds, dim=1) @ F.normalize(track_embeds, dim=1).t()
    raise ValueError(f"unknown match metric {metric!r}")


def assign_greedy(
    match: np.ndarray,
    exist_frames: np.ndarray,
    threshold: float,
    frame_weight: bool = True,
) -> np.ndarray:
    """Official greedy assignment in candidate (descending score) order.

    For row i: if ``frame_weight`` and more than one entry exceeds ``threshold``, entries above
    it are multiplied by their track's ``exist_frames`` and all others by the mean
    ``exist_frames`` of the above-threshold tracks; the argmax (first on ties) and its weighted
    value decide. Otherwise the raw argmax. A match above the threshold claims the track and
    zeroes its column for every other row, which also changes later rows' weighting check.

    Args:
        match: NxM float32 match scores (not modified).
        exist_frames: M number of updates of each track.
        threshold: ``match_threshold``.
        frame_weight: reference ``FRAME_WEIGHT``.

    Returns:
        N int64 column (track slot) per row, -1 when unmatched.
    """
    n, m = match.shape
    out = np.full(n, -1, dtype=np.int64)
    if n == 0 or m == 0:
        return out
    scores = np.asarray(match, dtype=np.float32)
    weights = exist_frames.astype(np.float32)
    above_all = scores > threshold
    # Zeroing claimed columns only lowers values, so a row with no entry above the threshold
    # among unclaimed columns can never match, and a row with exactly one matches it (it is
    # the row's unique maximum). Only rows with several candidates need the weighting, which
    # runs on the row with claimed columns zeroed, exactly as the reference mutates it.
    if np.count_nonzero(above_all, axis=1).max() <= 1:
        # No row has two candidates: the weighting never applies and each column goes to the
        # first row (in candidate order) that has it above the threshold (argmax of a bool
        # column is its first True); later rows find it claimed and stay unmatched.
        won = np.flatnonzero(above_all.any(0))
        out[above_all.argmax(0)[won]] = won
        return out
    # The above-threshold columns of every row from one nonzero call (row-major, so grouped
    # by row and ascending within a row), instead of one flatnonzero per row.
    hit_rows, hit_cols = np.nonzero(above_all)
    bounds = [0, *(np.flatnonzero(np.diff(hit_rows)) + 1).tolist(), hit_rows.size]
    all_cols = hit_cols.tolist()
    claimed: set[int] = set()
    for lo, hi in itertools.pairwise(bounds):
        i = int(hit_rows[lo])
        cols = [j for j in all_cols[lo:hi] if j not in claimed]
        if not cols:
            continue
        if len(cols) == 1 or not frame_weight:
            j = cols[0] if len(cols) == 1 else int(_unclaimed_row(scores[i], claimed).argmax())
            out[i] = j
            claimed.add(j)
            continue
        row = _unclaimed_row(scores[i], claimed)
        above = row > threshold
        w_above = weights[above]
        weighted = row * np.float32(w_above.mean(dtype=np.float32))
        weighted[above] = row[above] * w_above
        j = int(weighted.argmax())
        if weighted[j] > threshold:
            out[i] = j
            claimed.add(j)
    return out


def _unclaimed_row(row: np.ndarray, claimed: set[int]) -> np.ndarray:
    """A copy of ``row`` with the claimed columns zeroed (the reference mutates its matrix)."""
    out = row.copy()
    if claimed:
        out[list(claimed)] = np.float32(0.0)
    return out


def assign_hungarian(match: np.ndarray, threshold: float) -> np.ndarray:
    """Maximum-total-score one-to-one assignment; pairs not above ``threshold`` are dropped.

    Args:
        match: NxM match scores.
        threshold: ``match_threshold``.

    Returns:
        N int64 column per row, -1 when unmatched.
    """
    out = np.full(match.shape[0], -1, dtype=np.int64)
    if match.size == 0:
        return out
    rows, cols = linear_sum_assignment(match, maximize=True)
    good = match[rows, cols] > threshold
    out[rows[good]] = cols[good]
    return out


def assign_columns(
    match: torch.Tensor, exist_frames: torch.Tensor, cfg: TrackerConfig
) -> np.ndarray:
    """Assign candidates to tracks with ``cfg.match_type``, as a NumPy array on the host.

    Args:
        match: NxM match scores from ``similarity`` (any device).
        exist_frames: M int64 number of updates of each track.
        cfg: tracker settings (``match_type``, ``match_threshold``, ``frame_weight``).

    Returns:
        N int64 column per candidate, -1 when unmatched.
    """
    scores = match.detach().to("cpu", torch.float32).numpy()
    if cfg.match_type == "greedy":
        frames = exist_frames.detach().cpu().numpy()
        return assign_greedy(scores, frames, cfg.match_threshold, cfg.frame_weight)
    if cfg.match_type == "hungarian":
        return assign_hungarian(scores, cfg.match_threshold)
    raise ValueError(f"unknown match_type {cfg.match_type!r}")


def assign(match: torch.Tensor, exist_frames: torch.Tensor, cfg: TrackerConfig) -> torch.Tensor:
    """``assign_columns`` as an int64 tensor on ``match``'s device (N, -1 when unmatched)."""
    return torch.from_numpy(assign_columns(match, exist_frames, cfg)).to(match.device)
