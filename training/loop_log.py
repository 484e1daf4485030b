"""Training logs: ``OUT/log.jsonl`` (one JSON record per line) and TensorBoard scalars.

Only rank 0 writes. TensorBoard is used when the ``tensorboard`` package is importable; every
numeric leaf of a record becomes a scalar named by its path (``loss_ce``, ``eval/AP``).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

__all__ = ["LOG_FILE", "TrainLogger", "flatten_record"]

LOG_FILE = "log.jsonl"


def flatten_record(record: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a nested record as ``a/b/c`` keys (e.g. ``eval/AP``)."""
    out: dict[str, float] = {}
    for key, value in record.items():
        if isinstance(value, dict):
            out.update(flatten_record(value, f"{prefix}{key}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[f"{prefix}{key}"] = float(value)
    return out


class TrainLogger:
    """JSONL log (+ TensorBoard when the package is importable), rank 0 only."""

    def __init__(self, out_dir: Path, enabled: bool) -> None:
        """Args: out_dir: the run directory; enabled: this is rank 0."""
        self.enabled = enabled
        self.path = out_dir / LOG_FILE
        self.tb: Any = None
        if enabled and importlib.util.find_spec("tensorboard") is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out_dir / "tensorboard"))

    def write(self, record: dict[str, Any]) -> None:
        """Append ``record`` (it must hold ``iteration``, the TensorBoard step)."""
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            step = int(record["iteration"])
            for key, value in flatten_record(record).items():
                if key != "iteration":
                    self.tb.add_scalar(key, value, step)

    def close(self) -> None:
        """Flush and close TensorBoard's writer."""
        if self.tb is not None:
            self.tb.close()
