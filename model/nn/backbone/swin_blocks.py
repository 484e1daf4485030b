"""Swin blocks: window attention with a relative position bias, the token MLP, stochastic depth.

Parameter names match the official checkpoints (``layers.{i}.blocks.{j}.{norm1, attn.*,
norm2, mlp.*}``). These are the eager forms; ``model.runtime.export_forms`` subclasses
``WindowAttention`` and ``SwinBlock`` with the forms the ONNX export traces.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.nn.backbone.swin_windows import (
    WindowPlan,
    gather_rows,
    pad_amount,
    relative_position_index,
    window_partition,
    window_reverse,
)

# The reference builds every norm as nn.LayerNorm with its default eps.
LAYER_NORM_EPS = 1e-5


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
        # The fused kernel with bias (+ shift mask) as one additive mask: 1.4x faster than the
        # spelled-out softmax(q k^T + bias) v on the CPU (the ONNX export spells it out).
        bias = self.relative_position_bias().unsqueeze(0)  # 1 x heads x N x N
        if mask is not None:
            bias = bias + mask[:, None]  # nW x heads x N x N (1 x ...: broadcast)
            if mask.shape[0] > 1 and bw != mask.shape[0]:  # several images: image-major
                bias = bias.repeat(bw // mask.shape[0], 1, 1, 1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))
        return out.transpose(1, 2).reshape(bw, n, c)


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
        tokens and the plan's pad slots take the bias row; ``proj`` (per token, so it
        commutes with the reference's reverse roll and crop) runs after the tokens are
        gathered back. At 480x864 that skips a quarter of stage 3's and over half of stage
        4's ``qkv`` and ``proj`` rows. Equal to the padded form up to float rounding
        (``tests/model/test_swin.py``).
        """
        # One row gather, then the few pad slots (no copy of qkv with a pad row).
        b, _, c = x.shape
        n = self.window_size * self.window_size
        qkv = self.attn.qkv(x)  # B x HW x 3C
        windows = gather_rows(qkv, plan.token_rows)
        if plan.pad_slots.numel():
            bias = self.attn.qkv.bias
            windows[:, plan.pad_slots] = bias.to(qkv.dtype) if bias is not None else 0.0
        if not plan.groups:
            out = self.attn.attend(windows.view(-1, n, 3 * c), mask)
        else:  # shifted, grouped plan: one broadcast mask pattern per group of windows
            windows = windows.view(b, -1, n, 3 * c)
            assert mask is not None
            parts = []
            for first, end, pattern in plan.groups:
                group = windows[:, first:end].reshape(-1, n, 3 * c)
                parts.append(self.attn.attend(group, mask[pattern][None]).view(b, -1, n, c))
            out = torch.cat(parts, 1) if len(parts) > 1 else parts[0]
        return self.attn.proj(gather_rows(out.reshape(b, -1, c), plan.from_windows))

    def _attend_padded(self, x: Tensor, height: int, width: int, mask: Tensor | None) -> Tensor:
        """Window attention the reference's way: pad, roll, partition (Bx(H*W)xC -> same)."""
        b, _, c = x.shape
        ws = self.window_size
        x = x.view(b, height, width, c)
        # Pad after norm1, as the reference does: padded tokens are zeros, not masked out.
        pad_h, pad_w = pad_amount(height, ws), pad_amount(width, ws)
        if pad_h or pad_w:  # (F.pad copies even when padding by 0)
            x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
        hp, wp = x.shape[1], x.shape[2]
        if self.shift > 0:
            x = torch.roll(x, shifts=(-self.shift, -self.shift), dims=(1, 2))
        if self.shift > 0 and mask is not None:
            x = self._attend_shifted(x, mask)
        else:
            windows = self.attn(window_partition(x, ws), mask if self.shift > 0 else None)
            x = window_reverse(windows, ws, b, hp, wp)
        if self.shift > 0:
            x = torch.roll(x, shifts=(self.shift, self.shift), dims=(1, 2))
        return x[:, :height, :width, :].reshape(b, -1, c)

    def _attend_shifted(self, x: Tensor, mask: Tensor) -> Tensor:
        """Shifted-window attention with one attention call per region-mask pattern.

        In the shifted map only the last window row and column straddle region boundaries:
        all other windows have an all-zero mask, the other windows of the last column share
        one pattern, those of the last row another, and the corner window has its own. Each
        of the (up to) four groups is attended with its one NxN pattern broadcast over its
        windows, so the fused kernel never gets a materialised nW x heads x N x N bias (at
        480x864 that would be ~30 MB per shifted block of stage 3, written, then copied again
        inside the kernel; skipping it saves about a tenth of the Swin-L trunk's CPU time).
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
