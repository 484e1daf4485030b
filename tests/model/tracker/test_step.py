"""``track_step`` behaviour on synthetic detections: ids, new tracks, dead tracks, purity."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from model.config import TrackerConfig
from model.structures import Detections
from model.tracker import codec, memory
from model.tracker.state import TrackState, check_state, init_state
from model.tracker.step import track_step

NUM_LOGITS = 4  # 3 classes + no-object


def _dets(embeds: torch.Tensor, scores: list[float]) -> Detections:
    n = embeds.shape[0]
    return Detections(
        query_indices=torch.arange(n),
        scores=torch.tensor(scores),
        logits=torch.randn(n, NUM_LOGITS),
        mask_logits=torch.zeros(n, 4, 4),
        embeds=embeds,
    )


def _prototypes(n: int, dim: int = 32, scale: float = 8.0) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(dim, dim))
    return scale * q[:n]


def test_first_frame_spawns_above_init_threshold() -> None:
    state = init_state(32, NUM_LOGITS - 1)
    det = _dets(_prototypes(3), [0.9, 0.5, 0.005])
    state, a = track_step(state, det, TrackerConfig())
    assert a.track_ids.tolist() == [0, 1, -1]
    assert a.is_new.tolist() == [True, True, False]
    assert a.slots.tolist() == [0, 1, -1]
    assert state.frame_index == 1 and state.next_track_id == 2
    check_state(state)


def test_ids_persist_and_new_objects_get_new_ids() -> None:
    torch.manual_seed(0)
    protos = _prototypes(3)
    cfg = TrackerConfig()
    state = init_state(32, NUM_LOGITS - 1)
    state, a = track_step(state, _dets(protos[:2], [0.9, 0.8]), cfg)
    for _ in range(3):
        noisy = protos + 0.3 * torch.randn_like(protos)
        # The score order of the known objects changes; ids follow the embeddings. The new
        # object comes last: first, it could take a bi-softmax "steal" (tracker case 7).
        state, a = track_step(state, _dets(noisy[[1, 0, 2]], [0.95, 0.9, 0.8]), cfg)
    assert a.track_ids.tolist() == [1, 0, 2]
    assert state.track_ids[a.slots].tolist() == a.track_ids.tolist()
    assert state.exist_frames.tolist() == [4, 4, 3]


def test_empty_bank_after_all_tracks_died_starts_new_tracks() -> None:
    cfg = TrackerConfig()
    state = init_state(32, NUM_LOGITS - 1)
    protos = _prototypes(2)
    state, _ = track_step(state, _dets(protos[:1], [0.9]), cfg)
    empty = _dets(protos[:1], [0.9])
    empty = Detections(
        *(
            t[:0]
            for t in (
                empty.query_indices,
                empty.scores,
                empty.logits,
                empty.mask_logits,
                empty.embeds,
            )
        )
    )
    for _ in range(cfg.num_dead_frames + 1):
        state, a = track_step(state, empty, cfg)
    assert state.num_tracks == 0 and state.next_track_id == 1
    state, a = track_step(state, _dets(protos, [0.9, 0.7]), cfg)
    assert a.track_ids.tolist() == [1, 2]


def test_dead_track_is_pruned_and_slots_remapped() -> None:
    cfg = TrackerConfig()
    protos = _prototypes(2)
    state = init_state(32, NUM_LOGITS - 1)
    state, _ = track_step(state, _dets(protos, [0.9, 0.8]), cfg)
    for f in range(1, 22):
        state, a = track_step(state, _dets(protos[1:], [0.8]), cfg)
        assert state.track_ids.tolist() == ([0, 1] if f <= 20 else [1])
    assert a.slots.tolist() == [0] and a.track_ids.tolist() == [1]
    # The dead object comes back with a new id (it scores lower, so no single-track steal).
    state, a = track_step(state, _dets(protos[[1, 0]], [0.9, 0.8]), cfg)
    assert a.track_ids.tolist() == [1, 2]


def test_step_does_not_modify_its_input_state() -> None:
    cfg = TrackerConfig()
    protos = _prototypes(3)
    state = init_state(32, NUM_LOGITS - 1)
    state, _ = track_step(state, _dets(protos[:2], [0.9, 0.8]), cfg)
    snapshot = {k: v.clone() for k, v in state.tensors().items()}
    new, _ = track_step(state, _dets(protos, [0.9, 0.8, 0.7]), cfg)
    for k, v in state.tensors().items():
        torch.testing.assert_close(v, snapshot[k], rtol=0, atol=0, equal_nan=True, msg=k)
    assert new.num_tracks == 3 and state.num_tracks == 2


def _long_stream(frames: int) -> tuple[TrackState, list[int], int]:
    torch.manual_seed(0)
    cfg = TrackerConfig()
    protos = _prototypes(4)
    state = init_state(32, NUM_LOGITS - 1)
    first_ids: list[int] = []
    max_bytes = 0
    for f in range(frames):
        clutter = 6.0 * torch.nn.functional.normalize(torch.randn(1, 32), dim=1)
        embeds = torch.cat([protos + 0.2 * torch.randn_like(protos), clutter])
        state, a = track_step(state, _dets(embeds, [0.9, 0.85, 0.8, 0.75, 0.5]), cfg)
        if f == 0:
            first_ids = a.track_ids[:4].tolist()
        assert a.track_ids[:4].tolist() == first_ids
        if f % 100 == 0:
            max_bytes = max(max_bytes, len(codec.dumps(state)))
    return state, first_ids, max_bytes


@pytest.fixture
def single_thread() -> Iterator[None]:
    """Tiny tensors: intra-op threads only add wake-up cost (10x slower on a busy 2-core box)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.usefixtures("single_thread")
