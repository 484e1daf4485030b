"""``TrackState`` codec: round trip, rejection of foreign payloads, size."""

from __future__ import annotations

import dataclasses
import json
import struct

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save as st_save

from model.tracker import codec, memory
from model.tracker.state import TrackState, init_state


def _random_state(
    seed: int, num_tracks: int, embed_dim: int, cache_size: int, num_classes: int
) -> TrackState:
    g = torch.Generator().manual_seed(seed)
    state, slots = memory.spawn(init_state(embed_dim, num_classes, cache_size), num_tracks)
    tensors = {}
    for name, value in state.tensors().items():
        if value.is_floating_point():
            tensors[name] = torch.randn(value.shape, generator=g)
        else:
            tensors[name] = torch.randint(0, 1000, value.shape, generator=g)
    tensors["track_ids"] = slots + 5
    if num_tracks:
        tensors["logit_max"][0] = float("-inf")
    return dataclasses.replace(
        state, frame_index=seed % 5000, next_track_id=num_tracks + 5, **tensors
    )


def _assert_equal(a: TrackState, b: TrackState) -> None:
    assert (a.frame_index, a.next_track_id) == (b.frame_index, b.next_track_id)
    for name, value in a.tensors().items():
        other = getattr(b, name)
        assert other.dtype == value.dtype, name
        assert torch.equal(value, other), name


state_params = st.tuples(
    st.integers(0, 2**31 - 1),
    st.integers(0, 12),
    st.integers(1, 16),
    st.integers(1, 10),
    st.integers(1, 6),
)


@settings(max_examples=40, deadline=None)
@given(state_params)
def test_exact_round_trip(params: tuple[int, int, int, int, int]) -> None:
    state = _random_state(*params)
    _assert_equal(state, codec.loads(codec.dumps(state, model_id="r50", compact=False)))


@settings(max_examples=40, deadline=None)
@given(state_params)
def test_compact_round_trip(params: tuple[int, int, int, int, int]) -> None:
    state = _random_state(*params)
    back = codec.loads(codec.dumps(state, model_id="r50"), expected_model_id="r50")
    exact = dataclasses.replace(back, embed_cache=state.embed_cache)
    _assert_equal(state, exact)
    assert back.embed_cache.dtype == torch.float32
    torch.testing.assert_close(back.embed_cache, state.embed_cache, atol=5e-3, rtol=1e-3)


def test_metadata_and_size() -> None:
    state = _random_state(3, 10, 256, 10, 40)
    data = codec.dumps(state, model_id="ctvis-r50")
    meta = codec.read_metadata(data)
    assert meta["schema_version"] == codec.SCHEMA_VERSION
    assert meta["model_id"] == "ctvis-r50"
    assert meta["frame_index"] == str(state.frame_index)
    assert meta["next_track_id"] == str(state.next_track_id)
    assert len(data) < 100 * 1024
    assert len(codec.dumps(_random_state(3, 1, 256, 10, 40))) < len(data) / 5
    assert b"pickle" not in data and data[8:9] == b"{"  # a JSON header, not a pickle


def _rewrite_meta(data: bytes, **changes: str) -> bytes:
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + size])
    header["__metadata__"].update(changes)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + data[8 + size :]


def test_rejects_unknown_version_and_other_model() -> None:
    data = codec.dumps(_random_state(1, 2, 8, 4, 3), model_id="a")
    with pytest.raises(ValueError, match="schema_version"):
        codec.loads(_rewrite_meta(data, schema_version="99"))
    with pytest.raises(ValueError, match="expected 'b'"):
        codec.loads(data, expected_model_id="b")
    codec.loads(data, expected_model_id="a")


def test_rejects_shape_mismatch_and_garbage() -> None:
    data = codec.dumps(_random_state(1, 2, 8, 4, 3))
    with pytest.raises(ValueError, match="shape"):
        codec.loads(_rewrite_meta(data, embed_dim="9"))
    with pytest.raises(ValueError, match="truncated|corrupt"):
        codec.loads(b"\x01")
    tensors = {k: v.contiguous() for k, v in _random_state(1, 2, 8, 4, 3).tensors().items()}
    del tensors["sg_embed"]
    meta = codec.read_metadata(data)
    with pytest.raises(ValueError, match="missing"):
        codec.loads(st_save(tensors, metadata=meta))


def test_compact_keeps_float32_when_values_overflow_float16() -> None:
    state = _random_state(5, 3, 8, 4, 3)
    state = dataclasses.replace(state, embed_cache=state.embed_cache * 1e5)
    _assert_equal(state, codec.loads(codec.dumps(state)))


def test_reads_schema_1_payloads_without_boxes() -> None:
    state = _random_state(2, 3, 8, 4, 3)
    tensors = {k: v.contiguous() for k, v in state.tensors().items() if k != "last_box"}
    meta = codec.read_metadata(codec.dumps(state, compact=False))
    old = st_save(tensors, metadata={**meta, "schema_version": "1"})
    back = codec.loads(old)
    assert torch.isnan(back.last_box).all() and back.last_box.shape == (3, 4)
    _assert_equal(dataclasses.replace(back, last_box=state.last_box), state)
    with pytest.raises(ValueError, match="missing"):  # version 2 must carry the boxes
        codec.loads(st_save(tensors, metadata=meta))
