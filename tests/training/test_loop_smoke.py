"""Short synthetic training runs: the loss falls, checkpoints serve, resume is exact."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cli.main import main
from model.checkpoint import load_checkpoint
from model.official.config import read_official_config
from training.config import ConfigError, InitConfig, TrainConfig, load_config
from training.data.synthetic import config_for, render_video
from training.loop import init_segmenter, latest_checkpoint, train
from training.loop_data import build_clip_loader, data_config_at

CONFIG = Path(__file__).resolve().parents[2] / "training" / "configs" / "synth_test.yaml"


def small_config(*overrides: str) -> TrainConfig:
    """The synthetic demo shrunk so that an iteration takes ~0.1 s on one CPU core."""
    return load_config(CONFIG, overrides)


@pytest.fixture(autouse=True)
def _threads() -> None:
    torch.set_num_threads(1)


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def test_loss_falls_and_checkpoint_tracks(tmp_path: Path) -> None:
    cfg = small_config()
    result = train(cfg, tmp_path / "run")
    losses = result.losses
    assert len(losses) == 24 and all(np.isfinite(losses))
    assert np.mean(losses[-4:]) < 0.8 * np.mean(losses[:4]), losses
    records = _log(tmp_path / "run")
    assert {"loss_ce", "loss_mask", "loss_dice", "loss_reid", "loss_aux_reid", "loss_ce_0"} <= set(
        records[0]
    )
    assert result.checkpoint == latest_checkpoint(tmp_path / "run")
    assert result.checkpoint is not None and result.checkpoint.name == "iter_0000024"
    frames_dir = tmp_path / "frames"
    frames_dir.mkdir()
    frames, _ = render_video(3, config_for("val", height=64, width=80, num_frames=5))
    for t, frame in enumerate(frames):
        Image.fromarray(frame).save(frames_dir / f"{t:03d}.png")
    out = tmp_path / "results.json"
    argv = ["track", str(frames_dir), "--checkpoint", str(result.checkpoint), "--out", str(out)]
    assert main([*argv, "--no-progress", "--device", "cpu"]) == 0
    results = json.loads(out.read_text())
    assert isinstance(results, list)
    assert all(len(r["segmentations"]) == 5 for r in results)


def test_resume_reproduces_the_uninterrupted_run(tmp_path: Path) -> None:
    cfg = small_config("optim.max_iter=4", "checkpoint_period=2", "optim.steps=[3]")
    full = train(cfg, tmp_path / "full")
    first = train(cfg, tmp_path / "split", stop_at=2)
    assert first.iteration == 2 and len(first.losses) == 2
    second = train(cfg, tmp_path / "split", resume=True)
    assert second.iteration == 4
    assert first.losses + second.losses == full.losses  # bit-identical
    split_log = _log(tmp_path / "split")
    assert [r["iteration"] for r in split_log] == [1, 2, 3, 4]
    assert split_log[-1]["lr"] == pytest.approx(cfg.optim.lr * cfg.optim.gamma)


def test_late_stage_sizes_switch_exactly_and_resume(tmp_path: Path) -> None:
    # Progressive resizing: iterations from data.late_from on train at the late sizes, and a
    # run stopped at the switch and resumed (the two-command form) is the same run.
    late = ("data.late_from=2", "data.late_min_size_train=[64]", "data.late_max_size_train=96")
    cfg = small_config("optim.max_iter=4", "checkpoint_period=2", "optim.steps=[3]", *late)
    assert data_config_at(cfg.data, 1).min_size_train == (48,)
    switched = data_config_at(cfg.data, 2)
    assert switched.min_size_train == (64,) and switched.max_size_train == 96
    first_late = next(build_clip_loader(switched, cfg.seed, 0, 1, 2))
    assert {c.frames[0].shape[0] for c in first_late} == {64}
    full = train(cfg, tmp_path / "full")
    plain = train(small_config("optim.max_iter=4", "optim.steps=[3]"), tmp_path / "plain")
    assert full.losses[:2] == plain.losses[:2]  # same early stage
    assert full.losses[2:] != plain.losses[2:]  # larger clips from iteration 2 on
    first = train(cfg, tmp_path / "split", stop_at=2)
    second = train(cfg, tmp_path / "split", resume=True)
    assert first.losses + second.losses == full.losses  # bit-identical
    with pytest.raises(ConfigError, match="late_min_size_train"):
        small_config("data.late_from=2")


def test_init_from_official_and_from_checkpoint(tmp_path: Path, fixtures_dir: Path) -> None:
    """``init.kind=official`` converts an official .pth; ``checkpoint`` reloads our format."""
    model_cfg, pre_cfg, trk_cfg, _ = read_official_config(fixtures_dir / "config.yaml")
    official = dataclasses.replace(
        small_config(),
        model=model_cfg,
        preprocess=pre_cfg,
        tracker=trk_cfg,
        init=InitConfig("official", str(fixtures_dir / "model_final.pth"),
                        str(fixtures_dir / "config.yaml")),
    )  # fmt: skip
    model = init_segmenter(official, tmp_path)
    reference = load_checkpoint(tmp_path / "init_converted").segmenter.state_dict()
    for key, value in model.state_dict().items():
        assert torch.equal(value, reference[key]), key
    # a checkpoint directory with another class count: everything but the class head loads
    fewer = dataclasses.replace(model_cfg, num_classes=5)
    cfg = dataclasses.replace(
        official,
        model=fewer,
        init=InitConfig("checkpoint", str(tmp_path / "init_converted")),
    )
    again = init_segmenter(cfg, tmp_path).state_dict()
    assert again["sem_seg_head.predictor.class_embed.weight"].shape[0] == 6
    assert torch.equal(again["backbone.stem.conv1.weight"], reference["backbone.stem.conv1.weight"])


def test_cli_train(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    argv = ["train", "--config", str(CONFIG), "--out", str(out), "--set", "optim.max_iter=1"]
    assert main(argv) == 0
    assert (out / "checkpoints" / "iter_0000001" / "model.safetensors").is_file()
    assert "iteration 1" in capsys.readouterr().err
    assert main([*argv, "--set", "optim.lr=fast"]) == 1
    assert "optim.lr" in capsys.readouterr().err


def test_tensorboard_gets_losses_and_eval_metrics(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = small_config(
        "optim.max_iter=2", "eval.period=2", "eval.synth_videos=1", "eval.max_videos=1"
    )
    train(cfg, tmp_path / "tb")
    events = EventAccumulator(str(tmp_path / "tb" / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"loss", "lr", "loss_ce", "loss_reid", "eval/AP", "eval/IDSW"} <= tags, tags
    assert [e.step for e in events.Scalars("loss")] == [1, 2]
    logged = [r for r in _log(tmp_path / "tb") if "eval" in r]
    assert events.Scalars("eval/AP")[0].value == pytest.approx(logged[0]["eval"]["AP"])


def test_gradient_accumulation(tmp_path: Path) -> None:
    cfg = small_config("optim.max_iter=2", "optim.grad_accum=2", "data.clips_per_batch=1")
    result = train(cfg, tmp_path / "accum")
    assert result.iteration == 2 and all(np.isfinite(result.losses))


@pytest.mark.parametrize(
    "switches",
    [
        ("cl.cl_match=criterion_padded", "cl.positive_mode=latest", "cl.detach_memory=true"),
        ("cl.noise_prob=0.5", "cl.noise_source=other_instances", "cl.negative_major=memory_ma"),
        ("cl.negative_supplementary=global", "cl.num_negatives=4", "cl.fix_future_guard=true"),
        ("cl.enabled=false", "loss.deep_supervision=false"),
    ],
)
def test_ablation_switches_train(tmp_path: Path, switches: tuple[str, ...]) -> None:
    result = train(small_config("optim.max_iter=1", *switches), tmp_path / "ablation")
    assert result.iteration == 1 and np.isfinite(result.losses[0])
    record = _log(tmp_path / "ablation")[0]
    assert ("loss_reid" in record) == ("cl.enabled=false" not in switches)
    assert ("loss_ce_0" in record) == ("loss.deep_supervision=false" not in switches)
