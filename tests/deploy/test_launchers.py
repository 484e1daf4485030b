"""The cluster training launchers call torchrun with `ctvis train --config ... --out ...`."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from cli.main import SUBCOMMANDS, build_parser
from tests.deploy.conftest import DEPLOY, REPO

TRAIN = DEPLOY / "train"
STUB = '#!/usr/bin/env bash\nprintf "%s\\n" "$(basename "$0")" "$@" >> "$CALLS"\n'


def _stubs(tmp_path: Path) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("torchrun", "scontrol"):
        (bin_dir / name).write_text(STUB)
        (bin_dir / name).chmod(0o755)
    with (bin_dir / "scontrol").open("a") as scontrol:
        scontrol.write("printf 'gpu01\\ngpu02\\n'\n")
    # srun runs its command once, as Slurm would on a one-node allocation.
    (bin_dir / "srun").write_text('#!/usr/bin/env bash\nshift\nexec "$@"\n')
    (bin_dir / "srun").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "MASTER_"))}
    env.update(PATH=f"{bin_dir}:{env['PATH']}", CALLS=str(tmp_path / "calls"))
    return env


def test_scripts_parse() -> None:
    for script in TRAIN.iterdir():
        subprocess.run(["bash", "-n", str(script)], check=True)
        assert os.access(script, os.X_OK), script


def test_torchrun_launcher(tmp_path: Path) -> None:
    env = _stubs(tmp_path)
    env.update(CONFIG="training/configs/x.yaml", OUT="runs/x", NNODES="2", MASTER_ADDR="n0")
    extra = ["--set", "optim.lr=1e-4"]
    subprocess.run(["bash", str(TRAIN / "torchrun.sh"), *extra], env=env, check=True)
    calls = (tmp_path / "calls").read_text().splitlines()
    assert calls[0] == "torchrun"
    assert {"--nnodes=2", "--rdzv-endpoint=n0:29500", "--rdzv-backend=c10d"} <= set(calls)
    module = calls.index("-m")
    assert calls[module:] == ["-m", "cli", "train", "--config", "training/configs/x.yaml",
                              "--out", "runs/x", *extra]  # fmt: skip
    assert "train" in SUBCOMMANDS and (REPO / "cli" / "__main__.py").is_file()
    from torch.distributed.run import get_args_parser

    launcher = get_args_parser().parse_args(calls[1:])  # real torchrun flags
    assert (launcher.nnodes, launcher.module, launcher.training_script) == ("2", True, "cli")
    args = build_parser().parse_args(calls[module + 2 :])  # real `ctvis train` flags
    assert (args.config, args.out, args.overrides) == (
        "training/configs/x.yaml",
        "runs/x",
        extra[1:],
    )
    env.pop("CONFIG")
    failed = subprocess.run(["bash", str(TRAIN / "torchrun.sh")], env=env, capture_output=True)
    assert failed.returncode != 0 and b"CONFIG" in failed.stderr


def test_slurm_launcher(tmp_path: Path) -> None:
    env = _stubs(tmp_path)
    env.update(CONFIG="c.yaml", OUT=str(tmp_path / "run"), SLURM_JOB_NODELIST="gpu[01-02]",
               SLURM_NNODES="2", SLURM_GPUS_ON_NODE="8", SLURM_JOB_ID="42",
               SLURM_SUBMIT_DIR=str(REPO))  # fmt: skip
    text = (TRAIN / "slurm.sbatch").read_text()
    assert "#SBATCH --ntasks-per-node=1" in text and "#SBATCH --gpus-per-node=" in text
    subprocess.run(["bash", str(TRAIN / "slurm.sbatch")], env=env, check=True, cwd=tmp_path)
    calls = (tmp_path / "calls").read_text().splitlines()
    assert calls[:4] == ["scontrol", "show", "hostnames", "gpu[01-02]"]
    torchrun = calls[calls.index("torchrun") :]
    assert {"--nnodes=2", "--nproc-per-node=8", "--rdzv-id=slurm-42"} <= set(torchrun)
    assert "--rdzv-endpoint=gpu01:29500" in torchrun
    assert torchrun[-5:] == ["train", "--config", "c.yaml", "--out", str(tmp_path / "run")]
    assert (tmp_path / "run").is_dir() and "--resume" not in torchrun
    (tmp_path / "calls").unlink()
    env["SLURM_RESTART_COUNT"] = "1"  # requeued: continue from the newest checkpoint
    subprocess.run(["bash", str(TRAIN / "slurm.sbatch")], env=env, check=True, cwd=tmp_path)
    assert "--resume" in (tmp_path / "calls").read_text().splitlines()
