"""Similarity and assignment rules (paper eq. 3; official ``simple_tracker.py``)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from model.config import TrackerConfig
from model.tracker.match import assign, assign_greedy, assign_hungarian, similarity


def test_bisoftmax_is_mean_of_row_and_column_softmax() -> None:
    torch.manual_seed(0)
    d, t = torch.randn(5, 8), torch.randn(3, 8)
    s = d @ t.t()
    expected = 0.5 * (s.softmax(1) + s.softmax(0))
    torch.testing.assert_close(similarity(d, t, "bisoftmax"), expected)
    cos = similarity(d, t, "cosine")
    torch.testing.assert_close(cos[1, 2], torch.cosine_similarity(d[1], t[2], dim=0))


def test_frame_weight_prefers_older_track() -> None:
    match = np.array([[0.38, 0.62]], dtype=np.float32)
    exist = np.array([5, 1])
    assert assign_greedy(match, exist, 0.3, frame_weight=True).tolist() == [0]
    assert assign_greedy(match, exist, 0.3, frame_weight=False).tolist() == [1]


def test_single_above_threshold_uses_raw_value() -> None:
    # Only one entry above thr: no weighting, so the 0.29 * 100 entry cannot win.
    match = np.array([[0.29, 0.31]], dtype=np.float32)
    assert assign_greedy(match, np.array([100, 1]), 0.3).tolist() == [1]


def test_weighting_below_threshold_entries_use_mean() -> None:
    # Above: cols 1, 2 (weights 1, 3 -> mean 2); col 0 (0.29) is weighted by 2 -> 0.58,
    # above col 1's 0.35 but below col 2's 0.36 * 3.
    match = np.array([[0.29, 0.35, 0.36]], dtype=np.float32)
    assert assign_greedy(match, np.array([50, 1, 3]), 0.3).tolist() == [2]


def test_column_zeroing_changes_later_rows_weighting() -> None:
    # Row 0 takes track 0. Row 1 then has only one entry above thr (track 1), so it is not
    # weighted and its raw max (track 1) is used even though track 2 is much older.
    match = np.array([[0.9, 0.1, 0.0], [0.5, 0.4, 0.1]], dtype=np.float32)
    exist = np.array([1, 1, 100])
    assert assign_greedy(match, exist, 0.3).tolist() == [0, 1]
    original = match.copy()
    assign_greedy(match, exist, 0.3)
    np.testing.assert_array_equal(match, original)  # input not modified


def test_unmatched_when_not_above_threshold() -> None:
    match = np.array([[0.3, 0.2], [0.9, 0.1], [0.8, 0.05]], dtype=np.float32)
    assert assign_greedy(match, np.array([1, 1]), 0.3).tolist() == [-1, 0, -1]


def test_hungarian_maximises_total() -> None:
    match = np.array([[0.9, 0.8], [0.85, 0.1]], dtype=np.float32)
    assert assign_hungarian(match, 0.3).tolist() == [1, 0]
    assert assign_greedy(match, np.array([1, 1]), 0.3, frame_weight=False).tolist() == [0, -1]
    cfg = dataclasses.replace(TrackerConfig(), match_type="hungarian", match_threshold=0.85)
    assert assign(torch.from_numpy(match), torch.ones(2, dtype=torch.int64), cfg).tolist() == [
        -1,
        -1,
    ]


def _reference_greedy(
    match: np.ndarray, exist_frames: np.ndarray, threshold: float, frame_weight: bool
) -> np.ndarray:
    """Line-by-line transcription of the official loop (column zeroing in place)."""
    scores = np.array(match, dtype=np.float32, copy=True)
    weights = exist_frames.astype(np.float32)
    out = np.full(scores.shape[0], -1, dtype=np.int64)
    for i in range(scores.shape[0]):
        row = scores[i]
        above = row > threshold
        if frame_weight and np.count_nonzero(above) > 1:
            w_above = weights[above]
            weighted = row * np.float32(w_above.mean(dtype=np.float32))
            weighted[above] = row[above] * w_above
            j = int(weighted.argmax())
            conf = weighted[j]
        else:
            j = int(row.argmax())
            conf = row[j]
        if conf > threshold:
            out[i] = j
            scores[:, j] = 0.0
    return out


@pytest.mark.parametrize("frame_weight", [True, False])
def test_fast_greedy_equals_the_reference_loop(frame_weight: bool) -> None:
    rng = np.random.default_rng(0)
    for trial in range(300):
        n, m = int(rng.integers(1, 30)), int(rng.integers(1, 30))
        match = rng.random((n, m), dtype=np.float32) ** float(rng.uniform(0.5, 4))
        if trial % 3 == 0:  # many ties and near-threshold values
            match = np.round(match * 4) / 4
        frames = rng.integers(1, 60, size=m)
        got = assign_greedy(match, frames, 0.3, frame_weight)
        want = _reference_greedy(match, frames, 0.3, frame_weight)
        np.testing.assert_array_equal(got, want, err_msg=f"trial {trial}")


def test_one_candidate_per_row_fast_path_equals_the_reference_loop() -> None:
    # Sparse, peaked matrices (as bi-softmax gives): no row has two entries above the
    # threshold, but columns are contested by several rows; that is the vectorised path.
    rng = np.random.default_rng(1)
    fast_cases = 0
    for trial in range(300):
        n, m = int(rng.integers(1, 40)), int(rng.integers(1, 40))
        match = 0.3 * rng.random((n, m), dtype=np.float32)  # all at or below the threshold
        peaked = np.flatnonzero(rng.random(n) < 0.7)
        match[peaked, rng.integers(0, m, size=peaked.size)] = rng.uniform(0.3, 1.0, peaked.size)
        frames = rng.integers(1, 60, size=m)
        hits = (match > 0.3).sum(1)
        fast_cases += int(hits.max() <= 1 and hits.sum() > 1)
        for weight in (True, False):
            got = assign_greedy(match, frames, 0.3, weight)
            want = _reference_greedy(match, frames, 0.3, weight)
            np.testing.assert_array_equal(got, want, err_msg=f"trial {trial}")
    assert fast_cases > 100
