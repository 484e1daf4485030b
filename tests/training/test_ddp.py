"""Two CPU processes (torchrun, gloo) train a few steps; the replicas stay identical, also
without the contrastive loss (parameters unused by the loss), and the shared-OUT check."""

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

from training.config import load_config
from training.loop import init_segmenter

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


def _two_ranks(script: str, tmp_path: Path, *args: str) -> None:
    """Run ``script`` in two gloo processes under torchrun; fail with their stderr."""
    worker = tmp_path / "worker.py"
    worker.write_text(script)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "error"}
    cmd = [_torchrun(), "--standalone", "--nproc_per_node", "2", str(worker), *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]


def _train_two_ranks(tmp_path: Path, *overrides: str) -> tuple[Path, list[dict]]:
    out = tmp_path / "run"
    sets = ["optim.max_iter=3", "checkpoint_period=3", "data.clips_per_batch=1", *overrides]
    _two_ranks(WORKER, tmp_path, str(CONFIG), str(out), *sets)
    return out, [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


def test_two_gloo_replicas_stay_identical(tmp_path: Path) -> None:
    out, ranks = _train_two_ranks(tmp_path)
    assert ranks[0]["iteration"] == ranks[1]["iteration"] == 3
    assert ranks[0]["digest"] == ranks[1]["digest"]
    assert ranks[0]["losses"] != ranks[1]["losses"]  # each rank saw its own clips
    saved = load_file(str(out / "checkpoints" / "iter_0000003" / "model.safetensors"))
    assert all(torch.isfinite(v).all() for v in saved.values())
    assert (out / "checkpoints" / "iter_0000003" / "rng_rank1.pt").is_file()


def test_ddp_trains_without_the_contrastive_loss(tmp_path: Path) -> None:
    """``cl.enabled: false`` leaves the re-id head out of the loss; 3 DDP iterations run and
    that head keeps its initial weights, as in a one-process run (no gradient, no step)."""
    out, ranks = _train_two_ranks(tmp_path, "cl.enabled=false")
    assert ranks[0]["iteration"] == ranks[1]["iteration"] == 3
    assert ranks[0]["digest"] == ranks[1]["digest"]
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records] == [1, 2, 3]
    assert not any("loss_reid" in r for r in records)
    saved = load_file(str(out / "checkpoints" / "iter_0000003" / "model.safetensors"))
    initial = init_segmenter(load_config(CONFIG), tmp_path).state_dict()
    reid = [k for k in saved if ".reid_embed." in k]
    assert reid and all(torch.equal(saved[k], initial[k]) for k in reid)
    moved = [k for k in saved if "class_embed" in k]
    assert any(not torch.equal(saved[k], initial[k]) for k in moved), "the rest trains"


SHARED_CHECK = """
import json, sys
from pathlib import Path
import torch.distributed as dist
from training.distributed import SharedFilesystemError, check_shared_out_dir, setup_distributed

env = setup_distributed("cpu")
outcomes = []
for dirs in (sys.argv[1:3], sys.argv[3:5]):  # (rank 0's OUT, rank 1's OUT)
    out = Path(dirs[env.rank])
    try:
        check_shared_out_dir(out, env, timeout_s=0.5)
        outcomes.append("ok")
    except SharedFilesystemError as exc:
        outcomes.append(str(exc))
    outcomes.append(sorted(p.name for p in out.iterdir()) if out.is_dir() else None)
Path(sys.argv[5], f"rank{env.rank}.json").write_text(json.dumps(outcomes))
dist.destroy_process_group()
"""


def test_shared_out_check_passes_on_one_dir_and_names_out_otherwise(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    local0, local1 = tmp_path / "node0", tmp_path / "node1"
    local1.mkdir()  # node 1's own disk: the same path would exist, but empty
    _two_ranks(SHARED_CHECK, tmp_path, str(shared), str(shared), str(local0), str(local1),
               str(tmp_path))  # fmt: skip
    for rank, local in ((0, local0), (1, local1)):
        ok, listing, error, _ = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert ok == "ok" and listing == [], "the marker is removed after the check"
        assert error.startswith(f"OUT={local}: rank(s) [1] cannot see")
        assert "shared by all nodes" in error
