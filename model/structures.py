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


@dataclass(frozen=True)
class TrackAssignment:
    """What ``track_step`` decided for the N candidates of one frame (row order = Detections).

    Attributes:
        track_ids: N int64 public track id per candidate, -1 when the candidate was discarded.
        slots: N int64 row of the track in the *new* ``TrackState``, -1 when discarded.
        is_new: N bool, True where the candidate started a new track.
        frame_index: index of the frame this assignment belongs to.
    """

    track_ids: torch.Tensor
    slots: torch.Tensor
    is_new: torch.Tensor
    frame_index: int

    @property
    def kept(self) -> torch.Tensor:
        """N bool, True for candidates that received a track id."""
        return self.track_ids >= 0


@dataclass(frozen=True)
class Instance:
    """One tracked instance in one frame, at the original frame resolution.

    Attributes:
        track_id: public track id (stable across frames of a session).
        label: contiguous class id in 0..K-1 (argmax of the track's temporal class logits).
        score: probability of ``label`` under the track's temporal class logits.
        bbox: (x, y, w, h) of the binary mask in original-frame pixels; zeros when empty.
        rle: COCO RLE ``{"size": [H, W], "counts": str}`` of the binary mask.
        area: number of foreground pixels.
        category_id: dataset category id of ``label`` (``ModelConfig.category_id``); None
            when the producer did not map it.
    """

    track_id: int
    label: int
    score: float
    bbox: tuple[float, float, float, float]
    rle: dict[str, object]
    area: int
    category_id: int | None = None
