"""Consistent training: the training memory bank IS the inference memory bank.

``training.consistent`` replays a clip through ``model.tracker.memory``; these tests check that
its fused embeddings equal (a) an independent re-implementation of the official
``TrainTracklet`` and (b) the inference tracker (``track_step``) fed the same embeddings, and
pin the CTCLPlugin item rules and ablation switches.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from model.config import TrackerConfig
from model.structures import Detections
from model.tracker import init_state, track_step
from training.config import ClConfig
from training.consistent import build_clip_bank, cl_slot_to_query, clip_items
from training.matcher import MatchCosts

# 3 slots over 7 frames: slot 1 disappears for frames 2-3, slot 2 appears at frame 3
VALID = torch.tensor(
    [[1, 1, 0], [1, 1, 0], [1, 0, 0], [1, 0, 1], [1, 1, 1], [0, 1, 1], [1, 1, 1]], dtype=torch.bool
)
Q, D = 6, 16


def _clip(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """TxQxD embeddings (orthogonal identity prototypes + noise), TxS slot -> query (shuffled)."""
    g = torch.Generator().manual_seed(seed)
    t_len, s_len = VALID.shape
    protos = torch.linalg.qr(torch.randn(D, D, generator=g))[0][:s_len] * 3
    embeds = torch.randn(t_len, Q, D, generator=g)
    s2q = torch.stack([torch.randperm(Q, generator=g)[:s_len] for _ in range(t_len)])
    for t in range(t_len):
        for s in range(s_len):
            embeds[t, s2q[t, s]] = protos[s] + 0.5 * torch.randn(D, generator=g)
    return embeds, s2q


def _official_train_tracklets(embeds: torch.Tensor, s2q: torch.Tensor) -> list[list]:
    """Reference TrainTracklet.update (official ``ct_cl_plugin.py``): MA history per slot, as
    pure Python lists."""
    history: list[list] = []
    for s in range(VALID.shape[1]):
        raws: list[torch.Tensor] = []
        ma = None
        out = []
        for t in range(VALID.shape[0]):
            if VALID[t, s]:
                a = embeds[t, s2q[t, s]]
                if ma is None:
                    ma = a
                else:
                    cos = torch.stack([F.cosine_similarity(r, a, dim=0) for r in raws])
                    beta = max(0.0, float(cos.sum() / len(raws)))
                    ma = (1 - beta) * ma + beta * a
                raws.append(a)
            out.append(ma)
        history.append(out)
    return history


def test_training_bank_equals_official_train_tracklet() -> None:
    embeds, s2q = _clip()
    bank = build_clip_bank(embeds, s2q, VALID, ClConfig())
    reference = _official_train_tracklets(embeds, s2q)
    for s, per_frame in enumerate(reference):
        for t, ma in enumerate(per_frame):
            assert bool(bank.has_fused[t, s]) == (ma is not None)
            if ma is not None:
                torch.testing.assert_close(bank.fused[t, s], ma, atol=1e-5, rtol=1e-5)


def test_training_bank_equals_inference_tracker_memory() -> None:
    """Feed the same embeddings through ``track_step``: its fused embeddings are the bank's."""
    embeds, s2q = _clip(1)
    bank = build_clip_bank(embeds, s2q, VALID, ClConfig())
    # cosine matching: the bi-softmax would let a new instance take an absent one's id
    cfg = TrackerConfig(match_metric="cosine", match_threshold=0.5)
    state = init_state(D, num_classes=2, cache_size=cfg.cache_size)
    slot_of_track: dict[int, int] = {}
    for t in range(VALID.shape[0]):
        slots = torch.nonzero(VALID[t]).flatten()
        n = len(slots)
        scores = torch.linspace(0.9, 0.6, n) if n else torch.zeros(0)
        logits = torch.stack([torch.tensor([4.0, -4.0, -4.0])] * n) if n else torch.zeros(0, 3)
        det = Detections(
            query_indices=s2q[t, slots],
            scores=scores,
            logits=logits,
            mask_logits=torch.zeros(n, 4, 4),
            embeds=embeds[t, s2q[t, slots]],
        )
        state, assignment = track_step(state, det, cfg)
        for s, track_id in zip(slots.tolist(), assignment.track_ids.tolist(), strict=True):
            assert slot_of_track.setdefault(track_id, s) == s, "tracker lost an identity"
        for row, track_id in enumerate(state.track_ids.tolist()):
            s = slot_of_track[track_id]
            torch.testing.assert_close(state.sg_embed[row], bank.fused[t, s], atol=1e-6, rtol=1e-6)
    assert len(slot_of_track) == VALID.shape[1]


