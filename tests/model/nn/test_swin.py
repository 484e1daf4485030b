"""Swin backbone: official key table, output shapes, and window attention against references."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from model.config import SwinConfig
from model.nn.backbone.swin import SwinBackbone, SwinStage
from model.nn.backbone.swin_blocks import SwinBlock, WindowAttention
from model.nn.backbone.swin_windows import shifted_window_mask, window_partition, window_plan
from model.runtime.export_forms import use_export_forms

TINY = SwinConfig(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=7)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def test_state_dict_matches_official_swin_l(fixtures_dir: Path) -> None:
    table = json.loads((fixtures_dir / "state_dict_keys_SwinL.json").read_text())
    expected = [
        (e["key"].removeprefix("backbone."), tuple(e["shape"]), e["dtype"], e["kind"])
        for e in table["state_dict"]
        if e["key"].startswith("backbone.")
    ]
    with torch.device("meta"):
        backbone = SwinBackbone(SwinConfig())
    params = dict(backbone.named_parameters())
    ours = [
        (k, tuple(v.shape), _dtype_name(v.dtype), "parameter" if k in params else "buffer")
        for k, v in backbone.state_dict().items()
    ]
    assert ours == expected
    assert backbone.out_channels == {"res2": 192, "res3": 384, "res4": 768, "res5": 1536}


@pytest.mark.parametrize("size", [(70, 90), (64, 64), (33, 129)])
def test_forward_shapes_on_odd_sizes(size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    backbone = SwinBackbone(TINY).eval()
    h, w = size
    with torch.no_grad():
        out = backbone(torch.randn(2, 3, h, w))
    for i, name in enumerate(["res2", "res3", "res4", "res5"]):
        stride = 4 * 2**i
        expected = (2, 16 * 2**i, -(-h // stride), -(-w // stride))
        assert tuple(out[name].shape) == expected
        assert backbone.out_channels[name] == expected[1]
        assert torch.isfinite(out[name]).all()


def test_drop_path_only_in_train_mode() -> None:
    torch.manual_seed(0)
    backbone = SwinBackbone(TINY, drop_path_rate=0.5)
    x = torch.randn(4, 3, 32, 32)
    backbone.eval()
    with torch.no_grad():
        a, b = backbone(x)["res5"], backbone(x)["res5"]
    assert torch.equal(a, b)
    backbone.train()
    torch.manual_seed(1)
    c = backbone(x)["res5"]
    c.sum().backward()
    assert not torch.allclose(a, c)
    assert backbone.layers[0].blocks[0].drop_path_prob == 0.0
    assert backbone.layers[-1].blocks[-1].drop_path_prob == pytest.approx(0.5)


def _plain_attention_with_bias(attn: WindowAttention, x: torch.Tensor) -> torch.Tensor:
    """Textbook multi-head attention over one window, bias looked up by coordinates."""
    ws, heads = attn.window_size, attn.num_heads
    n, c = x.shape
    hd = c // heads
    q, k, v = attn.qkv(x).split(c, dim=-1)
    coords = [(i // ws, i % ws) for i in range(n)]
    bias = torch.empty(heads, n, n)
    for a, (ya, xa) in enumerate(coords):
        for b, (yb, xb) in enumerate(coords):
            row = (ya - yb + ws - 1) * (2 * ws - 1) + (xa - xb + ws - 1)
            bias[:, a, b] = attn.relative_position_bias_table[row]
    outs = []
    for h in range(heads):
        qh, kh, vh = (t[:, h * hd : (h + 1) * hd] for t in (q, k, v))
        logits = qh @ kh.T / hd**0.5 + bias[h]
        outs.append(logits.softmax(-1) @ vh)
    return attn.proj(torch.cat(outs, dim=-1))


def test_unshifted_single_window_equals_plain_attention() -> None:
    torch.manual_seed(0)
    attn = WindowAttention(dim=12, window_size=4, num_heads=3)
    torch.nn.init.normal_(attn.relative_position_bias_table, std=1.0)
    x = torch.randn(16, 12)
    with torch.no_grad():
        ours = attn(x[None])[0]
        ref = _plain_attention_with_bias(attn, x)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def _slice_region_mask(hp: int, wp: int, ws: int, shift: int) -> torch.Tensor:
    """The region mask built the way the Swin paper code does it: label slices, then compare."""
    img = torch.zeros(1, hp, wp, 1)
    bands = (slice(0, -ws), slice(-ws, -shift), slice(-shift, None))
    label = 0
    for hs in bands:
        for wsl in bands:
            img[:, hs, wsl, :] = label
            label += 1
    windows = window_partition(img, ws).squeeze(-1)
    diff = windows[:, None, :] - windows[:, :, None]
    return diff.masked_fill(diff != 0, -100.0).masked_fill(diff == 0, 0.0)


@pytest.mark.parametrize(("hp", "wp"), [(8, 12), (4, 4), (12, 8)])
def test_region_mask_matches_slice_construction(hp: int, wp: int) -> None:
    ours = shifted_window_mask(hp, wp, 4, 2, torch.device("cpu"))
    torch.testing.assert_close(ours, _slice_region_mask(hp, wp, 4, 2))


def _export_form(module: nn.Module) -> nn.Module:
    """A copy of ``module`` with the export forms ``export_onnx`` traces."""
    exported = copy.deepcopy(module)
    assert use_export_forms(exported) > 0
    return exported


@pytest.mark.parametrize(
    "plan", ["padded", "planned", "planned-grouped", "export-padded", "export-planned"]
)
def test_shifted_block_attention_matches_token_loop(plan: str) -> None:
    """Shifted block on a map needing padding == per-token attention over its region, for the
    reference's pad / roll / partition form and for windows gathered by a plan (one call
    with the full mask, or grouped by mask pattern as in eager), eager and export forms."""
    torch.manual_seed(0)
    ws, shift, dim, heads = 4, 2, 8, 2
    h, w = 6, 7
    block = SwinBlock(dim, heads, ws, shift=shift, mlp_ratio=2.0, drop_path_prob=0.0).eval()
    torch.nn.init.normal_(block.attn.relative_position_bias_table, std=1.0)
    x = torch.randn(1, h * w, dim)
    hp, wp = 8, 8
    mask = shifted_window_mask(hp, wp, ws, shift, torch.device("cpu"))
    with torch.no_grad():
        plans = {
            "padded": None,
            "planned": window_plan(h, w, ws, shift, False, x.device),
            "planned-grouped": window_plan(h, w, ws, shift, True, x.device),
            "export-padded": None,
            "export-planned": window_plan(h, w, ws, shift, False, x.device),
        }
        form = _export_form(block) if plan.startswith("export") else block
        ours = form(x, h, w, mask, plans[plan])
        # Reference: pad after norm1, roll, then loop over tokens of the rolled map.
        grid = F.pad(block.norm1(x).view(1, h, w, dim), (0, 0, 0, wp - w, 0, hp - h))
        rolled = torch.roll(grid, shifts=(-shift, -shift), dims=(1, 2))[0]

        def band(i: int, size: int) -> int:
            return int(i >= size - ws) + int(i >= size - shift)

        attended = torch.zeros(hp, wp, dim)
        for i in range(hp):
            for j in range(wp):
                wy, wx = i // ws, j // ws
                rows, cols = slice(wy * ws, wy * ws + ws), slice(wx * ws, wx * ws + ws)
                window = rolled[rows, cols].reshape(-1, dim)
                bias = torch.zeros(ws * ws)
                for t in range(ws * ws):
                    ki, kj = wy * ws + t // ws, wx * ws + t % ws
                    same = band(i, hp) == band(ki, hp) and band(j, wp) == band(kj, wp)
                    bias[t] = 0.0 if same else -100.0
                attended[i, j] = _attend_one(block.attn, rolled[i, j], window, i % ws, j % ws, bias)
        back = torch.roll(attended, shifts=(shift, shift), dims=(0, 1))[:h, :w].reshape(1, -1, dim)
        mid = x + back
        ref = mid + block.mlp(block.norm2(mid))
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def _attend_one(
    attn: WindowAttention,
    token: torch.Tensor,
    window: torch.Tensor,
    qy: int,
    qx: int,
    mask_row: torch.Tensor,
) -> torch.Tensor:
    """Attention output of one query token over the ws*ws tokens of its window."""
    ws, heads = attn.window_size, attn.num_heads
    dim = token.shape[0]
    hd = dim // heads
    q = attn.qkv(token)[:dim]
    kv = attn.qkv(window)
    k, v = kv[:, dim : 2 * dim], kv[:, 2 * dim :]
    outs = []
    for h in range(heads):
        sl = slice(h * hd, (h + 1) * hd)
        logits = k[:, sl] @ q[sl] * hd**-0.5 + mask_row
        for t in range(ws * ws):
            ky, kx = t // ws, t % ws
            row = (qy - ky + ws - 1) * (2 * ws - 1) + (qx - kx + ws - 1)
            logits[t] = logits[t] + attn.relative_position_bias_table[row, h]
        outs.append(logits.softmax(0) @ v[:, sl])
    return attn.proj(torch.cat(outs))


@pytest.mark.parametrize("shifted", [False, True])
def test_window_attention_fused_kernel_equals_export_form(shifted: bool) -> None:
    """Eager runs scaled_dot_product_attention with bias (+ shift mask) as one additive mask;
    the export spells it out. Same output, in float64, for 2 images x 3 windows."""
    torch.manual_seed(3)
    attn = WindowAttention(dim=12, window_size=3, num_heads=3).double()
    with torch.no_grad():
        attn.relative_position_bias_table.normal_()
    x = torch.randn(2 * 3, 9, 12, dtype=torch.float64)
    mask = None
    if shifted:
        mask = torch.where(torch.rand(3, 9, 9) < 0.4, -100.0, 0.0).double()
    fused = attn(x, mask)
    torch.testing.assert_close(fused, _export_form(attn)(x, mask), atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize(("h", "w"), [(10, 15), (4, 13), (12, 4), (4, 4)])
def test_shifted_block_by_pattern_equals_one_call_with_full_mask(
    monkeypatch, h: int, w: int
) -> None:
    """Eager attends shifted windows in up to four groups (one broadcast mask pattern each);
    the export form takes the whole nW x N x N mask in one call. Same block output (float64,
    2 images, maps of several window rows / columns, a single row, a single column, one
    window)."""
    torch.manual_seed(4)
    ws, shift = 4, 2
    block = SwinBlock(12, 3, ws, shift=shift, mlp_ratio=2.0, drop_path_prob=0.0).double().eval()
    with torch.no_grad():
        block.attn.relative_position_bias_table.normal_()
    hp, wp = -(-h // ws) * ws, -(-w // ws) * ws
    mask = shifted_window_mask(hp, wp, ws, shift, torch.device("cpu")).double()
    x = torch.randn(2, h * w, 12, dtype=torch.float64)
    exported = _export_form(block)
    calls = []
    for form in (block, exported):
        original = form.attn.forward
        monkeypatch.setattr(
            form.attn, "forward", lambda *a, f=original: calls.append(a[0].shape) or f(*a)
        )
    with torch.no_grad():
        grouped = block(x, h, w, mask)
        groups = len(calls)
        one_call = exported(x, h, w, mask)
    assert groups == (hp > ws) + (wp > ws) + (hp > ws and wp > ws) + 1
    assert len(calls) == groups + 1
    torch.testing.assert_close(grouped, one_call, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize(("h", "w"), [(10, 15), (4, 13), (12, 4), (4, 4), (3, 2), (8, 9)])
@pytest.mark.parametrize("shift", [0, 2])
def test_window_plan_is_pad_roll_partition_of_token_numbers(h: int, w: int, shift: int) -> None:
    """The plan's gather equals padding with a 0 row, rolling and partitioning; its inverse
    gathers every token back from its slot; grouped plans list each window once, and each
    group's windows share the region-mask pattern of the window named for it."""
    ws = 4
    grid = torch.arange(1, h * w + 1).view(1, h, w, 1)
    grid = F.pad(grid, (0, 0, 0, -w % ws, 0, -h % ws))
    hp, wp = grid.shape[1], grid.shape[2]
    if shift:
        grid = torch.roll(grid, shifts=(-shift, -shift), dims=(1, 2))
    windows = window_partition(grid, ws).reshape(-1)
    plain = window_plan(h, w, ws, shift, False, torch.device("cpu"))
    assert plain.groups == ()
    assert torch.equal(plain.to_windows, windows)
    assert torch.equal(plain.to_windows[plain.from_windows], torch.arange(1, h * w + 1))
    grouped = window_plan(h, w, ws, shift, True, torch.device("cpu"))
    n = ws * ws
    starts = [g[0] for g in grouped.groups]
    ends = [g[1] for g in grouped.groups]
    assert starts[0] == 0 and ends[-1] == (hp // ws) * (wp // ws) and starts[1:] == ends[:-1]
    assert torch.equal(grouped.to_windows[grouped.from_windows], torch.arange(1, h * w + 1))
    by_window = {
        tuple(plain.to_windows[i * n : (i + 1) * n].tolist()): i for i in range(len(windows) // n)
    }
    mask = shifted_window_mask(hp, wp, ws, 2, torch.device("cpu"))
    seen = []
    for first, end, pattern in grouped.groups:
        for k in range(first, end):
            original = by_window[tuple(grouped.to_windows[k * n : (k + 1) * n].tolist())]
            seen.append(original)
            assert torch.equal(mask[original], mask[pattern])
    assert sorted(seen) == list(range(len(windows) // n))


@pytest.mark.parametrize(("h", "w"), [(10, 15), (12, 4), (4, 4), (7, 7), (13, 11)])
@pytest.mark.parametrize("exporting", [False, True])
def test_planned_stage_equals_padded_stage(monkeypatch, h: int, w: int, exporting: bool) -> None:
    """A stage whose blocks gather windows by plan (``qkv`` / ``proj`` on real tokens only)
    equals the reference's pad / roll / partition in every block: float64, 2 images, eager
    and the export form (planned and padded), maps that need padding on one, both or no
    sides."""
    torch.manual_seed(5)
    eager = SwinStage(12, 4, 3, 4, 2.0, [0.0] * 4, downsample=True).double().eval()
    with torch.no_grad():
        for block in eager.blocks:
            block.attn.relative_position_bias_table.normal_()
            block.attn.qkv.bias.normal_()
    x = torch.randn(2, h * w, 12, dtype=torch.float64)
    with torch.no_grad():
        eager.planned = False
        padded, padded_down = eager(x, h, w)
        eager.planned = True
    stage = _export_form(eager) if exporting else eager
    calls = []
    block_type = type(stage.blocks[0])
    original = block_type._attend_planned
    monkeypatch.setattr(block_type, "_attend_planned", lambda *a: calls.append(1) or original(*a))
    with torch.no_grad():
        planned, planned_down = stage(x, h, w)
        used_plan = len(calls)
        stage.planned = False
        unplanned, unplanned_down = stage(x, h, w)
    padding = h % 4 != 0 or w % 4 != 0
    assert used_plan == (4 if padding or exporting else 0)
    assert len(calls) == used_plan
    for out, down in ((planned, planned_down), (unplanned, unplanned_down)):
        torch.testing.assert_close(out, padded, atol=1e-12, rtol=1e-12)
        torch.testing.assert_close(down, padded_down, atol=1e-12, rtol=1e-12)


def test_planned_stage_gradients_equal_padded_stage() -> None:
    """Training goes through the plan too: input and parameter gradients (qkv bias included,
    which reaches the padded slots by assignment) equal the padded form's, float64."""
    torch.manual_seed(6)
    stage = SwinStage(12, 2, 3, 4, 2.0, [0.0, 0.0], downsample=False).double().train()
    h, w = 7, 10
    x = torch.randn(2, h * w, 12, dtype=torch.float64, requires_grad=True)
    grads = []
    for planned in (True, False):
        stage.planned = planned
        stage.zero_grad()
        x.grad = None
        out, _ = stage(x, h, w)
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
        grads.append([x.grad.clone()] + [p.grad.clone() for p in stage.parameters()])
    assert grads[0][1].abs().sum() > 0
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)
