"""``TrackState``: the tracker's memory bank as one immutable value of fixed-shape tensors.

Rows ("slots") are live tracklets in the insertion order of the reference ``MemoryBank``
ordered dict; pruning compacts rows but keeps their order. T below is the number of live
tracks, K the raw-embedding cache depth (reference ``maximum_cache``), D the embedding
width and C the number of classes (logits have C+1 columns, the last is "no object").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

# Per-track tensor fields, in serialisation order (every one has T as its first dim).
TRACK_FIELDS: tuple[str, ...] = (
    "track_ids",
    "sg_embed",
    "momentum_embed",
    "embed_cache",
    "score_cache",
    "cache_len",
    "exist_frames",
    "last_seen",
    "logit_sum",
    "logit_max",
    "entry_hits",
    "entry_tail",
    "last_box",
)


@dataclass(frozen=True)
class TrackState:
    """Memory bank of the online tracker (no masks, no device choice, no config inside).

    Attributes:
        frame_index: index of the next frame this state expects.
        next_track_id: id allocator (reference ``num_tracklets``); ids are never reused.
        track_ids: T int64 public ids, in slot (insertion) order.
        sg_embed: TxD similarity-guided fused embedding.
        momentum_embed: TxD momentum-fused embedding (``last = 0.25 last + 0.75 e``).
        embed_cache: TxKxD ring buffer of the raw embeddings of the last <=K updates:
            update u (0-based) of a track lives in column ``u % K``, so the newest is in
            column ``(exist_frames - 1) % K``; unused columns are zeros.
            ``memory.ordered_cache`` gives them oldest first.
        score_cache: TxK detection scores aligned with ``embed_cache``.
        cache_len: T int64 valid cache entries per track (<= K).
        exist_frames: T int64 number of updates so far (uncapped; reference ``exist_frames``).
        last_seen: T int64 frame index of the last update.
        logit_sum: Tx(C+1) sum of raw class logits over the frames of the current output
            entry (reset when the noise filter removes the entry).
        logit_max: Tx(C+1) element-wise max of those logits (-inf when no entry).
        entry_hits: T int64 frames in the current output entry; 0 = no entry.
        entry_tail: T int64 trailing frames without a match in the current output entry.
        last_box: Tx4 ``(x0, y0, x1, y1)`` box of the track's last matched mask, in pixels of
            the 1/4-resolution mask logits; only kept when ``TrackerConfig.box_iou_weight``
            is above 0 (the box cue is not in the reference), NaN otherwise.
    """

    frame_index: int
    next_track_id: int
    track_ids: torch.Tensor
    sg_embed: torch.Tensor
    momentum_embed: torch.Tensor
    embed_cache: torch.Tensor
    score_cache: torch.Tensor
    cache_len: torch.Tensor
    exist_frames: torch.Tensor
    last_seen: torch.Tensor
    logit_sum: torch.Tensor
    logit_max: torch.Tensor
    entry_hits: torch.Tensor
    entry_tail: torch.Tensor
    last_box: torch.Tensor

    @property
    def num_tracks(self) -> int:
        """Number of live tracklets T."""
        return int(self.track_ids.shape[0])

    @property
    def embed_dim(self) -> int:
        """Embedding width D."""
        return int(self.sg_embed.shape[1])

    @property
    def cache_size(self) -> int:
        """Raw-embedding cache depth K."""
        return int(self.embed_cache.shape[1])

    @property
    def num_logits(self) -> int:
        """Number of class logits C+1."""
        return int(self.logit_sum.shape[1])

    def tensors(self) -> dict[str, torch.Tensor]:
        """The per-track tensors by field name (all share dim 0 = T)."""
        return {name: getattr(self, name) for name in TRACK_FIELDS}

    def with_tensors(self, tensors: Mapping[str, torch.Tensor], **scalars: int) -> TrackState:
        """A copy with some per-track tensors (and ``frame_index`` / ``next_track_id``) replaced.

        The tracker builds several states per frame, so this skips ``dataclasses.replace``
        (~10 us: it re-reads the field list and reruns ``__init__``) for a plain copy of the
        attribute dict (~1 us); unknown names still raise.
        """
        changes: dict[str, Any] = {**tensors, **scalars}
        unknown = changes.keys() - _FIELD_NAMES
        if unknown:
            raise TypeError(f"TrackState has no field(s) {sorted(unknown)}")
        new = object.__new__(TrackState)
        new.__dict__.update(self.__dict__)
        new.__dict__.update(changes)
        return new

    def select(self, index: torch.Tensor) -> TrackState:
        """Rows ``index`` (int64 [T'] or bool [T]) of every per-track tensor, in that order."""
        return self.with_tensors({k: v[index] for k, v in self.tensors().items()})


_FIELD_NAMES = frozenset(f.name for f in dataclasses.fields(TrackState))


def init_state(
    embed_dim: int,
    num_classes: int,
    cache_size: int = 10,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> TrackState:
    """An empty state for a new video / session.

    Args:
        embed_dim: embedding width D.
        num_classes: number of foreground classes C (logits have C+1 columns).
        cache_size: raw-embedding cache depth K (``TrackerConfig.cache_size``).
        device: where the tensors live (follows the model; never hard-coded).
        dtype: float dtype of embeddings, scores and logits.

    Returns:
        A ``TrackState`` with T = 0 tracks, frame_index 0 and next_track_id 0.
    """

    def floats(*shape: int) -> torch.Tensor:
        return torch.zeros(shape, device=device, dtype=dtype)

    def ints() -> torch.Tensor:
        return torch.zeros(0, device=device, dtype=torch.int64)

    c1 = num_classes + 1
    return TrackState(
        frame_index=0,
        next_track_id=0,
        track_ids=ints(),
        sg_embed=floats(0, embed_dim),
        momentum_embed=floats(0, embed_dim),
        embed_cache=floats(0, cache_size, embed_dim),
        score_cache=floats(0, cache_size),
        cache_len=ints(),
        exist_frames=ints(),
        last_seen=ints(),
        logit_sum=floats(0, c1),
        logit_max=floats(0, c1),
        entry_hits=ints(),
        entry_tail=ints(),
        last_box=floats(0, 4),
    )


def expected_shapes(
    num_tracks: int, embed_dim: int, cache_size: int, num_logits: int
) -> dict[str, tuple[int, ...]]:
    """Shape every per-track tensor must have for the given sizes."""
    t, d, k, c1 = num_tracks, embed_dim, cache_size, num_logits
    return {
        "track_ids": (t,),
        "sg_embed": (t, d),
        "momentum_embed": (t, d),
        "embed_cache": (t, k, d),
        "score_cache": (t, k),
        "cache_len": (t,),
        "exist_frames": (t,),
        "last_seen": (t,),
        "logit_sum": (t, c1),
        "logit_max": (t, c1),
        "entry_hits": (t,),
        "entry_tail": (t,),
        "last_box": (t, 4),
    }


def check_state(state: TrackState) -> None:
    """Raise ``ValueError`` if the state's tensors disagree in shape or break invariants."""
    shapes = expected_shapes(state.num_tracks, state.embed_dim, state.cache_size, state.num_logits)
    for name, shape in shapes.items():
        got = tuple(getattr(state, name).shape)
        if got != shape:
            raise ValueError(f"TrackState.{name} has shape {got}, expected {shape}")
    if state.num_tracks:
        if int(state.track_ids.max()) >= state.next_track_id:
            raise ValueError("a track id is not below next_track_id")
        if int(state.cache_len.max()) > state.cache_size or int(state.cache_len.min()) < 1:
            raise ValueError("cache_len out of range [1, cache_size]")
        if int(state.last_seen.max()) >= state.frame_index:
            raise ValueError("a track was seen at or after frame_index")
        idle = state.entry_hits == 0  # no output entry: its logit records must be empty
        if bool((state.logit_sum[idle] != 0).any()) or bool(
            (state.logit_max[idle] != float("-inf")).any()
        ):
            raise ValueError("a track without an output entry has logits recorded")