def test_default_items_follow_official_rules() -> None:
    embeds, s2q = _clip(2)
    torch.manual_seed(0)
    items = clip_items(embeds, s2q, VALID, ClConfig(ma_prob=1.0))
    # anchors: t >= 1 and valid, with an earlier or (slot 2 at t=3: none earlier, future guard
    # #None after 3 = 0 != 3 -> first later raw) positive
    expected = [(t, s) for t in range(1, 7) for s in range(3) if VALID[t, s]]
    assert len(items) == len(expected)
    bank = build_clip_bank(embeds, s2q, VALID, ClConfig())
    for item, (t, s) in zip(items, expected, strict=True):
        anchor = embeds[t, s2q[t, s]]
        n_neg = Q - 1 if VALID[t - 1, s] else Q
        assert item.label.tolist() == [1] + [0] * n_neg
        if bool(VALID[:t, s].any()):
            positive = bank.fused[t - 1, s]
        else:
            later = int(torch.nonzero(VALID[t + 1 :, s])[0]) + t + 1
            positive = embeds[later, s2q[later, s]]
        torch.testing.assert_close(item.dot_product[0], positive @ anchor)
        others = [q for q in range(Q) if not (VALID[t - 1, s] and q == s2q[t - 1, s])]
        torch.testing.assert_close(item.dot_product[1:], embeds[t - 1, others] @ anchor)


def test_latest_and_prev_frame_positive_modes() -> None:
    embeds, s2q = _clip(3)
    latest = clip_items(embeds, s2q, VALID, ClConfig(positive_mode="latest"))
    raw0 = clip_items(embeds, s2q, VALID, ClConfig(ma_prob=0.0))
    for a, b in zip(latest, raw0, strict=True):
        torch.testing.assert_close(a.dot_product, b.dot_product)
    # prev_frame without future positives drops anchors absent at t-1: slot 0 at t=6,
    # slot 1 at t=4 and slot 2 at t=3 (its first appearance)
    prev = clip_items(
        embeds, s2q, VALID, ClConfig(positive_mode="prev_frame", future_positive=False)
    )
    assert len(prev) == len(latest) - 3


def test_future_guard_bug_and_fix() -> None:
    valid = torch.tensor([[1, 0], [1, 1], [1, 0], [1, 1], [1, 1]], dtype=torch.bool)
    embeds = torch.randn(5, 4, 8)
    s2q = torch.tensor([[0, 1]] * 5)
    # slot 1 at t=1: nothing earlier; #None after t = 1 == t -> the official guard skips it
    buggy = clip_items(embeds, s2q, valid, ClConfig(ma_prob=1.0))
    fixed = clip_items(embeds, s2q, valid, ClConfig(ma_prob=1.0, fix_future_guard=True))
    assert len(fixed) == len(buggy) + 1
    none = clip_items(embeds, s2q, valid, ClConfig(future_positive=False))
    assert len(none) == len(buggy)


def test_gradients_flow_through_memory_unless_detached() -> None:
    embeds, s2q = _clip(4)

    def grad_of_frame0(cfg: ClConfig) -> float:
        e = embeds.clone().requires_grad_(True)
        items = [it for it in clip_items(e, s2q, VALID, cfg)]
        # only the item at t=2 for slot 0 (positive = fused after frame 1, negatives at t=1)
        item = items[2]
        item.dot_product[0].backward()
        return float(e.grad[0].abs().sum())

    assert grad_of_frame0(ClConfig(ma_prob=1.0)) > 0
    assert grad_of_frame0(ClConfig(ma_prob=1.0, detach_memory=True)) == 0


