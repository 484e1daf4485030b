"""Lossless deltas between two successive ``TrackState`` values.

A live frame changes a few rows of a session's state: the newest raw-embedding column and the
fused embeddings of the matched tracks, their counters, the rows of new tracks; pruned
tracks disappear. ``dumps_delta(prev, new)`` stores only that: for every new track the row it
came from in ``prev`` (or -1), and every sub-row (one ``embed_cache`` column of one track,
one row of the other fields) whose bits differ from that source row. ``apply_delta(prev,
data)`` rebuilds ``new`` bit for bit (NaN and -0.0 included: rows are compared as integers),
so a state folded from a snapshot and its deltas equals the state the tracker produced.
"""

from __future__ import annotations

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from model.tracker.codec import read_metadata
from model.tracker.state import TRACK_FIELDS, TrackState

DELTA_VERSION = "1"
_BITS = {
    torch.float32: torch.int32,
    torch.float64: torch.int64,
    torch.float16: torch.int16,
    torch.bfloat16: torch.int16,
}


def _subrows(value: torch.Tensor) -> torch.Tensor:
    """``value`` as [T, S, W] sub-rows: S = K columns of ``embed_cache``, else one row."""
    if value.dim() == 3:
        return value
    if value.dim() == 2:
        return value[:, None, :]
    return value[:, None, None]


def _as_bits(value: torch.Tensor) -> torch.Tensor:
    return value.view(_BITS[value.dtype]) if value.is_floating_point() else value


def source_rows(prev: TrackState, new: TrackState) -> torch.Tensor:
    """int64 [T_new]: the row of each ``new`` track in ``prev``, -1 for a new track."""
    prev_ids = prev.track_ids.cpu()
    new_ids = new.track_ids.cpu()
    if prev_ids.numel() == 0:
        return torch.full_like(new_ids, -1)
    match = new_ids[:, None] == prev_ids[None, :]
    return torch.where(match.any(dim=1), match.int().argmax(dim=1), -1).to(torch.int64)


def _gather(prev: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    """Rows ``src`` of ``prev`` (zeros where -1), on the CPU."""
    base = torch.zeros((src.shape[0], *prev.shape[1:]), dtype=prev.dtype)
    keep = src >= 0
    if bool(keep.any()):
        base[keep] = prev.cpu()[src[keep]]
    return base


def dumps_delta(prev: TrackState, new: TrackState) -> bytes:
    """The bytes that turn ``prev`` into ``new`` (see the module docstring).

    Raises:
        ValueError: the two states differ in embedding width, cache depth or classes.
    """
    sizes = ("embed_dim", "cache_size", "num_logits")
    if any(getattr(prev, s) != getattr(new, s) for s in sizes) and prev.num_tracks:
        raise ValueError("a delta needs two states of the same sizes")
    src = source_rows(prev, new)
    tensors: dict[str, torch.Tensor] = {"src": src}
    for name in TRACK_FIELDS:
        value = getattr(new, name).detach().cpu()
        base = _gather(getattr(prev, name).detach(), src)
        if base.dtype != value.dtype:
            base = base.to(value.dtype)
        rows, old = _subrows(value), _subrows(base)
        changed = (_as_bits(rows) != _as_bits(old)).flatten(2).any(dim=2).flatten()
        index = changed.nonzero().flatten()
        tensors[f"{name}.index"] = index
        tensors[f"{name}.value"] = rows.reshape(-1, rows.shape[2])[index].contiguous()
    metadata = {
        "delta_version": DELTA_VERSION,
        "base_frame_index": str(prev.frame_index),
        "frame_index": str(new.frame_index),
        "next_track_id": str(new.next_track_id),
        "num_tracks": str(new.num_tracks),
    }
    return st_save(tensors, metadata=metadata)


def apply_delta(prev: TrackState, data: bytes) -> TrackState:
    """``prev`` advanced by a ``dumps_delta(prev, new)`` payload: ``new``, bit for bit.

    Raises:
        ValueError: the delta was made from another version of the state, or is malformed.
    """
    meta = read_metadata(data)
    if meta.get("delta_version") != DELTA_VERSION:
        raise ValueError(f"unsupported state delta version {meta.get('delta_version')!r}")
    if int(meta["base_frame_index"]) != prev.frame_index:
        raise ValueError(
            f"state delta applies to frame {meta['base_frame_index']}, "
            f"the state is at frame {prev.frame_index}"
        )
    tensors = st_load(data)
    src = tensors["src"]
    out: dict[str, torch.Tensor] = {}
    for name in TRACK_FIELDS:
        old = getattr(prev, name)
        base = _gather(old.detach(), src)
        rows = _subrows(base)
        flat = rows.reshape(-1, rows.shape[2])
        index, value = tensors[f"{name}.index"], tensors[f"{name}.value"]
        if index.numel():
            if value.shape != (index.shape[0], flat.shape[1]):
                raise ValueError(f"state delta field {name} has the wrong shape")
            flat[index] = value.to(flat.dtype)
        out[name] = base.to(old.device)
    return TrackState(
        frame_index=int(meta["frame_index"]),
        next_track_id=int(meta["next_track_id"]),
        **out,
    )