def test_long_stream_state_stays_bounded() -> None:
    state, ids, max_bytes = _long_stream(2000)
    check_state(state)
    # 4 persistent tracks + clutter tracks, each alive <= num_dead_frames + 1 frames
    assert state.num_tracks <= 4 + TrackerConfig().num_dead_frames + 1
    assert state.frame_index == 2000 and ids == [0, 1, 2, 3]
    assert max_bytes < 64 * 1024
    assert memory.entry_logits(state, "mean").shape == (state.num_tracks, NUM_LOGITS)


def test_max_tracks_caps_state_and_keeps_active_ids() -> None:
    torch.manual_seed(2)
    cfg = TrackerConfig(max_tracks=6)
    protos = _prototypes(3)
    state = init_state(32, NUM_LOGITS - 1)
    for _ in range(40):
        clutter = 6.0 * torch.nn.functional.normalize(torch.randn(2, 32), dim=1)
        embeds = torch.cat([protos + 0.2 * torch.randn_like(protos), clutter])
        state, a = track_step(state, _dets(embeds, [0.9, 0.85, 0.8, 0.3, 0.2]), cfg)
        assert state.num_tracks <= 6
        assert a.track_ids[:3].tolist() == [0, 1, 2]
        assert (a.slots[a.kept] >= 0).all()
        assert state.track_ids[a.slots[a.kept]].tolist() == a.track_ids[a.kept].tolist()


def _blob(y: int, x: int, size: int = 6, hw: int = 32) -> torch.Tensor:
    m = torch.full((hw, hw), -5.0)
    m[y : y + size, x : x + size] = 5.0
    return m


def test_box_cue_tells_look_alikes_apart() -> None:
    """Two instances with the same embedding: only the box cue keeps their ids apart."""
    torch.manual_seed(0)
    same = _prototypes(1).repeat(2, 1)

    def frame(left_first: bool, dx: int) -> Detections:
        blobs = [_blob(4, 2 + dx), _blob(20, 22 - dx)]  # "left" object drifts right
        order = [0, 1] if left_first else [1, 0]
        return Detections(
            query_indices=torch.arange(2),
            scores=torch.tensor([0.9, 0.8]),
            logits=torch.randn(2, NUM_LOGITS),
            mask_logits=torch.stack([blobs[i] for i in order]),
            embeds=same,
        )

    def run(cfg: TrackerConfig) -> list[list[int]]:
        state = init_state(32, NUM_LOGITS - 1)
        ids = []
        # the score order flips every frame; the objects themselves move one pixel a frame
        for t in range(6):
            state, a = track_step(state, frame(t % 2 == 0, t), cfg)
            order = [0, 1] if t % 2 == 0 else [1, 0]
            ids.append([int(a.track_ids[order.index(k)]) for k in (0, 1)])  # left, right
        return ids

    with_boxes = run(TrackerConfig(box_iou_weight=0.5))
    assert all(frame_ids == [0, 1] for frame_ids in with_boxes)
    without = run(TrackerConfig())
    assert any(frame_ids != [0, 1] for frame_ids in without)  # embeddings alone swap them


def test_last_box_is_kept_only_with_the_box_cue() -> None:
    dets = Detections(
        query_indices=torch.arange(1),
        scores=torch.tensor([0.9]),
        logits=torch.randn(1, NUM_LOGITS),
        mask_logits=_blob(3, 5)[None],
        embeds=_prototypes(1),
    )
    state, _ = track_step(init_state(32, NUM_LOGITS - 1), dets, TrackerConfig(box_iou_weight=0.3))
    assert state.last_box.tolist() == [[5.0, 3.0, 11.0, 9.0]]
    check_state(state)
    plain, _ = track_step(init_state(32, NUM_LOGITS - 1), dets, TrackerConfig())
    assert torch.isnan(plain.last_box).all()
