"""Multi-scale deformable attention (Deformable DETR) in pure PyTorch.

The official Mask2Former code calls a compiled CUDA kernel and falls back to a ``grid_sample``
formulation when that kernel is unavailable. Both compute, per query and head, a weighted sum of
bilinear samples: with ``L`` levels, ``P`` points and 4 bilinear corners that is a sum of
``4 L P`` rows of the value table, with weights = bilinear weight x attention weight. Here that
sum can be one ``F.embedding_bag`` call (a fused gather + weighted sum), which never
materialises the per-point samples ``grid_sample`` writes out and reads back: for CPU inference
with per-head widths of 16 or more it is 1.4-3x faster. ``grid_sample`` runs everywhere else
(``_uses_gather`` has the rule and the measurements): on GPUs, in the ONNX export
(``model.runtime.export_forms``: ``grid_sample`` needs opset >= 16; ``embedding_bag`` exports
poorly), for narrow heads (the gather's index arithmetic does not depend on the width) and
whenever gradients are needed
(``embedding_bag``'s backward sorts every index: forward + backward take 7x ``grid_sample``'s
time at the tiny demo model's shape, 1.2x at R50 widths).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "MSDeformAttn",
    "ms_deform_attn_core",
    "ms_deform_attn_gather",
    "ms_deform_attn_grid_sample",
]


def ms_deform_attn_core(
    value: torch.Tensor,
    spatial_shapes: list[tuple[int, int]],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Sample every level's value map at the given locations and take the weighted sum.

    Bilinear sampling with zero padding and ``align_corners=False`` (pixel ``loc * size - 0.5``).
    Runs ``ms_deform_attn_gather`` or ``ms_deform_attn_grid_sample`` as ``_uses_gather``
    decides; the two agree up to float rounding.

    Args:
        value: NxSxMxD per-head values of all levels, flattened level-major, row-major
            (S = sum of H_l * W_l).
        spatial_shapes: (H_l, W_l) of each of the L levels, in the order of ``value``.
        sampling_locations: NxLqxMxLxPx2 locations in [0, 1] (x first), per query, head, level
            and point.
        attention_weights: NxLqxMxLxP weights (softmax over L*P per head).

    Returns:
        NxLqx(M*D) attended values.
    """
    needs_grad = _needs_grad(value, sampling_locations, attention_weights)
    if _uses_gather(value.device, value.shape[-1], needs_grad):
        return ms_deform_attn_gather(value, spatial_shapes, sampling_locations, attention_weights)
    return ms_deform_attn_grid_sample(value, spatial_shapes, sampling_locations, attention_weights)


GATHER_MIN_HEAD_DIM = 16
"""Narrowest per-head value width for which the CPU gather beats ``grid_sample``."""


