"""Versioned, pickle-free ``TrackState`` codec (safetensors bytes + string metadata).

The raw-embedding cache is the bulk of a state (T x K x D). It only feeds the fusion weight
``beta`` (a mean cosine), so by default it is stored as float16, which keeps a 10-track,
D=256 state near 77 KB instead of 125 KB; ``tests/model/test_pipeline_fixture.py`` checks
that a round trip every frame does not change the fixture's track ids. Everything else is
stored exactly. Pass ``compact=False`` for a bit-exact round trip.
"""

from __future__ import annotations

import json
import struct

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from model.tracker.state import TRACK_FIELDS, TrackState, expected_shapes

SCHEMA_VERSION = "2"
# Version 1 had no ``last_box`` (the box cue); its payloads still load, with unknown boxes.
_READABLE_VERSIONS = ("1", SCHEMA_VERSION)
_FLOAT16_MAX = 65504.0
_INT_META = ("frame_index", "next_track_id", "num_tracks", "embed_dim", "cache_size", "num_logits")


def dumps(state: TrackState, model_id: str = "", compact: bool = True) -> bytes:
    """Serialise a state to safetensors bytes.

    Args:
        state: the tracker state (any device; tensors are copied to CPU).
        model_id: identifier of the checkpoint that produced the embeddings; ``loads`` can
            require it so a state from another model is rejected.
        compact: store ``embed_cache`` as float16 when its values fit.

    Returns:
        Bytes whose header metadata holds schema_version, frame_index, next_track_id,
        model_id, the sizes and the float dtype; size grows only with the number of tracks.
    """
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.tensors().items()}
    cache = tensors["embed_cache"]
    if compact and (cache.numel() == 0 or float(cache.abs().max()) <= _FLOAT16_MAX):
        tensors["embed_cache"] = cache.to(torch.float16)
    metadata = {
        "schema_version": SCHEMA_VERSION,
        "model_id": model_id,
        "float_dtype": str(state.sg_embed.dtype).removeprefix("torch."),
        "frame_index": str(state.frame_index),
        "next_track_id": str(state.next_track_id),
        "num_tracks": str(state.num_tracks),
        "embed_dim": str(state.embed_dim),
        "cache_size": str(state.cache_size),
        "num_logits": str(state.num_logits),
    }
    return st_save(tensors, metadata=metadata)


def read_metadata(data: bytes) -> dict[str, str]:
    """The string metadata of a ``dumps`` payload, without decoding tensors."""
    if len(data) < 8:
        raise ValueError("track state payload is truncated")
    (size,) = struct.unpack("<Q", data[:8])
    if size > len(data) - 8:
        raise ValueError("track state payload has a corrupt header")
    try:
        header = json.loads(data[8 : 8 + size])
    except ValueError as exc:
        raise ValueError("track state payload has a corrupt header") from exc
    meta = header.get("__metadata__")
    if not isinstance(meta, dict):
        raise ValueError("track state payload has no metadata")
    return {str(k): str(v) for k, v in meta.items()}


def loads(
    data: bytes,
    expected_model_id: str | None = None,
    device: torch.device | str | None = None,
) -> TrackState:
    """Decode bytes from ``dumps`` into a ``TrackState``.

    Args:
        data: the payload.
        expected_model_id: when given, the payload's ``model_id`` must equal it.
        device: where to put the tensors (CPU by default).

    Returns:
        The decoded state.

    Schema version 1 payloads (written before ``last_box`` existed) load with NaN boxes,
    i.e. no box cue for their tracks until they are matched again.

    Raises:
        ValueError: unknown schema version, model id mismatch, missing / unexpected tensors,
            or a tensor whose shape disagrees with the metadata.
    """
    meta = read_metadata(data)
    version = meta.get("schema_version")
    if version not in _READABLE_VERSIONS:
        raise ValueError(
            f"unsupported track state schema_version {version!r} "
            f"(readable: {', '.join(_READABLE_VERSIONS)})"
        )
    if expected_model_id is not None and meta.get("model_id") != expected_model_id:
        raise ValueError(
            f"track state was made by model {meta.get('model_id')!r}, "
            f"expected {expected_model_id!r}"
        )
    try:
        ints = {k: int(meta[k]) for k in _INT_META}
        float_dtype = getattr(torch, meta["float_dtype"])
    except (KeyError, ValueError, AttributeError) as exc:
        raise ValueError(f"track state metadata is incomplete or invalid: {exc}") from exc
    if not isinstance(float_dtype, torch.dtype) or not float_dtype.is_floating_point:
        raise ValueError(f"invalid float_dtype {meta['float_dtype']!r}")
    tensors = st_load(data)
    if version == "1" and "last_box" not in tensors:
        tensors["last_box"] = torch.full((ints["num_tracks"], 4), float("nan"))
    if set(tensors) != set(TRACK_FIELDS):
        missing = sorted(set(TRACK_FIELDS) - set(tensors))
        extra = sorted(set(tensors) - set(TRACK_FIELDS))
        raise ValueError(f"track state tensors mismatch: missing {missing}, unexpected {extra}")
    shapes = expected_shapes(
        ints["num_tracks"], ints["embed_dim"], ints["cache_size"], ints["num_logits"]
    )
    out: dict[str, torch.Tensor] = {}
    for name in TRACK_FIELDS:
        value = tensors[name]
        if tuple(value.shape) != shapes[name]:
            raise ValueError(
                f"track state tensor {name} has shape {tuple(value.shape)}, "
                f"metadata says {shapes[name]}"
            )
        if value.is_floating_point():
            value = value.to(float_dtype)
        elif value.dtype != torch.int64:
            raise ValueError(f"track state tensor {name} has dtype {value.dtype}")
        out[name] = value.to(device) if device is not None else value
    return TrackState(frame_index=ints["frame_index"], next_track_id=ints["next_track_id"], **out)
