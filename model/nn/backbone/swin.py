"""Swin Transformer trunk with Mask2Former's ``D2SwinTransformer`` semantics and key names.

Parameter and buffer names match the official checkpoints under the ``backbone.`` prefix
(``patch_embed.*``, ``layers.{i}.blocks.{j}.*``, ``layers.{i}.downsample.*``, ``norm{0..3}.*``);
the reference is ``D2SwinTransformer`` in ``mask2former/modeling/backbone/swin.py``, vendored in
https://github.com/KainingYing/CTVIS. Shapes are taken from the input tensor on every call
and no Python branch looks at tensor values: the padding amounts and the shifted-window region
mask are computed with tensor arithmetic on the (possibly traced) sizes. The eager forms skip
zero-width padding and cache window plans per size; ``model.runtime.export_forms`` swaps in
forms that keep H and W dynamic when the network is traced to ONNX.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.config import SwinConfig
from model.nn.backbone.swin_blocks import LAYER_NORM_EPS, SwinBlock, WindowAttention
from model.nn.backbone.swin_windows import (
    WindowPlan,
    cached_window_plan,
    pad_amount,
    shifted_window_mask,
)


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
        if height % 2 or width % 2:  # (F.pad copies even when padding by 0)
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
        hp = height + pad_amount(height, ws)
        wp = width + pad_amount(width, ws)
        mask = None
        if len(self.blocks) > 1:  # only odd blocks are shifted
            mask = shifted_window_mask(hp, wp, ws, self.shift, x.device).to(x.dtype)
        plans = self._plans(height, width, x.device)  # block j (shifted iff odd): plans[j % 2]
        for j, block in enumerate(self.blocks):
            x = block(x, height, width, mask, plans[j % 2])
        down = self.downsample(x, height, width) if self.downsample is not None else None
        return x, down

    def _plans(self, height: int, width: int, device: torch.device) -> list[WindowPlan | None]:
        """Window plans of the unshifted and the shifted blocks, or None: attend padded maps.

        Only maps that need window padding take plans: the plan's gain is the padded tokens
        ``qkv`` and ``proj`` skip (``SwinBlock._attend_planned``). The shifted blocks' plan
        groups windows by mask pattern; plans are cached per size.
        """
        ws = self.window_size
        if not self.planned or (height % ws == 0 and width % ws == 0):
            return [None, None]
        return [
            cached_window_plan(height, width, ws, shift, shift > 0, device)
            for shift in (0, self.shift)[: len(self.blocks)]
        ]


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
        x = F.pad(x, (0, pad_amount(x.shape[3], p), 0, pad_amount(x.shape[2], p)))
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