def _needs_grad(*tensors: torch.Tensor) -> bool:
    """Whether autograd will record an op on ``tensors`` (grad mode on, one requires grad)."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _uses_gather(device: torch.device, head_dim: int, needs_grad: bool) -> bool:
    """The ``embedding_bag`` gather or ``grid_sample``: the gather only for CPU inference.

    Measured on 2 CPU threads (forward, or forward + backward with ``needs_grad``), gather vs
    ``grid_sample``: R50 encoder layer at 480x864 (8 heads of 32, 8505 queries) 73 vs 236 ms;
    the same with heads of 16: 63 vs 89 ms, of 8: 53 vs 55 ms; the tiny model (4 heads of 8,
    570 queries) 2.7 vs 1.6 ms for one frame, 15 vs 7 ms for 8; with gradients 104 vs 15 ms
    (tiny, 8 frames) and 195 vs 159 ms (heads of 32, 2137 queries, 2 frames). On an H200
    cuDNN's ``grid_sample`` wins (0.84 ms against 1.71 ms at the R50 layer).
    """
    return device.type == "cpu" and not needs_grad and head_dim >= GATHER_MIN_HEAD_DIM


def ms_deform_attn_gather(
    value: torch.Tensor,
    spatial_shapes: list[tuple[int, int]],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """``ms_deform_attn_core`` as one weighted ``embedding_bag`` over the value rows.

    Each (image, query, head) is a bag of the 4 L P rows its bilinear corners read, weighted by
    bilinear x attention weight; corners outside a map get weight 0 (zero padding). Shapes as
    in ``ms_deform_attn_core``.
    """
    n, total, heads, dim = value.shape
    _, num_queries, _, levels, points, _ = sampling_locations.shape
    dtype, device = value.dtype, value.device
    # the value table: row ((n * M + m) * S + s) holds value[n, s, m]
    table = value.permute(0, 2, 1, 3).reshape(n * heads * total, dim)
    sizes = torch.tensor(spatial_shapes, device=device, dtype=torch.int64)  # (L, 2) as (H, W)
    height, width = sizes[:, 0], sizes[:, 1]
    starts = torch.cumsum(height * width, 0) - height * width  # (L,)
    wh = sizes.flip(-1).to(sampling_locations.dtype)  # (L, 2) as (W, H)
    pixel = sampling_locations * wh[:, None, :] - 0.5  # (N, Lq, M, L, P, 2)
    corner0 = pixel.floor()
    frac = pixel - corner0
    x0 = corner0[..., 0].to(torch.int64)
    y0 = corner0[..., 1].to(torch.int64)
    fx, fy = frac[..., 0], frac[..., 1]
    base = (
        torch.arange(n, device=device)[:, None, None] * heads
        + torch.arange(heads, device=device)[None, None, :]
    ) * total  # (N, 1, M): first row of each image's head in the table
    base = base[..., None, None] + starts[:, None]  # (N, 1, M, L, 1)
    w_l, h_l = width[:, None], height[:, None]  # (L, 1) broadcast over points
    indices, weights = [], []
    for dy, wy in ((0, 1 - fy), (1, fy)):
        for dx, wx in ((0, 1 - fx), (1, fx)):
            x, y = x0 + dx, y0 + dy
            inside = (x >= 0) & (x < w_l) & (y >= 0) & (y < h_l)
            indices.append(base + (y.clamp(0) * w_l + x.clamp(0)) * inside)
            weights.append(wx * wy * inside.to(wx.dtype))
    index = torch.stack(indices, -1).reshape(n * num_queries * heads, levels * points * 4)
    weight = (torch.stack(weights, -1) * attention_weights[..., None]).to(dtype)
    # in the values' dtype whatever autocast would pick (it needs table and weights alike)
    with torch.autocast(device.type, enabled=False):
        out = F.embedding_bag(
            index,
            table,
            mode="sum",
            per_sample_weights=weight.reshape(n * num_queries * heads, levels * points * 4),
        )  # (N * Lq * M, D), bags in (n, q, m) order
    return out.view(n, num_queries, heads * dim)


def ms_deform_attn_grid_sample(
    value: torch.Tensor,
    spatial_shapes: list[tuple[int, int]],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """``ms_deform_attn_core`` with one ``grid_sample`` per level (the reference formulation).

    Bilinear sampling with zero padding and ``align_corners=False`` (grid ``2 * loc - 1``),
    batched over images and heads; one ``grid_sample`` call per level because the levels have
    different sizes. Shapes as in ``ms_deform_attn_core``.
    """
    return _grid_sample_sum(value, spatial_shapes, 2 * sampling_locations - 1, attention_weights)


def _grid_sample_sum(
    value: torch.Tensor,
    spatial_shapes: list[tuple[int, int]],
    grids: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """``ms_deform_attn_grid_sample`` given ``grid_sample`` grids (2 * location - 1) directly."""
    n, _, heads, dim = value.shape
    _, num_queries, _, levels, points, _ = grids.shape
    value_list = value.split([h * w for h, w in spatial_shapes], dim=1)
    weights = attention_weights.transpose(1, 2).reshape(n * heads, 1, num_queries, levels, points)
    out = None
    for level, (h, w) in enumerate(spatial_shapes):
        # (N, H*W, M, D) -> (N*M, D, H, W)
        value_l = value_list[level].flatten(2).transpose(1, 2).reshape(n * heads, dim, h, w)
        # (N, Lq, M, P, 2) -> (N*M, Lq, P, 2)
        grid_l = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        sampled = F.grid_sample(
            value_l, grid_l, mode="bilinear", padding_mode="zeros", align_corners=False
        )  # (N*M, D, Lq, P)
        # Weighted sum level by level: never materialises the (N*M, D, Lq, L*P) stack of all
        # levels (about 100 MB per layer for R50 at 480x864); equal up to float rounding.
        part = (sampled * weights[..., level, :]).sum(-1)
        out = part if out is None else out + part
    assert out is not None
    return out.view(n, heads * dim, num_queries).transpose(1, 2).contiguous()


class MSDeformAttn(nn.Module):
    """Deformable attention over several feature levels (parameter names as in Mask2Former).

    Args:
        d_model: channel width C (divisible by ``n_heads``).
        n_levels: number of feature levels L.
        n_heads: attention heads M.
        n_points: sampling points P per head and level.
    """

    def __init__(self, d_model: int = 256, n_levels: int = 4, n_heads: int = 8, n_points: int = 4):
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"d_model {d_model} must be divisible by n_heads {n_heads}")
        self.d_model = d_model
        self.n_levels = n_levels
        self.n_heads = n_heads
        self.n_points = n_points
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Deformable-DETR init: offsets fan out on a ring, uniform attention weights."""
        nn.init.constant_(self.sampling_offsets.weight, 0.0)
        thetas = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = grid / grid.abs().max(-1, keepdim=True)[0]
        grid = grid.view(self.n_heads, 1, 1, 2).repeat(1, self.n_levels, self.n_points, 1)
        for i in range(self.n_points):
            grid[:, :, i, :] *= i + 1
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.view(-1))
        nn.init.constant_(self.attention_weights.weight, 0.0)
        nn.init.constant_(self.attention_weights.bias, 0.0)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.constant_(self.value_proj.bias, 0.0)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.constant_(self.output_proj.bias, 0.0)

    def forward(
        self,
        query: torch.Tensor,
        reference_points: torch.Tensor,
        input_flatten: torch.Tensor,
        spatial_shapes: list[tuple[int, int]],
    ) -> torch.Tensor:
        """Attend from each query to P points per head around its reference point on each level.

        Args:
            query: NxLqxC queries (content + position).
            reference_points: NxLqxLx2 normalised (x, y) reference points in [0, 1].
            input_flatten: NxSxC values of all levels (level-major, row-major).
            spatial_shapes: (H_l, W_l) per level.

        Returns:
            NxLqxC attention output.
        """
        n, num_queries, _ = query.shape
        value = self.value_proj(input_flatten)
        value = value.view(n, -1, self.n_heads, self.d_model // self.n_heads)
        weights = self.attention_weights(query).view(
            n, num_queries, self.n_heads, self.n_levels * self.n_points
        )
        weights = F.softmax(weights, -1).view(
            n, num_queries, self.n_heads, self.n_levels, self.n_points
        )
        # offsets are in pixels of each level: normalise by (W_l, H_l)
        # torch.as_tensor keeps traced sizes symbolic in the ONNX export (torch.tensor would
        # bake them in as constants)
        normalizer = torch.stack(
            [torch.stack([torch.as_tensor(w), torch.as_tensor(h)]) for h, w in spatial_shapes]
        ).to(device=query.device, dtype=query.dtype)
        needs_grad = _needs_grad(query, reference_points, input_flatten, *self.parameters())
        if self._gathers(query.device, value.shape[-1], needs_grad):
            offsets = self.sampling_offsets(query).view(
                n, num_queries, self.n_heads, self.n_levels, self.n_points, 2
            )
            locations = (
                reference_points[:, :, None, :, None, :]
                + offsets / normalizer[None, None, None, :, None, :]
            )
            out = ms_deform_attn_gather(value, spatial_shapes, locations, weights)
        else:
            out = _grid_sample_sum(
                value, spatial_shapes, self._grids(query, reference_points, normalizer), weights
            )
        return self.output_proj(out)

    def _gathers(self, device: torch.device, head_dim: int, needs_grad: bool) -> bool:
        """Whether to sample with the ``embedding_bag`` gather (``_uses_gather``'s rule)."""
        return _uses_gather(device, head_dim, needs_grad)

    def _grids(
        self, query: torch.Tensor, reference_points: torch.Tensor, normalizer: torch.Tensor
    ) -> torch.Tensor:
        """``grid_sample`` grids ``2 * (reference + offset / normalizer) - 1``, NxLqxMxLxPx2.

        The scale ``2 / normalizer`` is folded into the offset projection's weights and the
        reference term is added as one same-shape tensor: elementwise work on the
        NxLqxMxLxPx2 grid with broadcasting over heads and points costs ONNX Runtime about
        16 ms per R50 encoder layer at 480x864; this form leaves one plain addition.
        """
        n, num_queries = query.shape[:2]
        shape = (self.n_heads, self.n_levels, self.n_points, 2)
        scale = (2.0 / normalizer)[None, :, None, :].expand(shape).reshape(-1, 1)  # (M*L*P*2, 1)
        weight = self.sampling_offsets.weight * scale
        bias = self.sampling_offsets.bias * scale[:, 0]
        base = (2 * reference_points - 1)[:, :, None, :, None, :]  # (N, Lq, 1, L, 1, 2)
        base = base.expand(n, num_queries, *shape).reshape(n, num_queries, -1)
        return (F.linear(query, weight, bias) + base).view(n, num_queries, *shape)
