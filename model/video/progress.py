"""Mid-video checkpoints of offline tracking: tracker state + accumulated tracks as bytes.

A video job saves one of these every few clips so that a worker that dies mid-video can be
replaced by another that resumes from the last checkpoint (``track_frames(resume=...)``).
Nothing is pickled: the state goes through ``model.tracker.codec`` and the accumulator's tensors
through safetensors.

Layout::

    b"CTVP2" | u64 len(state) | codec state | u64 len(meta) | meta JSON | safetensors tensors

(big-endian lengths). The accumulator's metadata sits in its own frame ahead of the tensors, so
``progress_frames`` reads it without touching the tensors.
"""

from __future__ import annotations

import json
import struct
from typing import Any

from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from model.config import TrackerConfig
from model.postprocess import MaskSizes, VideoAccumulator
from model.tracker import codec
from model.tracker.state import TrackState

_MAGIC = b"CTVP2"
_LEN = struct.Struct(">Q")


def dump_progress(state: TrackState, accumulator: VideoAccumulator) -> bytes:
    """Serialise a mid-video checkpoint (tracker state + accumulated tracks), losslessly."""
    meta, tensors = accumulator.snapshot()
    state_bytes = codec.dumps(state, compact=False)
    meta_bytes = json.dumps(meta).encode()
    return b"".join(
        (
            _MAGIC,
            _LEN.pack(len(state_bytes)),
            state_bytes,
            _LEN.pack(len(meta_bytes)),
            meta_bytes,
            st_save(tensors),
        )
    )


def _split(data: bytes) -> tuple[bytes, dict[str, Any], bytes]:
    """(state bytes, accumulator metadata, safetensors bytes) of a ``dump_progress`` payload."""
    if not data.startswith(_MAGIC):
        raise ValueError("not a ctvis video progress checkpoint")
    try:
        at = len(_MAGIC)
        (state_len,) = _LEN.unpack_from(data, at)
        state = data[at + _LEN.size : at + _LEN.size + state_len]
        at += _LEN.size + state_len
        (meta_len,) = _LEN.unpack_from(data, at)
        meta = json.loads(data[at + _LEN.size : at + _LEN.size + meta_len])
        tensors = data[at + _LEN.size + meta_len :]
    except (struct.error, ValueError) as exc:
        raise ValueError(f"corrupt video progress checkpoint: {exc}") from exc
    if len(state) != state_len or not isinstance(meta, dict) or "num_frames" not in meta:
        raise ValueError("corrupt video progress checkpoint: truncated")
    return state, meta, tensors


def progress_frames(data: bytes) -> int:
    """Frames covered by a ``dump_progress`` payload, read from its metadata only."""
    return int(_split(data)[1]["num_frames"])


def load_progress(
    data: bytes, tracker_cfg: TrackerConfig, sizes: MaskSizes | None
) -> tuple[TrackState, VideoAccumulator]:
    """Inverse of ``dump_progress``; raises ``ValueError`` on a foreign or corrupt payload."""
    state_bytes, meta, rest = _split(data)
    state = codec.loads(state_bytes)
    tensors = st_load(rest) if meta["entries"] else {}
    return state, VideoAccumulator.restore(tracker_cfg, sizes, meta, tensors)
