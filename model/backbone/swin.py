"""Swin Transformer trunk with Mask2Former's ``D2SwinTransformer`` semantics and key names.

Parameter and buffer names match the official checkpoints under the ``backbone.`` prefix
(``patch_embed.*``, ``layers.{i}.blocks.{j}.*``, ``layers.{i}.downsample.*``, ``norm{0..3}.*``);
see ``shared/spec/model.md`` section 2.2. Shapes are taken from the input tensor on every call
and no Python branch looks at tensor values, so the module traces to ONNX with dynamic H/W: the
padding amounts and the shifted-window region mask are computed with tensor arithmetic on the
(possibly traced) sizes.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.config import SwinConfig
from model.export_onnx import is_exporting

# The reference builds every norm as nn.LayerNorm with its default eps.
LAYER_NORM_EPS = 1e-5
# Logit added between tokens of different regions inside a shifted window (Swin's choice).
REGION_MASK_VALUE = -100.0


def _pad_amount(size: int, multiple: int) -> int:
    """Zero-padding that brings ``size`` up to a multiple of ``multiple`` (0 if divisible)."""
    return (multiple - size % multiple) % multiple


def window_partition(x: Tensor, window_size: int) -> Tensor:
    """Split a padded feature map into non-overlapping windows.

    Args:
        x: BxHpxWpxC, Hp and Wp multiples of ``window_size``.
        window_size: side of a square window (ws).

    Returns:
        (B*nW)x(ws*ws)xC tokens, windows in row-major order per image.
    """
    b, hp, wp, c = x.shape
    x = x.view(b, hp // window_size, window_size, wp // window_size, window_size, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size * window_size, c)


def window_reverse(windows: Tensor, window_size: int, batch: int, hp: int, wp: int) -> Tensor:
    """Inverse of :func:`window_partition`.

    Args:
        windows: (B*nW)x(ws*ws)xC tokens.
        window_size: side of a square window (ws).
        batch: B.
        hp: padded height Hp.
        wp: padded width Wp.

    Returns:
        BxHpxWpxC feature map.
    """
    c = windows.shape[-1]
    x = windows.view(batch, hp // window_size, wp // window_size, window_size, window_size, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(batch, hp, wp, c)


def shifted_window_mask(
    hp: int, wp: int, window_size: int, shift: int, device: torch.device
) -> Tensor:
    """Additive attention mask that keeps shifted windows from mixing wrapped-around regions.

    The padded map is cut into 3 row bands and 3 column bands (``[0, Hp-ws)``,
    ``[Hp-ws, Hp-shift)``, ``[Hp-shift, Hp)``); tokens of different bands in the same window
    get ``-100``. Computed with comparisons on ``arange`` so it follows traced sizes.

    Args:
        hp: padded height Hp (multiple of ws).
        wp: padded width Wp (multiple of ws).
        window_size: ws.
        shift: cyclic shift of the block (ws // 2).
        device: device of the result.

    Returns:
        nWx(ws*ws)x(ws*ws) float32 mask with values 0 or -100.
    """
    rows = torch.arange(hp, device=device)
    cols = torch.arange(wp, device=device)
    row_band = (rows >= hp - window_size).long() + (rows >= hp - shift).long()
    col_band = (cols >= wp - window_size).long() + (cols >= wp - shift).long()
    region = (row_band[:, None] * 3 + col_band[None, :])[None, :, :, None]
    region_windows = window_partition(region, window_size).squeeze(-1)  # nW x N
    different = region_windows[:, None, :] != region_windows[:, :, None]
    zeros = torch.zeros(different.shape, dtype=torch.float32, device=device)
    return zeros.masked_fill(different, REGION_MASK_VALUE)


class WindowPlan(NamedTuple):
    """Where each token of a (padded, shifted) map goes when it is cut into windows.

    Attributes:
        to_windows: (nW*N,) int64 index into ``[pad; tokens]`` (the pad row first, then the
            H*W tokens in row-major order) of every window slot: 0 for a padded position,
            ``t + 1`` for token ``t``.
        from_windows: (H*W,) int64 slot (in window order) of each token.
        groups: ``(first window, end window, mask window)`` per run of windows that share one
            region-mask pattern (eager shifted blocks), or ``()``: all windows in one call.
        token_rows: (nW*N,) int64 token of every slot, 0 for padded ones (eager only, else None).
        pad_slots: (K,) int64 slots of padded positions (eager only, else None).
    """

    to_windows: Tensor
    from_windows: Tensor
    groups: tuple[tuple[int, int, int], ...]
    token_rows: Tensor | None = None
    pad_slots: Tensor | None = None


def window_plan(
    height: int, width: int, window_size: int, shift: int, grouped: bool, device: torch.device
) -> WindowPlan:
    """Index maps that take an HxW token map straight to its windows and back.

    The same layout steps as the block's pad -> roll -> partition (and partition^-1 -> roll
    back -> crop), applied once to token numbers instead of every block's features, so a
    block gathers its windows with one ``index_select`` and its per-token linear layers see
    only the H*W real tokens. With ``grouped`` (eager, shifted) the windows are reordered so
    that those sharing a region-mask pattern are contiguous: interior windows, then the last
    column, the last row and the corner (see ``SwinBlock._attend_planned``). Traceable: the
    ungrouped plan follows traced sizes.

    Args:
        height: H.
        width: W.
        window_size: ws.
        shift: cyclic shift (0 for unshifted blocks).
        grouped: reorder windows by mask pattern (Python loop over window counts: eager only).
        device: device of the index tensors.

    Returns:
        The :class:`WindowPlan`.
    """
    ws = window_size
    pad_h, pad_w = _pad_amount(height, ws), _pad_amount(width, ws)
    tokens = torch.arange(1, height * width + 1, device=device).view(1, height, width, 1)
    tokens = F.pad(tokens, (0, 0, 0, pad_w, 0, pad_h))  # padded positions: 0
    if shift > 0:
        tokens = torch.roll(tokens, shifts=(-shift, -shift), dims=(1, 2))
    hp, wp = tokens.shape[1], tokens.shape[2]
    windows = window_partition(tokens, ws)  # nW x N x 1
    groups: tuple[tuple[int, int, int], ...] = ()
    if grouped:
        rows_w, cols_w = hp // ws, wp // ws
        ids = torch.arange(rows_w * cols_w, device=device).view(rows_w, cols_w)
        order, bounds, start = [], [], 0
        for part in (ids[:-1, :-1], ids[:-1, -1:], ids[-1:, :-1], ids[-1:, -1:]):
            if part.numel():
                order.append(part.reshape(-1))
                bounds.append((start, start + part.numel(), int(part.reshape(-1)[0])))
                start += part.numel()
        permutation = torch.cat(order)
        windows = windows[permutation]
        groups = tuple(bounds)
    slots = torch.arange(windows.numel(), device=device).view(windows.shape)
    if grouped:
        slots = torch.empty_like(slots).index_copy_(0, permutation, slots)
    slots = window_reverse(slots, ws, 1, hp, wp)
    if shift > 0:
        slots = torch.roll(slots, shifts=(shift, shift), dims=(1, 2))
    from_windows = slots[:, :height, :width].reshape(-1)
    to_windows = windows.reshape(-1)
    if is_exporting():
        return WindowPlan(to_windows, from_windows, groups)
    token_rows = (to_windows - 1).clamp(min=0)
    pad_slots = (to_windows == 0).nonzero().squeeze(1)
    return WindowPlan(to_windows, from_windows, groups, token_rows, pad_slots)


@functools.lru_cache(maxsize=32)
def cached_window_plan(
    height: int, width: int, window_size: int, shift: int, grouped: bool, device: torch.device
) -> WindowPlan:
    """:func:`window_plan` for eager inference: built once per size on the CPU (no device
    synchronisation on GPUs), then kept on ``device``. Its tensors must not be modified."""
    plan = window_plan(height, width, window_size, shift, grouped, torch.device("cpu"))
    assert plan.token_rows is not None and plan.pad_slots is not None
    return plan._replace(
        to_windows=plan.to_windows.to(device),
        from_windows=plan.from_windows.to(device),
        token_rows=plan.token_rows.to(device),
        pad_slots=plan.pad_slots.to(device),
    )


def _gather_rows(x: Tensor, index: Tensor) -> Tensor:
    """``x.index_select(1, index)`` as one 2-d row gather (several times faster on the CPU).

    Args:
        x: BxRxC.
        index: (K,) int64 rows of each image.

    Returns:
        BxKxC.
    """
    b, r, c = x.shape
    if b == 1:
        return x.reshape(r, c).index_select(0, index).view(1, -1, c)
    rows = (torch.arange(b, device=x.device)[:, None] * r + index[None]).reshape(-1)
    return x.reshape(b * r, c).index_select(0, rows).view(b, -1, c)


def relative_position_index(window_size: int) -> Tensor:
    """Index into the (2ws-1)^2 bias table for every (query, key) pair of a window.

    Returns:
        (ws*ws)x(ws*ws) int64.
    """
    coords = torch.stack(
        torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing="ij")
    ).flatten(1)  # 2 x N
    relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window_size - 1)
    return relative[:, :, 0] * (2 * window_size - 1) + relative[:, :, 1]


def drop_path(x: Tensor, drop_prob: float, training: bool) -> Tensor:
    """Stochastic depth: zero a residual branch per sample and rescale the survivors.

    Args:
        x: BxNxC residual branch output.
        drop_prob: probability of dropping the branch of one sample.
        training: identity unless True.

    Returns:
        BxNxC tensor.
    """
    if not training or drop_prob == 0.0:
        return x
    keep_prob = 1.0 - drop_prob
    keep = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep_prob)
    return x * keep / keep_prob


class Mlp(nn.Module):
    """Token MLP: ``fc1`` -> exact GELU -> ``fc2``."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        """Map BxNxC to BxNxC."""
        return self.fc2(self.act(self.fc1(x)))


class WindowAttention(nn.Module):
    """Multi-head self-attention inside a window, with a learned relative position bias."""

    relative_position_index: Tensor  # registered buffer (typed for mypy)

    def __init__(self, dim: int, window_size: int, num_heads: int) -> None:
        super().__init__()
        self.window_size = window_size
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * window_size - 1) ** 2, num_heads)
        )
        # Persistent on purpose: official checkpoints carry it (int64).
        self.register_buffer("relative_position_index", relative_position_index(window_size))
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def relative_position_bias(self) -> Tensor:
        """Bias added to the attention logits: heads x N x N with N = ws*ws."""
        n = self.window_size * self.window_size
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        return bias.view(n, n, -1).permute(2, 0, 1)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """Attend within each window.

        Args:
            x: (B*nW)xNxC window tokens, N = ws*ws.
            mask: nWxNxN additive mask (0 / -100) for shifted windows, 1xNxN for one mask
                shared by all windows (eager only), or None.

        Returns:
            (B*nW)xNxC.
        """
        return self.proj(self.attend(self.qkv(x), mask))

    def attend(self, qkv: Tensor, mask: Tensor | None = None) -> Tensor:
        """Attention of windows whose ``qkv`` projection is done, without the output ``proj``.

        Args:
            qkv: (B*nW)xNx3C projected window tokens.
            mask: as for :meth:`forward`.

        Returns:
            (B*nW)xNxC attended tokens, before ``proj``.
        """
        bw, n, c3 = qkv.shape
        c = c3 // 3
        qkv = qkv.view(bw, n, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B*nW) x heads x N x hd
        if not is_exporting():
            # Eager: the fused kernel with bias (+ shift mask) as one additive mask, 1.4x
            # faster than the spelled-out form below on the CPU; equal up to rounding.
            bias = self.relative_position_bias().unsqueeze(0)  # 1 x heads x N x N
            if mask is not None:
                bias = bias + mask[:, None]  # nW x heads x N x N (1 x ...: broadcast)
                if mask.shape[0] > 1 and bw != mask.shape[0]:  # several images: image-major
                    bias = bias.repeat(bw // mask.shape[0], 1, 1, 1)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))
            return out.transpose(1, 2).reshape(bw, n, c)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        attn = attn + self.relative_position_bias().unsqueeze(0)
        if mask is not None:
            num_windows = mask.shape[0]
            attn = attn.view(-1, num_windows, self.num_heads, n, n) + mask[None, :, None]
            attn = attn.view(-1, self.num_heads, n, n)
        attn = attn.softmax(dim=-1)
        return (attn @ v).transpose(1, 2).reshape(bw, n, c)

    def attend_heads(
        self, x: Tensor, to_windows: Tensor, from_windows: Tensor, mask: Tensor | None
    ) -> Tensor:
        """Planned window attention with head-major batches, ``proj`` included (ONNX form).

        ``qkv`` is applied as one ``C x d`` product per head and part, so q, k and v come out
        as B x heads x tokens x d and are gathered into windows along the tokens: no split
        of a 3C-wide product and no heads-to-front copies. Two biases are moved, exactly
        in real arithmetic: k's adds ``q . b_k`` to every logit of a query, which softmax
        ignores, and v's passes through the attention unchanged (its rows sum to 1), so it
        is folded into ``proj``'s bias. In ONNX Runtime at 480x864 this takes the attention
        of Swin-L's blocks (all but the MLP and norms) from 0.80x to 0.74x the time of their
        MLP products, about 140 ms less per frame. Equal to :meth:`attend`
        on the gathered ``qkv`` up to float rounding (``tests/model/test_swin.py``).

        Args:
            x: B x T x C normalised tokens (row-major, unpadded).
            to_windows: (nW*N,) index into ``[pad; tokens]`` of every window slot (0: pad,
                a zero token, whose qkv is the layer's bias).
            from_windows: (T,) window slot of every token.
            mask: nWxNxN additive mask for shifted windows, or None.

        Returns:
            B x T x C tokens after ``proj``.
        """
        b = x.shape[0]
        c = self.proj.in_features  # a Python int: the weights below fold into constants
        heads = self.num_heads
        d = c // heads
        n = self.window_size * self.window_size
        weight = self.qkv.weight.view(3, heads, d, c).transpose(-1, -2)  # 3 x heads x C x d
        bias = self.qkv.bias.view(3, heads, 1, d)
        tokens = torch.cat([x.new_zeros(b, 1, c), x], 1).unsqueeze(1)  # B x 1 x (1+T) x C
        q = tokens @ weight[0] + bias[0]  # B x heads x (1+T) x d
        k = tokens @ weight[1]
        v = tokens @ weight[2]
        q, k, v = (t.index_select(2, to_windows).view(-1, n, d) for t in (q, k, v))
        attn = (q * self.scale) @ k.transpose(-2, -1)  # (B*heads*nW) x N x N
        attn = attn.view(b, heads, -1, n, n) + self.relative_position_bias()[None, :, None]
        if mask is not None:
            attn = attn + mask[None, None]
        out = attn.view(-1, n, n).softmax(dim=-1) @ v  # (B*heads*nW) x N x d
        out = out.view(b, heads, -1, d).transpose(1, 2).reshape(b, -1, c)
        proj_bias = self.proj.weight @ self.qkv.bias[2 * c :]
        if self.proj.bias is not None:
            proj_bias = proj_bias + self.proj.bias
        return F.linear(out.index_select(1, from_windows), self.proj.weight, proj_bias)


class SwinBlock(nn.Module):
    """(Shifted-)window attention block: norm1 -> pad -> shift -> W-MSA -> residual -> MLP."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int,
        shift: int,
        mlp_ratio: float,
        drop_path_prob: float,
    ) -> None:
        super().__init__()
        self.window_size = window_size
        self.shift = shift
        self.drop_path_prob = drop_path_prob
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attn = WindowAttention(dim, window_size, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(
        self,
        x: Tensor,
        height: int,
        width: int,
        mask: Tensor | None,
        plan: WindowPlan | None = None,
    ) -> Tensor:
        """Apply the block.

        Args:
            x: Bx(H*W)xC tokens.
            height: H.
            width: W.
            mask: nWxNxN region mask of the padded map, used only if the block is shifted.
            plan: this block's :func:`window_plan` (its shift); given, the windows are
                gathered by it and ``qkv`` / ``proj`` see only the H*W real tokens.

        Returns:
            Bx(H*W)xC tokens.
        """
        shortcut = x
        if plan is not None:
            x = self._attend_planned(self.norm1(x), plan, mask if self.shift > 0 else None)
        else:
            x = self._attend_padded(self.norm1(x), height, width, mask)
        x = shortcut + drop_path(x, self.drop_path_prob, self.training)
        return x + drop_path(self.mlp(self.norm2(x)), self.drop_path_prob, self.training)

    def _attend_planned(self, x: Tensor, plan: WindowPlan, mask: Tensor | None) -> Tensor:
        """Window attention through a :class:`WindowPlan` (Bx(H*W)xC -> Bx(H*W)xC).

        The reference pads the normalised map with zeros and projects every padded token;
        ``qkv`` of a zero token is the layer's bias, so the projection runs on the real
        tokens and the plan's pad slots take the bias row; ``proj`` (per token, like the
        crop and roll it used to precede) runs after the tokens are gathered back. At
        480x864 that skips a quarter of stage 3's and over half of stage 4's ``qkv`` and
        ``proj`` rows. Equal to the padded form up to float rounding (``tests/model/test_swin.py``).
        """
        if is_exporting():
            return self.attn.attend_heads(x, plan.to_windows, plan.from_windows, mask)
        # Eager: one row gather, then the few pad slots (no copy of qkv with a pad row).
        b, _, c = x.shape
        n = self.window_size * self.window_size
        assert plan.token_rows is not None and plan.pad_slots is not None
        qkv = self.attn.qkv(x)  # B x HW x 3C
        windows = _gather_rows(qkv, plan.token_rows)
        if plan.pad_slots.numel():
            bias = self.attn.qkv.bias
            windows[:, plan.pad_slots] = bias.to(qkv.dtype) if bias is not None else 0.0
        if not plan.groups:
            out = self.attn.attend(windows.view(-1, n, 3 * c), mask)
        else:  # eager shifted: one broadcast mask pattern per group of windows
            windows = windows.view(b, -1, n, 3 * c)
            assert mask is not None
            parts = []
            for first, end, pattern in plan.groups:
                group = windows[:, first:end].reshape(-1, n, 3 * c)
                parts.append(self.attn.attend(group, mask[pattern][None]).view(b, -1, n, c))
            out = torch.cat(parts, 1) if len(parts) > 1 else parts[0]
        return self.attn.proj(_gather_rows(out.reshape(b, -1, c), plan.from_windows))

    def _attend_padded(self, x: Tensor, height: int, width: int, mask: Tensor | None) -> Tensor:
        """Window attention the reference's way: pad, roll, partition (Bx(H*W)xC -> same)."""
        b, _, c = x.shape
        ws = self.window_size
        x = x.view(b, height, width, c)
        # Pad after norm1, as the reference does: padded tokens are zeros, not masked out.
        pad_h, pad_w = _pad_amount(height, ws), _pad_amount(width, ws)
        if pad_h or pad_w or is_exporting():  # (eager: F.pad copies even when padding by 0)
            x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
        hp, wp = x.shape[1], x.shape[2]
        if self.shift > 0:
            x = torch.roll(x, shifts=(-self.shift, -self.shift), dims=(1, 2))
        if self.shift > 0 and mask is not None and not is_exporting():
            x = self._attend_shifted_by_pattern(x, mask)
        else:
            windows = self.attn(window_partition(x, ws), mask if self.shift > 0 else None)
            x = window_reverse(windows, ws, b, hp, wp)
        if self.shift > 0:
            x = torch.roll(x, shifts=(self.shift, self.shift), dims=(1, 2))
        return x[:, :height, :width, :].reshape(b, -1, c)

    def _attend_shifted_by_pattern(self, x: Tensor, mask: Tensor) -> Tensor:
        """Shifted-window attention with one attention call per region-mask pattern.

        In the shifted map only the last window row and column straddle region boundaries:
        all other windows have an all-zero mask, the other windows of the last column share
        one pattern, those of the last row another, and the corner window has its own. Each
        of the (up to) four groups is attended with its one NxN pattern broadcast over its
        windows, so the fused kernel never gets a materialised nW x heads x N x N bias (at
        480x864 that was ~30 MB per shifted block of stage 3, written, then copied again
        inside the kernel: the Swin-L trunk's CPU time per frame fell from 10.6 to 9.6 s).
        Equal to the one-call form up to float rounding (``tests/model/test_swin.py``).

        Args:
            x: BxHpxWpxC shifted, padded tokens (Hp, Wp multiples of the window size).
            mask: nWxNxN region mask of that map (``shifted_window_mask``).

        Returns:
            BxHpxWpxC attended tokens.
        """
        b, hp, wp, _ = x.shape
        ws = self.window_size
        rows_w, cols_w = hp // ws, wp // ws
        # index in ``mask`` of one window of each group (window order is row-major)
        pattern = {(0, 0): 0, (0, 1): cols_w - 1, (1, 0): (rows_w - 1) * cols_w}
        pattern[1, 1] = rows_w * cols_w - 1
        bands = []
        for r, (y0, y1) in enumerate(((0, hp - ws), (hp - ws, hp))):
            if y1 == y0:
                continue
            parts = []
            for q, (x0, x1) in enumerate(((0, wp - ws), (wp - ws, wp))):
                if x1 == x0:
                    continue
                windows = window_partition(x[:, y0:y1, x0:x1], ws)
                out = self.attn(windows, mask[pattern[r, q]][None])
                parts.append(window_reverse(out, ws, b, y1 - y0, x1 - x0))
            bands.append(torch.cat(parts, 2) if len(parts) > 1 else parts[0])
        return torch.cat(bands, 1) if len(bands) > 1 else bands[0]


class PatchMerging(nn.Module):
    """2x2 token merge: pad to even, concat phases, LayerNorm(4C), Linear(4C -> 2C, no bias)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim, eps=LAYER_NORM_EPS)

    def forward(self, x: Tensor, height: int, width: int) -> Tensor:
        """Map Bx(H*W)xC to Bx(ceil(H/2)*ceil(W/2))x2C."""
        b, _, c = x.shape
        x = x.view(b, height, width, c)
        if height % 2 or width % 2 or is_exporting():
            x = F.pad(x, (0, 0, 0, width % 2, 0, height % 2))
        # Phase order of the reference: (even, even), (odd, even), (even, odd), (odd, odd).
        phases = [x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]]
        x = torch.cat(phases, dim=-1).view(b, -1, 4 * c)
        return self.reduction(self.norm(x))


class SwinStage(nn.Module):
    """One resolution stage: ``blocks`` (even ones unshifted) and an optional downsample."""

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float,
        drop_path_probs: list[float],
        downsample: bool,
    ) -> None:
        super().__init__()
        self.window_size = window_size
        self.shift = window_size // 2
        self.blocks = nn.ModuleList(
            SwinBlock(
                dim,
                num_heads,
                window_size,
                shift=0 if j % 2 == 0 else self.shift,
                mlp_ratio=mlp_ratio,
                drop_path_prob=drop_path_probs[j],
            )
            for j in range(depth)
        )
        self.downsample = PatchMerging(dim) if downsample else None
        # Gather windows through a WindowPlan on padded maps (and in the export); False: the
        # reference's pad / roll / partition in every block (kept for comparison).
        self.planned = True

    def forward(self, x: Tensor, height: int, width: int) -> tuple[Tensor, Tensor | None]:
        """Run the blocks, then merge patches.

        Args:
            x: Bx(H*W)xC tokens.
            height: H.
            width: W.

        Returns:
            The stage output Bx(H*W)xC (before downsampling) and the downsampled
            Bx(ceil(H/2)*ceil(W/2))x2C tokens, or None for the last stage.
        """
        ws = self.window_size
        hp = height + _pad_amount(height, ws)
        wp = width + _pad_amount(width, ws)
        mask = None
        if len(self.blocks) > 1:  # only odd blocks are shifted
            mask = shifted_window_mask(hp, wp, ws, self.shift, x.device).to(x.dtype)
        # block j is shifted iff j is odd; plans[j % 2] is its plan (or None)
        plans: list[WindowPlan | None] = [None, None]
        exporting = is_exporting()
        if self.planned and (hp != height or wp != width or exporting):
            for odd in range(min(len(self.blocks), 2)):
                shift = self.shift if odd else 0
                if exporting:  # traced sizes: built in the graph
                    plans[odd] = window_plan(height, width, ws, shift, False, x.device)
                else:
                    plans[odd] = cached_window_plan(height, width, ws, shift, shift > 0, x.device)
        for j, block in enumerate(self.blocks):
            x = block(x, height, width, mask, plans[j % 2])
        down = self.downsample(x, height, width) if self.downsample is not None else None
        return x, down


class PatchEmbed(nn.Module):
    """Non-overlapping patch projection (conv k=s=patch) followed by a LayerNorm."""

    def __init__(self, patch_size: int, embed_dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim, eps=LAYER_NORM_EPS)

    def forward(self, x: Tensor) -> Tensor:
        """Map Bx3xHxW to BxCx(ceil(H/p))x(ceil(W/p)); input zero-padded right/bottom."""
        p = self.patch_size
        x = F.pad(x, (0, _pad_amount(x.shape[3], p), 0, _pad_amount(x.shape[2], p)))
        x = self.proj(x)
        b, c, h, w = x.shape
        x = self.norm(x.flatten(2).transpose(1, 2))
        return x.transpose(1, 2).reshape(b, c, h, w)


class SwinBackbone(nn.Module):
    """Swin trunk returning the four normalised stage outputs as ``res2..res5``.

    Attributes:
        out_channels: ``{"res2": C, "res3": 2C, "res4": 4C, "res5": 8C}``.
        strides: ``{"res2": 4, "res3": 8, "res4": 16, "res5": 32}`` (for patch size 4).
    """

    def __init__(self, cfg: SwinConfig, drop_path_rate: float = 0.3) -> None:
        """Build the trunk.

        Args:
            cfg: sizes (embed dim, depths, heads, window, patch, MLP ratio).
            drop_path_rate: stochastic-depth rate of the last block; it grows linearly from 0
                over all blocks and is applied in train mode only (reference: 0.3).
        """
        super().__init__()
        self.cfg = cfg
        num_stages = len(cfg.depths)
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.embed_dim)
        probs = torch.linspace(0, drop_path_rate, sum(cfg.depths), device="cpu").tolist()
        self.layers = nn.ModuleList()
        for i, depth in enumerate(cfg.depths):
            start = sum(cfg.depths[:i])
            self.layers.append(
                SwinStage(
                    dim=cfg.embed_dim * 2**i,
                    depth=depth,
                    num_heads=cfg.num_heads[i],
                    window_size=cfg.window_size,
                    mlp_ratio=cfg.mlp_ratio,
                    drop_path_probs=probs[start : start + depth],
                    downsample=i < num_stages - 1,
                )
            )
        self.names = [f"res{i + 2}" for i in range(num_stages)]
        self.out_channels = {n: cfg.embed_dim * 2**i for i, n in enumerate(self.names)}
        self.strides = {n: cfg.patch_size * 2**i for i, n in enumerate(self.names)}
        for i, name in enumerate(self.names):
            self.add_module(f"norm{i}", nn.LayerNorm(self.out_channels[name], eps=LAYER_NORM_EPS))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Reference init: Linear weights trunc-normal(0.02), biases 0, LayerNorm (1, 0)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, WindowAttention):
                nn.init.trunc_normal_(module.relative_position_bias_table, std=0.02)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """Extract multi-scale features.

        Args:
            x: Bx3xHxW normalised pixels (any H, W; padded internally as needed).

        Returns:
            ``res2..res5``: Bx(C*2^i)x(H/s)x(W/s) float feature maps, s = 4, 8, 16, 32
            (ceil-rounded at every stage).
        """
        x = self.patch_embed(x)
        b, _, height, width = x.shape
        tokens = x.flatten(2).transpose(1, 2)
        outputs: dict[str, Tensor] = {}
        for i, (name, stage) in enumerate(zip(self.names, self.layers, strict=True)):
            out, down = stage(tokens, height, width)
            out = getattr(self, f"norm{i}")(out)
            outputs[name] = out.view(b, height, width, -1).permute(0, 3, 1, 2).contiguous()
            if down is not None:
                tokens = down
                height, width = (height + 1) // 2, (width + 1) // 2
        return outputs
