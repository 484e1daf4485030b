"""Two CPU processes (torchrun, gloo) train a few steps; the replicas stay identical."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

CONFIG = Path(__file__).resolve().parents[2] / "training" / "configs" / "synth_test.yaml"


WORKER = """
import hashlib, json, os, sys
import torch
torch.set_num_threads(1)
from training.config import load_config
from training.loop import train

cfg = load_config(sys.argv[1], sys.argv[3:])
result = train(cfg, sys.argv[2])
params = [p.detach().cpu().contiguous() for p in result.model.parameters()]
digest = hashlib.sha256(b"".join(p.numpy().tobytes() for p in params)).hexdigest()
out = {"digest": digest, "losses": result.losses, "iteration": result.iteration}
rank = os.environ["RANK"]
with open(os.path.join(sys.argv[2], f"rank{rank}.json"), "w") as f:
    json.dump(out, f)
"""


def _torchrun() -> str:
    path = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    if path is None:  # pragma: no cover - torch always installs it
        pytest.skip("torchrun not found")
    return path


def test_two_gloo_replicas_stay_identical(tmp_path: Path) -> None:
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    out = tmp_path / "run"
    overrides = ["optim.max_iter=3", "checkpoint_period=3", "data.clips_per_batch=1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "error"}
    cmd = [_torchrun(), "--standalone", "--nproc_per_node", "2", str(worker), str(CONFIG),
           str(out), *overrides]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["iteration"] == ranks[1]["iteration"] == 3
    assert ranks[0]["digest"] == ranks[1]["digest"]
    assert ranks[0]["losses"] != ranks[1]["losses"]  # each rank saw its own clips
    saved = load_file(str(out / "checkpoints" / "iter_0000003" / "model.safetensors"))
    assert all(torch.isfinite(v).all() for v in saved.values())
    assert (out / "checkpoints" / "iter_0000003" / "rng_rank1.pt").is_file()
