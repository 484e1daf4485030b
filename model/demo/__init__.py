"""The bundled demo checkpoint: a tiny CTVIS model trained on the synthetic benchmark.

It is the embedded default model of ``ctvis serve`` and ``ctvis track`` when no checkpoint is
given. The weights are made by ``training/configs/synth_demo.yaml`` (see ``docs/experiments.md``
for the command and its accuracy) and shipped as package data beside this file.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["DEMO_CHECKPOINT", "demo_checkpoint"]

DEMO_CHECKPOINT = Path(__file__).resolve().parent
"""Directory of the bundled checkpoint (``config.json`` + ``model.safetensors``)."""


def demo_checkpoint() -> Path | None:
    """The bundled checkpoint directory, or None when this installation lacks its weights."""
    if (DEMO_CHECKPOINT / "model.safetensors").is_file() and (
        DEMO_CHECKPOINT / "config.json"
    ).is_file():
        return DEMO_CHECKPOINT
    return None
