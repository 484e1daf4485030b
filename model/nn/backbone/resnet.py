"""ResNet trunk with detectron2 semantics (FrozenBN or GN, stride in the 3x3 conv).

Module names follow detectron2 (``stem.conv1``, ``res2.0.conv1.norm``, ``res2.0.shortcut``) so
that official checkpoints load with the ``backbone.`` prefix only.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from model.config import ResNetConfig

__all__ = ["FrozenBatchNorm2d", "ConvNorm", "BottleneckBlock", "ResNet"]

# blocks per stage res2..res5 for the bottleneck depths
_STAGE_BLOCKS: dict[int, tuple[int, int, int, int]] = {
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm with fixed statistics and affine parameters, all stored as buffers.

    Args:
        num_features: channels C.
        eps: added to the running variance (detectron2 uses 1e-5).
    """

    weight: torch.Tensor
    bias: torch.Tensor
    running_mean: torch.Tensor
    running_var: torch.Tensor

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features) - eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply ``x * scale + shift`` per channel.

        Args:
            x: BxCxHxW.

        Returns:
            BxCxHxW, same dtype as ``x``.
        """
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale.reshape(1, -1, 1, 1).to(x.dtype) + shift.reshape(1, -1, 1, 1).to(x.dtype)


class ConvNorm(nn.Conv2d):
    """detectron2 ``Conv2d``: a bias-free conv whose output goes through a ``norm`` submodule."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        groups: int = 1,
        norm: str = "FrozenBN",
    ):
        super().__init__(
            in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=False
        )
        self.norm: FrozenBatchNorm2d | nn.GroupNorm
        if norm == "FrozenBN":
            self.norm = FrozenBatchNorm2d(out_channels)
        elif norm == "GN":
            self.norm = nn.GroupNorm(math.gcd(32, out_channels), out_channels)
        else:
            raise ValueError(f"unknown ResNet norm {norm!r}; use 'FrozenBN' or 'GN'")
        # c2_msra_fill: Kaiming normal, fan_out, ReLU gain
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Conv then the norm. Args: x BxCinxHxW. Returns: BxCoutxH'xW'.

        A FrozenBN affine is folded into the conv (weight * scale, bias = shift): one op
        instead of three full-size passes over the output (about 10% of an R50 forward on
        CPU), equal up to float rounding. The buffers stay as they are in the state dict.
        """
        norm = self.norm
        if isinstance(norm, nn.GroupNorm):
            return norm(super().forward(x))
        scale = norm.weight * (norm.running_var + norm.eps).rsqrt()
        shift = norm.bias - norm.running_mean * scale
        weight = self.weight * scale.reshape(-1, 1, 1, 1).to(self.weight.dtype)
        return F.conv2d(
            x, weight, shift.to(x.dtype), self.stride, self.padding, self.dilation, self.groups
        )


class BasicStem(nn.Module):
    """7x7 stride-2 conv + FrozenBN + ReLU + 3x3 stride-2 max-pool (output stride 4)."""

    def __init__(self, in_channels: int, out_channels: int, norm: str = "FrozenBN"):
        super().__init__()
        self.conv1 = ConvNorm(in_channels, out_channels, 7, stride=2, padding=3, norm=norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x Bx3xHxW. Returns: BxCx(H/4)x(W/4)."""
        x = F.relu_(self.conv1(x))
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


class BottleneckBlock(nn.Module):
    """1x1 -> 3x3 (carries the stride) -> 1x1 bottleneck with a projection shortcut if needed.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        bottleneck_channels: width of the 3x3 conv.
        stride: spatial stride of the block.
        num_groups: groups of the 3x3 conv.
        norm: "FrozenBN" or "GN"; with GN the last norm of the residual branch starts at zero
            (the block starts as its shortcut), which lets a trunk train from scratch.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        bottleneck_channels: int,
        stride: int = 1,
        num_groups: int = 1,
        norm: str = "FrozenBN",
    ):
        super().__init__()
        self.shortcut: ConvNorm | None = None
        if in_channels != out_channels:
            self.shortcut = ConvNorm(in_channels, out_channels, 1, stride=stride, norm=norm)
        self.conv1 = ConvNorm(in_channels, bottleneck_channels, 1, norm=norm)
        self.conv2 = ConvNorm(
            bottleneck_channels,
            bottleneck_channels,
            3,
            stride=stride,
            padding=1,
            groups=num_groups,
            norm=norm,
        )
        self.conv3 = ConvNorm(bottleneck_channels, out_channels, 1, norm=norm)
        if isinstance(self.conv3.norm, nn.GroupNorm):
            nn.init.zeros_(self.conv3.norm.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x BxCinxHxW. Returns: BxCoutx(H/stride)x(W/stride)."""
        out = F.relu_(self.conv1(x))
        out = F.relu_(self.conv2(out))
        out = self.conv3(out)
        shortcut = x if self.shortcut is None else self.shortcut(x)
        return F.relu_(out + shortcut)


class ResNet(nn.Module):
    """Bottleneck ResNet returning the outputs of stages res2..res5.

    Args:
        cfg: depth and channel widths.

    Attributes:
        out_channels: channels of each returned level, e.g. ``{"res2": 256, ..., "res5": 2048}``.
        out_strides: stride of each returned level w.r.t. the input.
    """

    def __init__(self, cfg: ResNetConfig):
        super().__init__()
        stage_blocks = tuple(cfg.stage_blocks) or _STAGE_BLOCKS.get(cfg.depth, ())
        if not stage_blocks:
            raise ValueError(f"unsupported ResNet depth {cfg.depth}; use one of 50/101/152")
        if len(stage_blocks) != 4 or min(stage_blocks) < 1:
            raise ValueError(f"stage_blocks must be 4 positive counts, got {stage_blocks}")
        self.stem = BasicStem(3, cfg.stem_out_channels, cfg.norm)
        self.stage_names: list[str] = []
        self.out_channels: dict[str, int] = {}
        self.out_strides: dict[str, int] = {}
        in_channels = cfg.stem_out_channels
        out_channels = cfg.res2_out_channels
        bottleneck = cfg.num_groups * cfg.width_per_group
        for index, num_blocks in enumerate(stage_blocks):
            name = f"res{index + 2}"
            blocks = []
            for block_index in range(num_blocks):
                stride = 2 if (block_index == 0 and index > 0) else 1
                blocks.append(
                    BottleneckBlock(
                        in_channels, out_channels, bottleneck, stride, cfg.num_groups, cfg.norm
                    )
                )
                in_channels = out_channels
            self.add_module(name, nn.Sequential(*blocks))
            self.stage_names.append(name)
            self.out_channels[name] = out_channels
            self.out_strides[name] = 4 * 2**index
            out_channels *= 2
            bottleneck *= 2

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Run the trunk.

        Args:
            x: Bx3xHxW normalised RGB pixels (H, W multiples of 32).

        Returns:
            ``{"res2": Bx256x(H/4)x(W/4), "res3": .../8, "res4": .../16, "res5": .../32}``
            (channels from ``out_channels``).
        """
        x = self.stem(x)
        outputs: dict[str, torch.Tensor] = {}
        for name in self.stage_names:
            x = getattr(self, name)(x)
            outputs[name] = x
        return outputs
