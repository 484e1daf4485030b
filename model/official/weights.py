"""Reading official CTVIS ``.pth`` and Mask2Former ``.pkl`` weight files, safely.

``.pth`` files go through ``torch.load(weights_only=True)``; ``.pkl`` files through an unpickler
that admits only numpy arrays and plain containers. Neither can execute code from the file.
"""

from __future__ import annotations

import importlib
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.checkpoint import CheckpointError

__all__ = ["CheckpointError", "official_key_to_ours", "read_official_weights"]


def official_key_to_ours(key: str) -> str | None:
    """Name in our state dict of an official checkpoint key, or None if the key is dropped.

    Dropped: ``criterion.*`` (loss buffers) and ``pixel_mean``/``pixel_std`` (preprocessing).
    Mask2Former's legacy ``static_query`` is renamed ``query_feat``.
    """
    if key.startswith("criterion.") or key in ("pixel_mean", "pixel_std"):
        return None
    return key.replace("static_query", "query_feat")


def _numpy_global(name: str) -> Any:
    # numpy >= 2 keeps the implementation in numpy._core; the numpy.core shim warns on access
    try:
        multiarray = importlib.import_module("numpy._core.multiarray")
    except ImportError:  # numpy < 2
        multiarray = importlib.import_module("numpy.core.multiarray")
    return getattr(multiarray, name)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that admits numpy arrays, dtypes and plain containers, and nothing else."""

    _MULTIARRAY = ("numpy.core.multiarray", "numpy._core.multiarray")

    def find_class(self, module: str, name: str) -> Any:
        if module in self._MULTIARRAY and name in ("_reconstruct", "scalar"):
            return _numpy_global(name)
        if module == "numpy" and name in ("ndarray", "dtype"):
            return getattr(np, name)
        if module == "collections" and name == "OrderedDict":
            from collections import OrderedDict

            return OrderedDict
        raise CheckpointError(
            f"unsafe pickle: it references {module}.{name}; only numpy arrays and plain "
            "containers are allowed in a .pkl checkpoint"
        )


def _load_pickle(path: Path) -> Any:
    try:
        with path.open("rb") as f:
            return _NumpyOnlyUnpickler(f, encoding="latin1").load()
    except CheckpointError:
        raise
    except Exception as exc:  # any parse failure of untrusted bytes
        raise CheckpointError(f"cannot read pickle checkpoint {path}: {exc}") from exc


def _load_torch(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # weights_only refusal, corrupt file, wrong format
        raise CheckpointError(
            f"cannot read {path} with torch.load(weights_only=True): {exc}. Official CTVIS .pth "
            "checkpoints hold only tensors; Mask2Former .pkl files must end in .pkl"
        ) from exc


def read_official_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], str]:
    """Read an official checkpoint into a flat state dict.

    Args:
        path: CTVIS ``.pth`` (a detectron2 dict with ``"model"``, or a bare state dict) or a
            Mask2Former ``.pkl`` (pickled dict of numpy arrays, maybe under ``"model"``).

    Returns:
        (state dict with official key names and CPU tensors, kind ``"pth"`` or ``"pkl"``).

    Raises:
        CheckpointError: the file is missing, unreadable, unsafe or not a state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    kind = "pkl" if path.suffix == ".pkl" else "pth"
    raw = _load_pickle(path) if kind == "pkl" else _load_torch(path)
    if isinstance(raw, Mapping) and isinstance(raw.get("model"), Mapping):
        raw = raw["model"]
    if not isinstance(raw, Mapping):
        raise CheckpointError(f"{path} does not hold a state dict (got {type(raw).__name__})")
    state: dict[str, torch.Tensor] = {}
    for key, value in raw.items():
        if not isinstance(key, str):
            raise CheckpointError(f"{path}: state dict key {key!r} is not a string")
        if isinstance(value, np.ndarray):
            if value.dtype == object:
                raise CheckpointError(f"{path}: entry {key} is an object array, not numbers")
            value = torch.from_numpy(np.ascontiguousarray(value))
        if isinstance(value, torch.Tensor):
            state[key] = value
        elif not key.startswith("__"):  # e.g. "__author__" metadata strings are fine
            raise CheckpointError(
                f"{path}: entry {key} is a {type(value).__name__}, not a tensor or array"
            )
    if not state:
        raise CheckpointError(f"{path} holds no tensors")
    return state, kind
