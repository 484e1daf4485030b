"""``service.engine.Engine`` on the tiny random-weight model: batches across sessions, the
order of outcomes and of each session's frames, and errors confined to their item."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

from model.tracker import TrackState, init_state
from service.engine import Engine, FrameItem, FrameOutcome
from service.served import RANDOM_CHECKPOINT, ServedModel, load_served_model


@pytest.fixture(scope="module")
def served() -> ServedModel:
    return load_served_model(RANDOM_CHECKPOINT)


def _state(served: ServedModel, embed_dim: int | None = None) -> TrackState:
    cfg = served.model_cfg
    return init_state(embed_dim or cfg.embed_dim, cfg.num_classes, served.tracker_cfg.cache_size)


def _item(served: ServedModel, frame: np.ndarray, state: TrackState | None = None) -> FrameItem:
    return FrameItem(frame, state or _state(served), served.tracker_cfg)


def _same(a: FrameOutcome, b: FrameOutcome) -> bool:
    """Same tracks, embeddings (up to float rounding: forwards of the same inputs may pick
    other kernels) and instances (track ids, classes, mask sizes)."""
    assert a.state is not None and b.state is not None
    same_state = a.state.track_ids.tolist() == b.state.track_ids.tolist() and torch.allclose(
        a.state.sg_embed, b.state.sg_embed, atol=1e-4
    )
    ids = [(i.track_id, i.label, i.rle["size"]) for i in a.instances]
    return same_state and ids == [(i.track_id, i.label, i.rle["size"]) for i in b.instances]


class _CountingForward:
    """Wraps ``ServedModel.forward``: records the batch size of every call; ``fail`` decides
    from the pixels whether a call raises."""

    def __init__(self, served: ServedModel, fail: Callable[[torch.Tensor], bool] | None = None):
        self.real = served.forward
        self.fail = fail
        self.sizes: list[int] = []

    def __call__(self, pixels: torch.Tensor) -> Any:
        self.sizes.append(int(pixels.shape[0]))
        if self.fail is not None and self.fail(pixels):
            raise RuntimeError("forward failed")
        return self.real(pixels)


def test_frames_of_several_sessions_share_one_forward(
    served: ServedModel, video_frames: list[np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    items = [_item(served, f) for f in video_frames[:3]]
    alone = [Engine(served).run_batch([item])[0] for item in items]
    forward = _CountingForward(served)
    monkeypatch.setattr(served, "forward", forward)
    outcomes = Engine(served).run_batch(items)
    assert forward.sizes == [3]
    assert [o.batch_size for o in outcomes] == [3, 3, 3] and all(o.error is None for o in outcomes)
    assert len({o.model_ms for o in outcomes}) == 1  # one timing for the whole batch
    for got, want in zip(outcomes, alone, strict=True):
        # a batch changes logits by float rounding only: same ids and classes
        assert got.state is not None and want.state is not None
        assert [(i.track_id, i.label) for i in got.instances] == [
            (i.track_id, i.label) for i in want.instances
        ]
        assert got.state.frame_index == want.state.frame_index == 1


def test_outcomes_follow_item_order_across_input_sizes(
    served: ServedModel, video_frames: list[np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Frames of different padded sizes run as separate forwards; outcomes stay in item
    order, each one its own item's."""
    wide = np.ascontiguousarray(np.concatenate([video_frames[2]] * 2, axis=1))  # 72x192
    items = [_item(served, video_frames[0]), _item(served, wide), _item(served, video_frames[1])]
    pair = Engine(served).run_batch([items[0], items[2]])
    single = Engine(served).run_batch([items[1]])[0]
    forward = _CountingForward(served)
    monkeypatch.setattr(served, "forward", forward)
    outcomes = Engine(served).run_batch(items)
    assert sorted(forward.sizes) == [1, 2]
    assert [o.batch_size for o in outcomes] == [2, 1, 2]
    assert _same(outcomes[0], pair[0]) and _same(outcomes[1], single)
    assert _same(outcomes[2], pair[1])
    assert not _same(outcomes[0], pair[1])  # the frames differ: a mix-up would show
    assert [i.rle["size"] for i in outcomes[1].instances] == [[72, 192]] * len(
        outcomes[1].instances
    )


def test_each_session_advances_in_order_whatever_its_batch_mates(
    served: ServedModel, video_frames: list[np.ndarray]
) -> None:
    """Two sessions batched frame by frame end exactly where each ends run on its own."""
    engine = Engine(served)
    a_frames, b_frames = video_frames[:3], video_frames[4:7]
    solo = _state(served)
    for f in a_frames:
        out = engine.run_batch([_item(served, f, solo)])[0]
        assert out.state is not None
        solo = out.state
    a, b = _state(served), _state(served)
    for fa, fb in zip(a_frames, b_frames, strict=True):
        out_a, out_b = engine.run_batch([_item(served, fa, a), _item(served, fb, b)])
        assert out_a.state is not None and out_b.state is not None
        a, b = out_a.state, out_b.state
    assert a.frame_index == b.frame_index == len(a_frames)
    assert a.track_ids.tolist() == solo.track_ids.tolist()
    assert torch.allclose(a.sg_embed, solo.sg_embed, atol=1e-4)


def test_a_bad_frame_or_state_fails_only_its_item(
    served: ServedModel, video_frames: list[np.ndarray]
) -> None:
    items = [
        _item(served, video_frames[0]),
        _item(served, np.zeros((72, 96), np.uint8)),  # not HxWx3: preprocessing fails
        _item(served, video_frames[1], _state(served, served.model_cfg.embed_dim + 1)),  # tracker
        _item(served, video_frames[2]),
    ]
    outcomes = Engine(served).run_batch(items)
    assert len(outcomes) == 4
    assert outcomes[0].error is None and outcomes[3].error is None
    assert isinstance(outcomes[1].error, ValueError) and outcomes[1].state is None
    assert outcomes[1].batch_size == 1
    assert outcomes[2].error is not None and outcomes[2].state is None
    assert outcomes[2].batch_size == 3  # its frame ran in the shared forward
    assert outcomes[0].state is not None and outcomes[0].state.frame_index == 1


def test_a_failing_batched_forward_is_retried_frame_by_frame(
    served: ServedModel, video_frames: list[np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    forward = _CountingForward(served, fail=lambda pixels: pixels.shape[0] > 1)
    monkeypatch.setattr(served, "forward", forward)
    outcomes = Engine(served).run_batch([_item(served, f) for f in video_frames[:3]])
    assert forward.sizes == [3, 1, 1, 1]
    assert all(o.error is None and o.batch_size == 1 for o in outcomes)


def test_a_forward_failing_on_one_frame_fails_that_frame_only(
    served: ServedModel, video_frames: list[np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    black = np.zeros_like(video_frames[0])

    def dark_corner(pixels: torch.Tensor) -> bool:  # normalised black is about -2
        return bool((pixels[:, :, :8, :8] < -1.7).flatten(1).all(dim=1).any())

    forward = _CountingForward(served, fail=dark_corner)
    monkeypatch.setattr(served, "forward", forward)
    items = [_item(served, video_frames[0]), _item(served, black), _item(served, video_frames[1])]
    outcomes = Engine(served).run_batch(items)
    assert [o.error is None for o in outcomes] == [True, False, True]
    assert "forward failed" in str(outcomes[1].error)
    assert outcomes[1].state is None and outcomes[1].instances == []
