"""Multi-scale deformable attention (Deformable DETR) in pure PyTorch.

The official Mask2Former code calls a compiled CUDA kernel and falls back to a ``grid_sample``
formulation when that kernel is unavailable; this module implements that fallback only. It runs on
any device and exports to ONNX (``grid_sample`` needs opset >= 16).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MSDeformAttn", "ms_deform_attn_core"]


def ms_deform_attn_core(
    value: torch.Tensor,
    spatial_shapes: list[tuple[int, int]],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Sample every level's value map at the given locations and take the weighted sum.

    Bilinear sampling with zero padding and ``align_corners=False`` (grid ``2 * loc - 1``),
    batched over images and heads; one ``grid_sample`` call per level because the levels have
    different sizes.

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
    n, _, heads, dim = value.shape
    _, num_queries, _, levels, points, _ = sampling_locations.shape
    value_list = value.split([h * w for h, w in spatial_shapes], dim=1)
    grids = 2 * sampling_locations - 1
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
        offsets = self.sampling_offsets(query).view(
            n, num_queries, self.n_heads, self.n_levels, self.n_points, 2
        )
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
        locations = (
            reference_points[:, :, None, :, None, :]
            + offsets / normalizer[None, None, None, :, None, :]
        )
        out = ms_deform_attn_core(value, spatial_shapes, locations, weights)
        return self.output_proj(out)
