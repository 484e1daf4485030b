"""State deltas: successive tracker states rebuilt bit for bit from their deltas."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from model.config import TrackerConfig
from model.structures import Detections
from model.tracker import codec
from model.tracker.delta import apply_delta, dumps_delta, source_rows
from model.tracker.state import TRACK_FIELDS, TrackState, init_state
from model.tracker.step import track_step

NUM_LOGITS = 5


def _same(a: TrackState, b: TrackState) -> None:
    """Bitwise equality (NaN and -0.0 included), scalars too."""
    assert (a.frame_index, a.next_track_id) == (b.frame_index, b.next_track_id)
    for name in TRACK_FIELDS:
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and x.shape == y.shape, name
        if x.is_floating_point():
            x, y = x.view(torch.int32), y.view(torch.int32)
        assert torch.equal(x, y), name


def _run(frames: int, cfg: TrackerConfig, seed: int = 0) -> list[TrackState]:
    """States of a run where objects come and go (tracks start, die and are pruned)."""
    gen = torch.Generator().manual_seed(seed)
    protos = 8.0 * torch.linalg.qr(torch.randn(32, 32, generator=gen))[0][:12]
    state = init_state(32, NUM_LOGITS - 1, cfg.cache_size)
    states = [state]
    for t in range(frames):
        visible = [i for i in range(12) if (i + t // 7) % 3 != 0]  # a third off at a time
        embeds = protos[visible] + 0.3 * torch.randn(len(visible), 32, generator=gen)
        n = len(visible)
        dets = Detections(
            query_indices=torch.arange(n),
            scores=torch.rand(n, generator=gen) * 0.8 + 0.1,
            logits=torch.randn(n, NUM_LOGITS, generator=gen),
            mask_logits=torch.randn(n, 8, 8, generator=gen),
            embeds=embeds,
        )
        state, _ = track_step(state, dets, cfg)
        states.append(state)
    return states


@pytest.mark.parametrize("box", [0.0, 0.7])
def test_every_state_of_a_run_is_rebuilt_exactly(box: float) -> None:
    cfg = dataclasses.replace(TrackerConfig(), num_dead_frames=5, box_iou_weight=box)
    states = _run(60, cfg)
    folded = states[0]
    for prev, new in zip(states, states[1:], strict=False):
        data = dumps_delta(prev, new)
        rebuilt = apply_delta(prev, data)
        _same(rebuilt, new)
        folded = apply_delta(folded, data)  # a chain of deltas from the first state
    _same(folded, states[-1])


def test_deltas_are_a_fraction_of_the_state() -> None:
    states = _run(40, TrackerConfig())
    full = [len(codec.dumps(s, compact=False)) for s in states[20:]]
    delta = [len(dumps_delta(p, n)) for p, n in zip(states[19:], states[20:], strict=False)]
    assert sum(delta) < 0.5 * sum(full), (sum(delta), sum(full))


def test_a_delta_applies_only_to_its_base() -> None:
    states = _run(4, TrackerConfig())
    data = dumps_delta(states[2], states[3])
    with pytest.raises(ValueError, match="applies to frame 2"):
        apply_delta(states[1], data)


def test_source_rows_follow_track_ids() -> None:
    states = _run(30, dataclasses.replace(TrackerConfig(), num_dead_frames=2))
    pruned = started = 0
    for prev, new in zip(states, states[1:], strict=False):
        pruned += len(set(prev.track_ids.tolist()) - set(new.track_ids.tolist()))
        started += int((source_rows(prev, new) < 0).sum()) if prev.num_tracks else 0
        src = source_rows(prev, new)
        for row, origin in enumerate(src.tolist()):
            if origin >= 0:
                assert int(prev.track_ids[origin]) == int(new.track_ids[row])
            else:
                assert int(new.track_ids[row]) not in prev.track_ids.tolist()
    assert pruned > 0 and started > 0  # the run covers both ends of a track's life
