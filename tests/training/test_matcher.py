"""Hungarian matcher: cost formulas, point sampling and assignments."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from training.matcher import (
    MatchCosts,
    batch_dice_cost,
    batch_sigmoid_ce_cost,
    hungarian_match,
    hungarian_match_batch,
    point_sample,
)


def test_point_sample_hits_pixel_centres() -> None:
    maps = torch.arange(12.0).reshape(1, 1, 3, 4)
    # pixel (row 1, col 2) has its centre at x = 2.5 / 4, y = 1.5 / 3 (align_corners=False)
    coords = torch.tensor([[[2.5 / 4, 1.5 / 3], [0.5 / 4, 0.5 / 3]]])
    torch.testing.assert_close(point_sample(maps, coords), torch.tensor([[[6.0, 0.0]]]))


def test_pairwise_costs_match_brute_force() -> None:
    torch.manual_seed(0)
    logits = torch.randn(4, 30)
    targets = (torch.rand(3, 30) > 0.5).float()
    ce = batch_sigmoid_ce_cost(logits, targets)
    dice = batch_dice_cost(logits, targets)
    for q in range(4):
        for n in range(3):
            want = F.binary_cross_entropy_with_logits(logits[q], targets[n])
            torch.testing.assert_close(ce[q, n], want)
            p = logits[q].sigmoid()
            d = 1 - (2 * (p * targets[n]).sum() + 1) / (p.sum() + targets[n].sum() + 1)
            torch.testing.assert_close(dice[q, n], d)
    # leading batch dims: each image's matrix as computed alone
    other_logits, other_targets = torch.randn(4, 30), (torch.rand(3, 30) > 0.5).float()
    stacked_logits = torch.stack([logits, other_logits])
    stacked_targets = torch.stack([targets, other_targets])
    for cost in (batch_sigmoid_ce_cost, batch_dice_cost):
        want = torch.stack([cost(logits, targets), cost(other_logits, other_targets)])
        torch.testing.assert_close(cost(stacked_logits, stacked_targets), want)


def test_match_recovers_the_permutation() -> None:
    torch.manual_seed(0)
    q, k = 6, 3
    masks = torch.zeros(3, 64, 64, dtype=torch.bool)
    masks[0, :20, :20] = True
    masks[1, 30:, 5:25] = True
    masks[2, 10:40, 40:] = True
    labels = torch.tensor([2, 0, 1])
    owner = torch.tensor([4, 1, 3])  # query of each target
    logits = torch.zeros(q, k + 1)
    logits[:, k] = 3.0
    mask_logits = torch.full((q, 16, 16), -6.0)
    for n in range(3):
        logits[owner[n], labels[n]] = 6.0
        small = F.interpolate(masks[n][None, None].float(), size=(16, 16))[0, 0]
        mask_logits[owner[n]] = torch.where(small > 0.5, 6.0, -6.0)
    rows, cols = hungarian_match(logits, mask_logits, labels, masks, MatchCosts(num_points=512))
    assert rows.tolist() == sorted(owner.tolist())
    assert dict(zip(cols.tolist(), rows.tolist(), strict=True)) == {0: 4, 1: 1, 2: 3}


def test_match_total_cost_is_the_weighted_sum() -> None:
    """With one target the matcher picks the query of least 5 ce + 2 class + 5 dice."""
    torch.manual_seed(1)
    logits = torch.randn(5, 4)
    mask_logits = torch.randn(5, 8, 8)
    mask = torch.zeros(1, 8, 8, dtype=torch.bool)
    mask[0, 2:6, 1:7] = True
    label = torch.tensor([1])
    torch.manual_seed(7)
    rows, _ = hungarian_match(logits, mask_logits, label, mask, MatchCosts(num_points=100))
    torch.manual_seed(7)
    coords = torch.rand(1, 100, 2)
    tgt = point_sample(mask[:, None].float(), coords)[:, 0]
    out = point_sample(mask_logits[:, None], coords.repeat(5, 1, 1))[:, 0]
    cost = (
        5 * batch_sigmoid_ce_cost(out, tgt)
        - 2 * logits.softmax(-1)[:, label]
        + 5 * batch_dice_cost(out, tgt)
    )
    assert rows.tolist() == [int(cost[:, 0].argmin())]


def test_match_without_targets() -> None:
    rows, cols = hungarian_match(
        torch.randn(4, 3), torch.randn(4, 8, 8), torch.zeros(0, dtype=torch.int64),
        torch.zeros(0, 32, 32, dtype=torch.bool),
    )  # fmt: skip
    assert rows.numel() == cols.numel() == 0


def _batch_case(counts: list[int], size: tuple[int, int] = (24, 32)) -> tuple:
    q, classes = 7, 5
    logits = torch.randn(len(counts), q, classes + 1)
    mask_logits = torch.randn(len(counts), q, size[0] // 2, size[1] // 2) * 3
    labels = [torch.randint(0, classes, (n,)) for n in counts]
    masks = [torch.rand(n, *size) > 0.6 for n in counts]
    return logits, mask_logits, labels, masks


def test_batched_matching_equals_the_per_image_matcher() -> None:
    costs = MatchCosts(num_points=200)
    for seed in range(12):
        torch.manual_seed(seed)
        counts = [int(n) for n in torch.randint(0, 8, (5,))]  # some images have no targets
        logits, mask_logits, labels, masks = _batch_case(counts)
        torch.manual_seed(100 + seed)
        want = [
            hungarian_match(logits[b], mask_logits[b], labels[b], masks[b], costs)
            for b in range(len(counts))
        ]
        after_loop = torch.rand(3)
        torch.manual_seed(100 + seed)
        got = hungarian_match_batch(logits, mask_logits, labels, masks, costs)
        # same points drawn, so the generator ends in the same state too
        assert torch.equal(torch.rand(3), after_loop)
        for (rows, cols), (want_rows, want_cols) in zip(got, want, strict=True):
            assert torch.equal(rows, want_rows) and torch.equal(cols, want_cols)


def test_batched_matching_falls_back_when_mask_sizes_differ() -> None:
    torch.manual_seed(0)
    logits, mask_logits, labels, masks = _batch_case([3, 2])
    masks[1] = torch.rand(2, 16, 20) > 0.5  # another resolution
    costs = MatchCosts(num_points=100)
    torch.manual_seed(1)
    want = [hungarian_match(logits[b], mask_logits[b], labels[b], masks[b], costs) for b in (0, 1)]
    torch.manual_seed(1)
    got = hungarian_match_batch(logits, mask_logits, labels, masks, costs)
    for g, w in zip(got, want, strict=True):
        assert torch.equal(g[0], w[0]) and torch.equal(g[1], w[1])
