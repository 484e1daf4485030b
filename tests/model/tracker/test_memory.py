"""Memory-bank rules of ``model.tracker.memory`` against a plain list-based oracle."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from model.config import TrackerConfig
from model.tracker import memory
from model.tracker.state import check_state, init_state


class OracleTracklet:
    """Spec 4.1 written the obvious way: unbounded lists trimmed to the last 10."""

    def __init__(self) -> None:
        self.embeds: list[torch.Tensor] = []
        self.sg = torch.zeros(0)
        self.last = torch.zeros(0)
        self.exist_frames = 0

    def update(self, e: torch.Tensor) -> None:
        self.embeds.append(e)
        if self.exist_frames == 0:
            self.sg, self.last = e, e
        else:
            self.last = 0.25 * self.last + 0.75 * e
            prev = self.embeds[:-1]
            sims = [torch.cosine_similarity(p, e, dim=0) for p in prev]
            beta = max(0.0, float(sum(sims) / len(prev)))
            self.sg = (1 - beta) * self.sg + beta * e
        self.exist_frames += 1
        if len(self.embeds) > 10:
            self.embeds.pop(0)


def test_write_matches_oracle_beyond_cache_window() -> None:
    torch.manual_seed(0)
    base = torch.randn(2, 16)
    state = init_state(16, 3)
    state, slots = memory.spawn(state, 2)
    oracles = [OracleTracklet(), OracleTracklet()]
    for f in range(25):
        e = base + 0.8 * torch.randn(2, 16)
        state = memory.write(state, slots, e, torch.rand(2), f)
        for o, row in zip(oracles, e, strict=True):
            o.update(row)
        state = dataclasses.replace(state, frame_index=f + 1)
        check_state(state)
    for i, o in enumerate(oracles):
        torch.testing.assert_close(state.sg_embed[i], o.sg, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(state.momentum_embed[i], o.last, atol=1e-5, rtol=1e-5)
        cache, valid = memory.ordered_cache(state)
        assert valid[i].all()
        torch.testing.assert_close(cache[i], torch.stack(o.embeds))
        assert int(state.exist_frames[i]) == o.exist_frames == 25
    assert state.cache_len.tolist() == [10, 10]


def test_negative_similarity_keeps_embedding() -> None:
    state, slots = memory.spawn(init_state(4, 2), 1)
    e = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    state = memory.write(state, slots, e, torch.ones(1), 0)
    state = memory.write(state, slots, -e, torch.ones(1), 1)
    torch.testing.assert_close(state.sg_embed, e)  # beta = max(0, -1) = 0
    torch.testing.assert_close(memory.read_embeddings(state, "last")[0], -e[0])


def test_read_embeddings_variants() -> None:
    state, slots = memory.spawn(init_state(4, 2), 1)
    for f, v in enumerate([1.0, 3.0]):
        state = memory.write(state, slots, torch.full((1, 4), v), torch.ones(1), f)
    torch.testing.assert_close(memory.read_embeddings(state, "last"), torch.full((1, 4), 3.0))
    torch.testing.assert_close(memory.read_embeddings(state, "momentum"), torch.full((1, 4), 2.5))
    # cos = 1 -> beta = 1 -> sg = newest
    torch.testing.assert_close(
        memory.read_embeddings(state, "similarity_guided"), torch.full((1, 4), 3.0)
    )
    weighted = memory.read_embeddings(state, "temporally_weighted")
    torch.testing.assert_close(weighted, torch.full((1, 4), (1 + 2 * 3) / 3))


def test_write_is_pure_and_differentiable() -> None:
    torch.manual_seed(1)
    state, slots = memory.spawn(init_state(8, 2), 3)
    before = {k: v.clone() for k, v in state.tensors().items()}
    e0 = torch.randn(3, 8, requires_grad=True)
    e1 = torch.randn(3, 8, requires_grad=True)
    s1 = memory.write(state, slots, e0, torch.ones(3), 0)
    s2 = memory.write(s1, slots[[2, 0]], e1[[2, 0]], torch.ones(2), 1)
    for k, v in state.tensors().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0, equal_nan=True, msg=k)
    loss = memory.read_embeddings(s2, "similarity_guided").square().sum()
    loss.backward()
    assert e0.grad is not None and e1.grad is not None
    assert e0.grad.abs().sum() > 0
    assert e1.grad[1].abs().sum() == 0  # row 1 of e1 was never written
    assert e1.grad[0].abs().sum() > 0


def test_write_with_grow_equals_spawn_then_write() -> None:
    # ``grow`` folds ``spawn`` into ``write`` (one copy of the cache): same state, same
    # gradients, and the input state is left alone.
    torch.manual_seed(2)
    state, slots = memory.spawn(init_state(8, 3, cache_size=4), 3)
    for f in range(6):  # fill past the cache depth, with one track skipping frames
        rows = slots if f % 2 else slots[:2]
        state = memory.write(state, rows, torch.randn(len(rows), 8), torch.rand(len(rows)), f)
    state = memory.record_entries(state, slots[:2], torch.randn(2, 4), 5, TrackerConfig())
    before = {k: v.clone() for k, v in state.tensors().items()}
    e = torch.randn(4, 8, requires_grad=True)
    scores = torch.rand(4)
    target = torch.tensor([4, 0, 3, 2])  # two new rows (3, 4) and two old ones
    grown = memory.write(state, target, e, scores, 6, grow=2)
    spawned, new_slots = memory.spawn(state, 2)
    assert new_slots.tolist() == [3, 4]
    e2 = e.detach().clone().requires_grad_(True)
    reference = memory.write(spawned, target, e2, scores, 6)
    assert grown.next_track_id == reference.next_track_id == 5
    for k, v in reference.tensors().items():
        got = getattr(grown, k)
        assert got.dtype == v.dtype, k
        torch.testing.assert_close(got, v, rtol=0, atol=0, equal_nan=True, msg=k)
    for k, v in state.tensors().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0, equal_nan=True, msg=k)
    grown.sg_embed.square().sum().backward()
    reference.sg_embed.square().sum().backward()
    assert e.grad is not None and e2.grad is not None
    torch.testing.assert_close(e.grad, e2.grad, rtol=0, atol=0)
    # nothing to write: grow alone is spawn
    only = memory.write(state, torch.zeros(0, dtype=torch.int64), e[:0], scores[:0], 6, grow=1)
    for k, v in memory.spawn(state, 1)[0].tensors().items():
        torch.testing.assert_close(getattr(only, k), v, rtol=0, atol=0, equal_nan=True, msg=k)


def test_with_tensors_rejects_unknown_fields() -> None:
    state = init_state(4, 2)
    assert state.with_tensors({}, frame_index=3).frame_index == 3
    with pytest.raises(TypeError, match="embed_cahce"):
        state.with_tensors({"embed_cahce": torch.zeros(0, 10, 4)})


def test_spawn_prune_keep_slot_order() -> None:
    state = init_state(4, 2)
    state, slots = memory.spawn(state, 3)
    assert slots.tolist() == [0, 1, 2] and state.track_ids.tolist() == [0, 1, 2]
    state = memory.write(state, slots, torch.randn(3, 4), torch.ones(3), 0)
    state = memory.write(state, slots[[0, 2]], torch.randn(2, 4), torch.ones(2), 5)
    state, new = memory.spawn(state, 1)
    assert new.tolist() == [3] and state.next_track_id == 4
    state = memory.write(state, new, torch.randn(1, 4), torch.ones(1), 6)
    pruned, keep = memory.prune(state, 21, num_dead_frames=20)
    assert keep.tolist() == [True, False, True, True]
    assert pruned.track_ids.tolist() == [0, 2, 3]
    assert pruned.last_seen.tolist() == [5, 5, 6]


def test_record_entries_noise_filter() -> None:
    cfg = TrackerConfig()
    state, slots = memory.spawn(init_state(4, 2), 2)
    logits = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    for f in range(11):
        hit = slots if f < 2 else slots[:1]  # track 1 seen in frames 0-1 only
        state = memory.record_entries(state, hit, logits[hit], f, cfg)
        if f == 8:
            assert state.entry_hits.tolist() == [9, 2]
    # removed after frame 9 (f > noise_frame_num, tail >= 2, hits < 3)
    assert state.entry_hits.tolist() == [11, 0]
    out = memory.entry_logits(state, "mean")
    torch.testing.assert_close(out[0], logits[0])
    assert torch.isnan(out[1]).all()
    state = memory.record_entries(state, slots[1:], torch.ones(1, 3), 11, cfg)
    assert state.entry_hits.tolist() == [11, 1]  # fresh entry, old history dropped
    torch.testing.assert_close(memory.entry_logits(state, "max")[1], torch.ones(3))


def test_prune_caps_live_tracks_by_recency() -> None:
    state, slots = memory.spawn(init_state(4, 2), 5)
    for f, rows in enumerate([[0, 1, 2, 3, 4], [3], [1], [4, 0]]):
        idx = slots[rows]
        state = memory.write(state, idx, torch.randn(len(rows), 4), torch.ones(len(rows)), f)
    # last_seen = [3, 2, 0, 1, 3]
    pruned, keep = memory.prune(state, 3, num_dead_frames=20, max_tracks=3)
    assert keep.tolist() == [True, True, False, False, True]
    assert pruned.track_ids.tolist() == [0, 1, 4]
    # tracks seen in the current frame are never evicted
    _, keep = memory.prune(state, 3, num_dead_frames=20, max_tracks=1)
    assert keep.tolist() == [True, False, False, False, True]
    _, keep = memory.prune(state, 22, num_dead_frames=20, max_tracks=1)
    assert keep.tolist() == [False, False, False, False, True]  # tie: older slot goes


def test_check_state_rejects_logits_recorded_without_an_entry() -> None:
    # record_entries relies on it: a row with no output entry has logit_sum 0, logit_max -inf
    state, _ = memory.spawn(init_state(4, 2), 2)
    state = memory.write(state, torch.arange(2), torch.randn(2, 4), torch.rand(2), 0)
    state = dataclasses.replace(state, frame_index=1)
    check_state(state)
    bad = dataclasses.replace(
        state, logit_sum=state.logit_sum.index_fill(0, torch.tensor([1]), 0.5)
    )
    with pytest.raises(ValueError, match="output entry"):
        check_state(bad)
    bad = dataclasses.replace(state, logit_max=torch.zeros_like(state.logit_max))
    with pytest.raises(ValueError, match="output entry"):
        check_state(bad)
