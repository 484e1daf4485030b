"""The CTVIS per-frame network: backbone -> pixel decoder -> masked-attention decoder + heads.

Attribute names (``backbone``, ``sem_seg_head.pixel_decoder``, ``sem_seg_head.predictor``) are
chosen so that ``state_dict()`` keys equal the official checkpoint keys (minus ``criterion.*``).
The network holds no state, no loss and no tracker.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from model.nn.pixel_decoder import MSDeformAttnPixelDecoder
from model.nn.transformer_decoder import MaskedTransformerDecoder, Prediction
from model.structures import FrameOutputs

__all__ = ["SemSegHead", "Segmenter"]


class SemSegHead(nn.Module):
    """Container matching the reference ``sem_seg_head`` (pixel decoder + predictor)."""

    def __init__(
        self, pixel_decoder: MSDeformAttnPixelDecoder, predictor: MaskedTransformerDecoder
    ):
        super().__init__()
        self.pixel_decoder = pixel_decoder
        self.predictor = predictor

    def forward(
        self, features: dict[str, torch.Tensor], final_only: bool = False
    ) -> list[Prediction]:
        """Args: features backbone maps res2..res5; final_only: see the predictor.

        Returns: the decoder's predictions.
        """
        mask_features, multi_scale = self.pixel_decoder(features)
        return self.predictor(multi_scale, mask_features, final_only=final_only)


class Segmenter(nn.Module):
    """Per-frame instance segmenter with re-id embeddings.

    Args:
        backbone: module mapping Bx3xHxW to a dict ``res2..res5`` (exposes ``out_channels``).
        pixel_decoder: ``MSDeformAttnPixelDecoder`` over those features.
        predictor: ``MaskedTransformerDecoder``.
    """

    size_divisibility = 32

    def __init__(
        self,
        backbone: nn.Module,
        pixel_decoder: MSDeformAttnPixelDecoder,
        predictor: MaskedTransformerDecoder,
    ):
        super().__init__()
        self.backbone = backbone
        self.sem_seg_head = SemSegHead(pixel_decoder, predictor)

    def forward(self, pixels: torch.Tensor, return_aux: bool = False) -> FrameOutputs:
        """Segment a batch of frames independently.

        Args:
            pixels: Bx3xHpxWp float32 normalised RGB, zero-padded to multiples of 32
                (``FrameBatch.pixels``).
            return_aux: also return the earlier predictions in ``aux_outputs``.

        Returns:
            FrameOutputs with pred_logits BxQx(K+1), pred_masks BxQx(Hp/4)x(Wp/4) mask logits,
            pred_embeds BxQxD, pred_queries BxQxC and, if requested, the ``dec_layers``
            earlier predictions (learnable queries first).
        """
        predictions = self.sem_seg_head(self.backbone(pixels), final_only=not return_aux)
        return self._to_outputs(predictions, return_aux)

    def forward_intermediates(self, pixels: torch.Tensor) -> dict[str, Any]:
        """Forward that also returns every intermediate (for parity tests and debugging).

        Args:
            pixels: Bx3xHpxWp as in ``forward``.

        Returns:
            dict with ``backbone`` (res2..res5 maps), ``mask_features`` BxMx(Hp/4)x(Wp/4),
            ``multi_scale_features`` (three maps, /32, /16, /8), ``predictions`` (all
            ``dec_layers + 1`` prediction dicts) and ``outputs`` (FrameOutputs with aux).
        """
        features = self.backbone(pixels)
        mask_features, multi_scale = self.sem_seg_head.pixel_decoder(features)
        predictions = self.sem_seg_head.predictor(multi_scale, mask_features)
        return {
            "backbone": features,
            "mask_features": mask_features,
            "multi_scale_features": multi_scale,
            "predictions": predictions,
            "outputs": self._to_outputs(predictions, True),
        }

    @staticmethod
    def _to_outputs(predictions: list[Prediction], return_aux: bool) -> FrameOutputs:
        last = predictions[-1]
        aux = tuple(predictions[:-1]) if return_aux else ()
        return FrameOutputs(
            pred_logits=last["pred_logits"],
            pred_masks=last["pred_masks"],
            pred_embeds=last["pred_embeds"],
            pred_queries=last["pred_queries"],
            aux_outputs=aux,
        )
