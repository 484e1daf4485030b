"""SIGTERM / SIGUSR1 stop a training run with a resumable checkpoint; the shared-OUT marker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from training.config import load_config
from training.distributed import Dist, StopSignals, check_shared_out_dir, marker_visible
from training.loop import STATE_FILE, latest_checkpoint, train

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "training" / "configs" / "synth_test.yaml"


def _records(out: Path) -> list[dict]:
    path = out / "log.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1], ids=lambda s: s.name)
def test_signal_checkpoints_and_resume_continues_there(tmp_path: Path, sig: int) -> None:
    out = tmp_path / "run"
    sets = ["optim.max_iter=400", "checkpoint_period=1000", "log_period=1"]
    cmd = [sys.executable, "-m", "cli", "train", "--config", str(CONFIG), "--out", str(out)]
    cmd += [arg for s in sets for arg in ("--set", s)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "error"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while len(_records(out)) < 2:  # let the first iterations run
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "training did not start"
            time.sleep(0.05)
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + sig, stderr[-3000:]
    assert f"stopped by {signal.Signals(sig).name}" in stderr
    records = _records(out)
    stopped = records[-1]
    k = stopped["iteration"]
    assert stopped["stop_signal"] == sig and 2 <= k < 400
    ckpt = latest_checkpoint(out)
    assert ckpt is not None and ckpt.name == f"iter_{k:07d}" and (ckpt / STATE_FILE).is_file()
    assert stopped["checkpoint"] == str(ckpt)
    assert [r["iteration"] for r in records if "loss" in r] == list(range(1, k + 1))

    torch.set_num_threads(1)
    cfg = load_config(CONFIG, sets)
    resumed = train(cfg, out, resume=True, stop_at=k + 2)
    assert resumed.iteration == k + 2 and resumed.stop_signal == 0
    assert len(resumed.losses) == 2 and np.isfinite(resumed.losses).all()
    after = [r["iteration"] for r in _records(out)[len(records) :] if "loss" in r]
    assert after == [k + 1, k + 2]


def test_stop_signals_flag_and_restore_handlers() -> None:
    before = signal.getsignal(signal.SIGUSR1)
    with StopSignals() as stop:
        assert stop.agreed(Dist()) == 0
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(0.01)  # Python runs the handler between bytecodes
        assert stop.agreed(Dist()) == signal.SIGUSR1
    assert signal.getsignal(signal.SIGUSR1) is before


def test_marker_visible_waits_for_the_token(tmp_path: Path) -> None:
    marker = tmp_path / "m"
    assert not marker_visible(marker, "abc", timeout_s=0.0)
    marker.write_text("other")
    assert not marker_visible(marker, "abc", timeout_s=0.3)
    marker.write_text("abc")
    assert marker_visible(marker, "abc", timeout_s=0.0)
    check_shared_out_dir(tmp_path / "nowhere", Dist())  # one process: nothing to check
    assert not (tmp_path / "nowhere").exists()
