"""Typed values that flow between the model's stages (see the data flow in README)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class FrameBatch:
    """Preprocessed frames ready for ``Segmenter.forward``.

    Attributes:
        pixels: Bx3xHpxWp float32, RGB, normalised, zero-padded bottom/right to a multiple
            of the size divisibility.
        image_sizes: per frame (h, w) after the resize, before padding.
        original_sizes: per frame (H, W) of the decoded input frame.
    """

    pixels: torch.Tensor
    image_sizes: tuple[tuple[int, int], ...]
    original_sizes: tuple[tuple[int, int], ...]

    @property
    def padded_size(self) -> tuple[int, int]:
        """(Hp, Wp) of the padded tensor."""
        return int(self.pixels.shape[-2]), int(self.pixels.shape[-1])


@dataclass(frozen=True)
class FrameOutputs:
    """Final-layer predictions of the segmenter for a batch of frames.

    Attributes:
        pred_logits: BxQx(K+1) class logits; the last column is "no object".
        pred_masks: BxQx(Hp/4)x(Wp/4) mask logits at 1/4 of the padded input.
        pred_embeds: BxQxD instance embeddings (re-id head output, not normalised).
        pred_queries: BxQxhidden ``decoder_norm`` output, or None.
        aux_outputs: per earlier prediction (learnable queries first) a dict with
            ``pred_logits``, ``pred_masks``, ``pred_embeds``; empty unless requested.
    """

    pred_logits: torch.Tensor
    pred_masks: torch.Tensor
    pred_embeds: torch.Tensor
    pred_queries: torch.Tensor | None = None
    aux_outputs: tuple[dict[str, torch.Tensor], ...] = ()


@dataclass(frozen=True)
class Detections:
    """Candidates of one frame kept by ``select_candidates``, sorted by score (descending).

    Attributes:
        query_indices: N int64, the query each candidate came from.
        scores: N float32, max foreground class probability.
        logits: Nx(K+1) float32 raw class logits.
        mask_logits: Nxhxw float32 mask logits at 1/4 of the padded input.
        embeds: NxD float32 instance embeddings.
    """

    query_indices: torch.Tensor
    scores: torch.Tensor
    logits: torch.Tensor
    mask_logits: torch.Tensor
    embeds: torch.Tensor

    def __len__(self) -> int:
        return int(self.scores.shape[0])