def test_noise_injection_switches() -> None:
    embeds, s2q = _clip(5)
    base = clip_items(embeds, s2q, VALID, ClConfig())
    torch.manual_seed(0)
    noisy = clip_items(embeds, s2q, VALID, ClConfig(noise_prob=1.0))
    absent_after_first = int((~VALID[1:]).sum())
    assert len(noisy) == len(base) + absent_after_first
    quiet = clip_items(embeds, s2q, VALID, ClConfig(noise_prob=1.0, noise_as_anchor=False))
    assert len(quiet) == len(base)
    bank = build_clip_bank(
        embeds, s2q, VALID, ClConfig(noise_prob=1.0, noise_source="other_instances")
    )
    t, s = 2, 1  # slot 1 absent at frame 2; the only other instance is slot 0
    torch.testing.assert_close(bank.raw[t, s], embeds[t, s2q[t, 0]])


def test_negative_switches() -> None:
    embeds, s2q = _clip(6)
    cfg = ClConfig(ma_prob=1.0)
    t, s = 5, 1  # item index of (5, 1) among the default items
    expected = [(tt, ss) for tt in range(1, 7) for ss in range(3) if VALID[tt, ss]]
    k = expected.index((t, s))

    def negatives(**switches: object) -> int:
        items = clip_items(embeds, s2q, VALID, dataclasses.replace(cfg, **switches))
        return len(items[k].label) - 1

    assert negatives() == Q - 1  # valid at t-1: every other query of frame t-1
    assert negatives(negative_major="none") == Q - int(VALID[t - 1].sum())
    assert negatives(negative_supplementary="none") == int(VALID[t - 1].sum()) - 1
    assert negatives(negative_major="memory_ma", negative_supplementary="none") == 2
    assert negatives(num_negatives=3) == 3
    unmatched = sum(Q - int(VALID[f].sum()) for f in range(t))
    assert negatives(negative_supplementary="global", negative_major="none") == unmatched


def test_cl_matching_recovers_slots_including_dummies() -> None:
    torch.manual_seed(0)
    t_len, s_len, q, k = 2, 3, 5, 4
    masks = torch.zeros(t_len, s_len, 32, 32, dtype=torch.bool)
    masks[:, 0, :10, :10] = True
    masks[:, 1, 20:, 20:] = True  # slot 2 is a dummy (empty mask, no-object label)
    labels = torch.tensor([[0, 2, k], [0, 2, k]])
    perm = torch.tensor([3, 0, 4])
    logits = torch.full((t_len, q, k + 1), -5.0)
    mask_logits = torch.full((t_len, q, 8, 8), -8.0)
    for s in range(s_len):
        logits[:, perm[s], labels[0, s]] = 5.0
        mask_logits[:, perm[s]] = torch.where(
            F.interpolate(masks[:, s : s + 1].float(), size=(8, 8))[:, 0] > 0.5, 8.0, -8.0
        )
    s2q = cl_slot_to_query(logits, mask_logits, labels, masks, MatchCosts(num_points=256))
    assert s2q.tolist() == [perm.tolist()] * t_len


def test_fusion_window_limits_the_similarity_average() -> None:
    """``fusion_window=K`` = the inference cache: beta averages the K latest raw embeddings."""
    embeds, s2q = _clip(7)
    bank = build_clip_bank(embeds, s2q, VALID, ClConfig(fusion_window=2))
    raws = [embeds[t, s2q[t, 0]] for t in range(7) if VALID[t, 0]]
    ma = raws[0]
    for k in range(1, len(raws)):
        window = raws[max(0, k - 2) : k]
        cos = torch.stack([F.cosine_similarity(r, raws[k], dim=0) for r in window]).mean()
        ma = (1 - cos.clamp_min(0)) * ma + cos.clamp_min(0) * raws[k]
    torch.testing.assert_close(bank.fused[-1, 0], ma, atol=1e-5, rtol=1e-5)


def test_clip_without_instances_has_no_items() -> None:
    embeds = torch.randn(3, Q, D)
    empty = torch.zeros(3, 0, dtype=torch.int64)
    bank = build_clip_bank(embeds, empty, empty.bool(), ClConfig(noise_prob=1.0))
    assert bank.raw.shape == (3, 0, D) and bank.fused.shape == (3, 0, D)
    assert clip_items(embeds, empty, empty.bool(), ClConfig()) == []
