"""Mask2Former ``MSDeformAttnPixelDecoder``: deformable encoder over res3..res5 + one FPN level.

Parameter names match ``sem_seg_head.pixel_decoder.*`` of the official checkpoints.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from model.nn.ops.ms_deform_attn import MSDeformAttn

__all__ = ["sine_position_encoding", "MSDeformAttnPixelDecoder"]


def sine_position_encoding(
    x: torch.Tensor, num_pos_feats: int, temperature: float = 10000.0
) -> torch.Tensor:
    """DETR sine position encoding (normalised, scale 2*pi) computed from the map size only.

    Args:
        x: BxCxHxW feature map (only its shape, dtype and device are used).
        num_pos_feats: features per axis (half of the output channels).
        temperature: frequency base.

    Returns:
        Bx(2*num_pos_feats)xHxW float32: ``[y-part, x-part]``, each interleaving sin and cos.
    """
    b, _, h, w = x.shape
    ones = torch.ones((b, h, w), dtype=torch.float32, device=x.device)
    y_embed = ones.cumsum(1)
    x_embed = ones.cumsum(2)
    eps = 1e-6
    scale = 2 * math.pi
    y_embed = y_embed / (y_embed[:, -1:, :] + eps) * scale
    x_embed = x_embed / (x_embed[:, :, -1:] + eps) * scale
    dim_t = torch.arange(num_pos_feats, dtype=torch.float32, device=x.device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_pos_feats)
    pos_x = x_embed[:, :, :, None] / dim_t
    pos_y = y_embed[:, :, :, None] / dim_t
    pos_x = torch.stack((pos_x[:, :, :, 0::2].sin(), pos_x[:, :, :, 1::2].cos()), dim=4).flatten(3)
    pos_y = torch.stack((pos_y[:, :, :, 0::2].sin(), pos_y[:, :, :, 1::2].cos()), dim=4).flatten(3)
    return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)


class EncoderLayer(nn.Module):
    """Post-norm deformable self-attention + FFN layer (``transformer.encoder.layers.k``)."""

    def __init__(self, d_model: int, d_ffn: int, n_levels: int, n_heads: int, n_points: int):
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.norm2 = nn.LayerNorm(d_model)
        nn.init.xavier_uniform_(self.linear1.weight)
        nn.init.xavier_uniform_(self.linear2.weight)

    def forward(
        self,
        src: torch.Tensor,
        pos: torch.Tensor,
        reference_points: torch.Tensor,
        spatial_shapes: list[tuple[int, int]],
    ) -> torch.Tensor:
        """Args: src, pos BxSxC; reference_points BxSxLx2. Returns: BxSxC."""
        src = self.norm1(src + self.self_attn(src + pos, reference_points, src, spatial_shapes))
        return self.norm2(src + self.linear2(F.relu(self.linear1(src))))


class Encoder(nn.Module):
    """Stack of ``EncoderLayer`` (``transformer.encoder``)."""

    def __init__(self, num_layers: int, **layer_kwargs: int):
        super().__init__()
        self.layers = nn.ModuleList([EncoderLayer(**layer_kwargs) for _ in range(num_layers)])

    def forward(
        self,
        src: torch.Tensor,
        pos: torch.Tensor,
        reference_points: torch.Tensor,
        spatial_shapes: list[tuple[int, int]],
    ) -> torch.Tensor:
        """Args: src, pos BxSxC; reference_points BxSxLx2. Returns: BxSxC."""
        for layer in self.layers:
            src = layer(src, pos, reference_points, spatial_shapes)
        return src


class DeformableEncoder(nn.Module):
    """``transformer``: level embeddings + reference points + deformable encoder."""

    def __init__(self, d_model: int, d_ffn: int, num_layers: int, n_heads: int, n_points: int):
        super().__init__()
        self.n_levels = 3
        self.level_embed = nn.Parameter(torch.empty(self.n_levels, d_model))
        self.encoder = Encoder(
            num_layers,
            d_model=d_model,
            d_ffn=d_ffn,
            n_levels=self.n_levels,
            n_heads=n_heads,
            n_points=n_points,
        )
        nn.init.normal_(self.level_embed)

    @staticmethod
    def reference_points(
        spatial_shapes: list[tuple[int, int]], batch: int, device: torch.device
    ) -> torch.Tensor:
        """Pixel centres of every level, normalised, repeated for each level.

        Returns:
            BxSxLx2 (x, y) in (0, 1).
        """
        points = []
        for h, w in spatial_shapes:
            # arange + 0.5 equals linspace(0.5, h - 0.5, h) exactly and, unlike linspace,
            # follows traced sizes in the ONNX export (dynamic H/W).
            ref_y, ref_x = torch.meshgrid(
                torch.arange(h, dtype=torch.float32, device=device) + 0.5,
                torch.arange(w, dtype=torch.float32, device=device) + 0.5,
                indexing="ij",
            )
            points.append(torch.stack((ref_x.reshape(-1) / w, ref_y.reshape(-1) / h), -1))
        ref = torch.cat(points, 0)
        return ref[None, :, None, :].expand(batch, -1, len(spatial_shapes), -1)

    def forward(self, srcs: list[torch.Tensor], pos_embeds: list[torch.Tensor]) -> torch.Tensor:
        """Encode the flattened levels.

        Args:
            srcs: per level BxCxH_lxW_l projected features (level 0 = coarsest).
            pos_embeds: per level BxCxH_lxW_l position encodings.

        Returns:
            BxSxC encoded tokens, level-major, row-major (S = sum H_l*W_l).
        """
        # no int(): the ONNX tracer must see these as sizes of the input, not constants
        spatial_shapes = [(s.shape[2], s.shape[3]) for s in srcs]
        src_flat = torch.cat([s.flatten(2).transpose(1, 2) for s in srcs], 1)
        pos_flat = torch.cat(
            [
                p.flatten(2).transpose(1, 2) + self.level_embed[lvl].view(1, 1, -1)
                for lvl, p in enumerate(pos_embeds)
            ],
            1,
        )
        ref = self.reference_points(spatial_shapes, src_flat.shape[0], src_flat.device)
        return self.encoder(src_flat, pos_flat, ref, spatial_shapes)


class ConvGroupNorm(nn.Conv2d):
    """Conv followed by a ``norm`` GroupNorm(32, C) submodule (detectron2 ``Conv2d`` with GN)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: int = 0):
        super().__init__(in_channels, out_channels, kernel_size, padding=padding, bias=False)
        self.norm = nn.GroupNorm(32, out_channels)
        # c2_xavier_fill: Kaiming uniform with a=1
        nn.init.kaiming_uniform_(self.weight, a=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x BxCinxHxW. Returns: BxCoutxHxW."""
        return self.norm(super().forward(x))


class MSDeformAttnPixelDecoder(nn.Module):
    """Pixel decoder producing per-pixel mask features and the decoder's multi-scale memory.

    Args:
        in_channels: channels of ``res2``..``res5`` from the backbone.
        conv_dim: width C of the encoder and FPN.
        mask_dim: channels of the mask features.
        num_layers: deformable encoder layers.
        num_heads: deformable attention heads.
        ffn_dim: encoder FFN width (hard-coded 1024 in the reference).
        num_points: sampling points per head and level (hard-coded 4 in the reference).
    """

    def __init__(
        self,
        in_channels: dict[str, int],
        conv_dim: int = 256,
        mask_dim: int = 256,
        num_layers: int = 6,
        num_heads: int = 8,
        ffn_dim: int = 1024,
        num_points: int = 4,
    ):
        super().__init__()
        self.conv_dim = conv_dim
        # encoder levels in top-down order: res5, res4, res3
        self.encoder_features = ["res5", "res4", "res3"]
        self.input_proj = nn.ModuleList()
        for name in self.encoder_features:
            conv = nn.Conv2d(in_channels[name], conv_dim, kernel_size=1)
            nn.init.xavier_uniform_(conv.weight, gain=1)
            assert conv.bias is not None  # Conv2d(bias=True) default
            nn.init.constant_(conv.bias, 0)
            self.input_proj.append(nn.Sequential(conv, nn.GroupNorm(32, conv_dim)))
        self.transformer = DeformableEncoder(conv_dim, ffn_dim, num_layers, num_heads, num_points)
        self.mask_features = nn.Conv2d(conv_dim, mask_dim, kernel_size=1)
        nn.init.kaiming_uniform_(self.mask_features.weight, a=1)
        assert self.mask_features.bias is not None  # Conv2d(bias=True) default
        nn.init.constant_(self.mask_features.bias, 0)
        # one FPN level (res2, stride 4)
        self.adapter_1 = ConvGroupNorm(in_channels["res2"], conv_dim, 1)
        self.layer_1 = ConvGroupNorm(conv_dim, conv_dim, 3, padding=1)

    def forward(self, features: dict[str, torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Encode the backbone features.

        Args:
            features: ``res2``..``res5`` backbone maps, BxC_kx(H/s)x(W/s).

        Returns:
            mask_features: Bxmask_dimx(H/4)x(W/4).
            multi_scale_features: three BxCx(H/s)x(W/s) maps ordered /32, /16, /8.
        """
        # the reference runs the pixel decoder in float32 even under mixed precision
        with torch.autocast(device_type=features["res2"].device.type, enabled=False):
            return self._forward_fp32(features)

    def _forward_fp32(
        self, features: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        srcs, pos = [], []
        for index, name in enumerate(self.encoder_features):
            x = features[name].float()
            srcs.append(self.input_proj[index](x))
            pos.append(sine_position_encoding(x, self.conv_dim // 2))
        memory = self.transformer(srcs, pos)
        batch = memory.shape[0]
        sizes = [s.shape[2] * s.shape[3] for s in srcs]
        outs = [
            z.transpose(1, 2).reshape(batch, -1, s.shape[2], s.shape[3])
            for z, s in zip(memory.split(sizes, dim=1), srcs, strict=True)
        ]
        lateral = self.adapter_1(features["res2"].float())
        top_down = F.interpolate(
            outs[-1], size=lateral.shape[-2:], mode="bilinear", align_corners=False
        )
        fpn = F.relu(self.layer_1(lateral + top_down))
        return self.mask_features(fpn), outs
