"""Every pseudo-video generator produces the motion it claims, alone and combined, and every one
is reachable from the YAML / ``--set`` (``data.pseudo.*``, ``data.image_mode``, ``data.kind``)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from training.config import ConfigError, load_config
from training.data.coco import CocoImage
from training.data.pseudo_video import (
    PseudoVideoConfig,
    PseudoVideoDataset,
    crop_windows,
    generate_pseudo_clip,
    sample_plan,
)
from training.loop_data import build_sources, pseudo_video_config

CONFIG = Path(__file__).resolve().parents[2] / "training" / "configs" / "synth_test.yaml"
# no motion at all: every generator under test is switched on explicitly
STILL = PseudoVideoConfig(
    num_frames=6, crop_prob=0.0, min_sizes=(100,), max_size=1000, flip_prob=0.0, max_angle=0.0
)


def _scene(size: int, box: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """A grey square image with one red rectangle instance (y0, x0, y1, x1)."""
    image = np.full((size, size, 3), 90, dtype=np.uint8)
    mask = np.zeros((1, size, size), dtype=bool)
    y0, x0, y1, x1 = box
    mask[0, y0:y1, x0:x1] = True
    image[mask[0]] = (255, 0, 0)
    return image, mask


def _centroid(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.array([ys.mean(), xs.mean()])


def _orientation(mask: np.ndarray) -> float:
    """Principal-axis angle in degrees, image coordinates (x right, y down)."""
    ys, xs = np.nonzero(mask)
    dy, dx = ys - ys.mean(), xs - xs.mean()
    return float(
        np.degrees(0.5 * np.arctan2(2 * (dx * dy).mean(), (dx**2).mean() - (dy**2).mean()))
    )


def test_rotation_turns_the_mask_by_the_sampled_angle() -> None:
    image, mask = _scene(100, (46, 20, 54, 80))  # a horizontal 60x8 bar
    cfg = replace(STILL, max_angle=15.0)
    checked = 0
    for seed in range(6):
        plan = sample_plan(100, 100, cfg, np.random.default_rng(seed))
        clip = generate_pseudo_clip(image, mask, [0], cfg, np.random.default_rng(seed))
        cx, cy = plan.center
        y, x = _centroid(mask[0])
        for t, angle in enumerate(plan.angles):
            # counter-clockwise on screen = clockwise in y-down coordinates
            assert abs(_orientation(clip.masks[t, 0]) + angle) < 1.5, (seed, t, angle)
            a = np.radians(angle)
            expected = (
                cy - (x - cx) * np.sin(a) + (y - cy) * np.cos(a),
                cx + (x - cx) * np.cos(a) + (y - cy) * np.sin(a),
            )
            assert np.abs(_centroid(clip.masks[t, 0]) - expected).max() < 1.5
        checked += int(np.ptp(plan.angles) > 3.0)
    assert checked >= 3, "the sampled angles should differ across frames"


def _expected_centroid(window: np.ndarray, out: tuple[int, int], y: float, x: float) -> np.ndarray:
    """Where point (y, x) of the pre-crop image lands after cropping ``window`` and resizing
    the crop to ``out`` (pixel centres map affinely)."""
    top, left, h, w = (int(v) for v in window)
    return np.array([(y - top + 0.5) * out[0] / h - 0.5, (x - left + 0.5) * out[1] / w - 0.5])


@pytest.mark.parametrize(
    "shift, zoom", [(True, False), (False, True), (True, True)], ids=["shift", "zoom", "both"]
)
def test_crop_motion_moves_and_scales_the_object_as_windows_say(shift: bool, zoom: bool) -> None:
    size, box = 160, (74, 74, 86, 86)  # a 12x12 object every window below contains
    image, mask = _scene(size, box)
    cfg = replace(
        STILL,
        crop_prob=1.0,
        crop_short_sizes=(size,),
        crop_range=(100, 100),
        crop_shift=shift,
        crop_zoom=zoom,
        zoom_range=(0.8, 0.9),
    )
    y, x = _centroid(mask[0])
    moved = scaled = 0
    for seed in range(8):
        plan = sample_plan(size, size, cfg, np.random.default_rng(seed))
        clip = generate_pseudo_clip(image, mask, [0], cfg, np.random.default_rng(seed))
        assert plan.windows is not None and plan.pre_size == (size, size)
        for t in range(cfg.num_frames):
            expected = _expected_centroid(plan.windows[t], plan.out_size, y, x)
            assert np.abs(_centroid(clip.masks[t, 0]) - expected).max() < 1.0, (seed, t)
        centres = plan.windows[:, :2] + plan.windows[:, 2:] / 2
        moved += int(np.ptp(centres, axis=0).max() > 4)
        scaled += int(np.ptp(plan.windows[:, 2]) > 4)
    assert (moved > 0) == shift and (scaled > 0) == zoom


def test_crop_zoom_scales_the_object_area() -> None:
    image, mask = _scene(100, (40, 40, 60, 60))  # 20x20 in the middle: inside every window
    cfg = replace(
        STILL, crop_prob=1.0, crop_short_sizes=(100,), crop_range=(100, 100), crop_zoom=True
    )
    for seed in range(5):
        plan = sample_plan(100, 100, cfg, np.random.default_rng(seed))
        clip = generate_pseudo_clip(image, mask, [0], cfg, np.random.default_rng(seed))
        assert plan.windows is not None and plan.out_size == (100, 100)
        areas = clip.masks[:, 0].sum(axis=(1, 2))
        expected = 400 * (100 / plan.windows[:, 2]) * (100 / plan.windows[:, 3])
        assert np.all(np.abs(areas / expected - 1) < 0.1), (seed, areas, expected)
        assert areas.max() / areas.min() > 1.2, "a zoom of 0.6-0.9 changes the area"
        d = np.diff(areas)
        assert (d >= -8).all() or (d <= 8).all(), "the zoom is monotone over the clip"


def test_shift_and_zoom_windows_stay_inside_and_move_monotonically() -> None:
    for seed in range(100):
        win = crop_windows(300, 400, 8, (150, 250), np.random.default_rng(seed), True, (0.6, 0.9))
        tops, lefts, hs, ws = win.T
        assert (tops >= 0).all() and (lefts >= 0).all()
        assert (tops + hs <= 300).all() and (lefts + ws <= 400).all()
        assert np.all(np.diff(hs) >= 0) or np.all(np.diff(hs) <= 0)
        cy, cx = tops + hs / 2, lefts + ws / 2
        dy, dx = np.diff(cy), np.diff(cx)
        assert ((dy >= -1).all() and (dx >= -1).all()) or ((dy <= 1).all() and (dx <= 1).all())


def test_copy_paste_adds_a_moving_instance_with_its_own_id() -> None:
    image, mask = _scene(100, (10, 10, 30, 30))
    donor_image = np.zeros((100, 100, 3), dtype=np.uint8)
    donor_mask = np.zeros((1, 100, 100), dtype=bool)
    donor_mask[0, 50:70, 40:80] = True
    donor_image[donor_mask[0]] = (0, 0, 255)
    donor = CocoImage(donor_image, donor_mask, np.array([7]), 99)
    moved = 0
    for seed in range(5):
        clip = generate_pseudo_clip(
            image, mask, [3], STILL, np.random.default_rng(seed), donor=donor
        )
        assert clip.num_slots == 2 and clip.labels[:, 1].tolist() == [7] * STILL.num_frames
        assert clip.ids[:, 1].tolist() == [1] * STILL.num_frames, "its own id in every frame"
        assert clip.ids[:, 0].max() == 0
        for t in range(STILL.num_frames):
            pasted = clip.masks[t, 1]
            assert (clip.frames[t][pasted] == (0, 0, 255)).all()
            assert not (pasted & clip.masks[t, 0]).any(), "the paste occludes the instance"
        centres = np.array([_centroid(m) for m in clip.masks[:, 1]])
        moved += int(np.abs(centres[-1] - centres[0]).max() > 2)
    assert moved >= 3, "pasted instances move across the clip"


def _set(*overrides: str) -> list[str]:
    return ["data.clip_frames=4", "data.flip_prob=0.0", *overrides]


def test_image_mode_turns_one_frame_into_a_clip() -> None:
    still = _set("data.image_mode=true", "data.pseudo.rotation=false", "data.pseudo.crop_prob=0")
    [source], _ = build_sources(load_config(CONFIG, still).data, seed=0)
    for index in range(4):
        clip = source[index]
        assert clip.frames.shape[0] == 4 and clip.source.count(":") == 2  # synthetic:v:frame
        assert all(np.array_equal(clip.frames[0], f) for f in clip.frames), "identical frames"
        assert all(np.array_equal(clip.masks[0], m) for m in clip.masks)
        assert (clip.ids == np.arange(clip.num_slots)).all()
    rotating = _set("data.image_mode=true", "data.pseudo.crop_prob=0", "data.pseudo.max_angle=20")
    [source], _ = build_sources(load_config(CONFIG, rotating).data, seed=0)
    clip = source[0]
    assert not np.array_equal(clip.frames[0], clip.frames[-1]), "rotation on: frames move"
    assert len(set(clip.ids.flatten().tolist()) - {-1}) == clip.num_slots


def test_every_pseudo_switch_reaches_the_generator() -> None:
    overrides = [
        "data.pseudo.rotation=false",
        "data.pseudo.max_angle=7",
        "data.pseudo.crop_prob=1.0",
        "data.pseudo.crop_shift=false",
        "data.pseudo.crop_zoom=true",
        "data.pseudo.zoom_range=[0.5, 0.7]",
        "data.pseudo.crop_short_sizes=[64, 72]",
        "data.pseudo.crop_max_size=200",
        "data.pseudo.copy_paste_prob=0.5",
        "data.pseudo.max_pasted=2",
        "data.flip_prob=0.25",
    ]
    cfg = load_config(CONFIG, overrides).data
    p = pseudo_video_config(cfg)
    assert (p.max_angle, p.crop_prob, p.crop_shift, p.crop_zoom) == (0.0, 1.0, False, True)
    assert (p.zoom_range, p.crop_short_sizes, p.crop_max_size) == ((0.5, 0.7), (64, 72), 200)
    assert (p.copy_paste_prob, p.max_pasted, p.flip_prob) == (0.5, 2, 0.25)
    assert (p.num_frames, p.crop_range, p.min_sizes) == (3, (384, 600), (48,))
    assert pseudo_video_config(load_config(CONFIG, overrides[1:]).data).max_angle == 7.0


@pytest.mark.parametrize(
    "override, message",
    [
        ("data.pseudo.zoom_range=[0.5, 1.5]", "zoom_range"),
        ("data.pseudo.copy_paste_prob=2", "copy_paste_prob"),
        ("data.kind=coco", "coco_json"),
        ("data.pseudo.crop_zoom=maybe", "true/false"),
    ],
)
def test_bad_pseudo_settings_are_rejected(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(CONFIG, [override])


def test_coco_only_pseudo_videos(tmp_path: Path) -> None:
    from tests.training.test_pseudo_video import _write_coco

    path = _write_coco(tmp_path)
    sets = [
        "data.kind=coco",
        f"data.coco_json={path}",
        f"data.coco_images={tmp_path}",
        "data.coco_target=ytvis19",
        "data.pseudo.crop_zoom=true",
        "data.pseudo.copy_paste_prob=1.0",
    ]
    sources, weights = build_sources(load_config(CONFIG, sets).data, seed=0)
    assert weights == (1.0,) and isinstance(sources[0], PseudoVideoDataset)
    assert sources[0].cfg.crop_zoom and sources[0].cfg.copy_paste_prob == 1.0
    clip = sources[0][0]
    assert clip.frames.shape[0] == 3 and clip.num_slots >= 2  # own instance + pasted ones
