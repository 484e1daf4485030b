"""The CTVIS network, tracker and outputs (imports neither ``service`` nor ``training``).

The small public surface is re-exported lazily so that ``import model.config`` stays light:
``ModelConfig``, ``PreprocessConfig``, ``TrackerConfig``, ``build_segmenter``, ``PRESETS``,
``load_checkpoint``, ``save_checkpoint``. ``model.tracker`` and ``model.pipeline`` are imported
by their own paths.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ModelConfig": "model.config",
    "PreprocessConfig": "model.config",
    "TrackerConfig": "model.config",
    "build_segmenter": "model.nn.build",
    "PRESETS": "model.nn.build",
    "load_checkpoint": "model.checkpoint",
    "save_checkpoint": "model.checkpoint",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'model' has no attribute {name!r}")
