"""The ``reid`` preset: look-alikes only appearance tells apart, occluded swaps, re-entries."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cli.main import main
from training.data.reid_synth import ReidConfig, ReidVideo, render_reid_video
from training.ytvis_json import load_ground_truth

DEFAULT_SET = range(8)  # the seeds `ctvis synth --preset reid --seed 0` renders


@pytest.fixture(scope="module")
def videos() -> list[ReidVideo]:
    return [render_reid_video(seed) for seed in DEFAULT_SET]


def _box(mask: np.ndarray) -> tuple[slice, slice]:
    ys, xs = np.nonzero(mask)
    return slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1)


def _full_views(video: ReidVideo, k: int) -> list[int]:
    """Frames where track ``k`` shows its largest area (all of it, if it is ever in full view:
    a partial view has fewer pixels)."""
    areas = [0 if m is None else int(m.sum()) for m in video.tracks[k]["masks"]]
    return [t for t, a in enumerate(areas) if a == max(areas) > 0]


def _crop(video: ReidVideo, k: int, t: int) -> tuple[np.ndarray, np.ndarray]:
    """(mask, pixels under the mask) of track ``k`` at frame ``t``, in object coordinates."""
    m = video.tracks[k]["masks"][t]
    sy, sx = _box(m)
    return m[sy, sx], video.frames[t][sy, sx][m[sy, sx]]


def _centre(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.array([xs.mean(), ys.mean()])


def test_deterministic_long_videos(videos: list[ReidVideo]) -> None:
    again = render_reid_video(0)
    assert all(np.array_equal(a, b) for a, b in zip(videos[0].frames, again.frames, strict=True))
    assert not np.array_equal(videos[0].frames[0], videos[1].frames[0])
    for video in videos:
        assert len(video.frames) >= 24
        assert all(len(track["masks"]) == len(video.frames) for track in video.tracks)


def test_benchmark_videos_never_change() -> None:
    # Association figures refer to these exact videos: the renderer must keep its pixels.
    digest = hashlib.sha256()
    video = render_reid_video(0)
    for frame in video.frames:
        digest.update(frame.tobytes())
    for track in video.tracks:
        for m in track["masks"]:
            digest.update(b"-" if m is None else np.packbits(m).tobytes())
    assert digest.hexdigest()[:16] == "2fe3d3e37ed093b5"


def test_lookalikes_share_shape_and_size_but_not_pixels(videos: list[ReidVideo]) -> None:
    for video in videos:
        classes = [video.tracks[a]["category"] for a, _ in video.lookalikes]
        assert len(set(classes)) == len(classes), "pairs must differ in class"
        for a, b in video.lookalikes:
            assert video.tracks[a]["category"] == video.tracks[b]["category"]
            ta, tb = _full_views(video, a), _full_views(video, b)
            assert ta and tb
            mask_a, pix_a = _crop(video, a, ta[0])
            mask_b, pix_b = _crop(video, b, tb[0])
            assert np.array_equal(mask_a, mask_b), "twins must have the same shape and size"
            differs = np.abs(pix_a.astype(int) - pix_b.astype(int)).max(axis=1) >= 8
            assert differs.mean() > 0.1, "twins must differ in shade or texture"
            # ...but only subtly: the same colour family
            assert np.abs(pix_a.mean(0) - pix_b.mean(0)).max() < 60


def test_textures_move_with_their_objects(videos: list[ReidVideo]) -> None:
    checked = 0
    for video in videos:
        for k in range(len(video.tracks)):
            views = _full_views(video, k)
            base_mask, base_pix = _crop(video, k, views[0])
            for t in views[1:]:
                mask, pix = _crop(video, k, t)
                assert np.array_equal(mask, base_mask)
                assert np.array_equal(pix, base_pix), f"texture of track {k} changed at {t}"
                checked += 1
    assert checked > 100


def _null_runs(masks: list) -> list[tuple[int, int]]:
    """``(start, end)`` of each run of null masks with a visible frame on both sides."""
    runs, start, seen = [], None, False
    for t, m in enumerate(masks):
        if m is None and start is None and seen:
            start = t
        elif m is not None and start is not None:
            runs.append((start, t))
            start = None
        seen = seen or m is not None
    return runs


def _touches_side(mask: np.ndarray) -> bool:
    return bool(mask[:, 0].any() or mask[:, -1].any())


def test_every_video_has_an_exit_and_reentry_after_5_to_20_frames(
    videos: list[ReidVideo],
) -> None:
    for video in videos:
        found = []
        for track in video.tracks:
            m = track["masks"]
            for start, end in _null_runs(m):
                if _touches_side(m[start - 1]) and _touches_side(m[end]):
                    found.append(end - start)
        assert any(5 <= gap <= 20 for gap in found), found
        (event,) = [e for e in video.events if e.kind == "reentry"]
        assert 5 <= event.end - event.start <= 20


def test_every_video_has_an_occluded_position_swap(videos: list[ReidVideo]) -> None:
    kinds = set()
    for video in videos:
        (event,) = [e for e in video.events if e.kind in ("cross", "swap")]
        kinds.add(event.kind)
        a, b = event.tracks
        assert (a, b) in video.lookalikes
        for k in (a, b):
            m = video.tracks[k]["masks"]
            assert all(m[t] is None for t in range(event.start, event.end))
            assert m[event.start - 1] is not None and m[event.end] is not None
        before = {k: _centre(video.tracks[k]["masks"][event.start - 1]) for k in (a, b)}
        after = {k: _centre(video.tracks[k]["masks"][event.end]) for k in (a, b)}
        # each twin comes out nearer to where the other went in than to where it went in
        for k, other in ((a, b), (b, a)):
            assert np.linalg.norm(after[k] - before[other]) < np.linalg.norm(after[k] - before[k])
    assert kinds == {"cross", "swap"}


def test_rendering_is_fast() -> None:
    cfg = ReidConfig(num_frames=24)
    best = float("inf")
    for seed in range(3):
        start = time.perf_counter()
        render_reid_video(seed, cfg)
        best = min(best, time.perf_counter() - start)
    assert best < 0.5


@pytest.mark.parametrize(
    "overrides", [{"num_frames": 23}, {"pairs": 1}, {"height": 100}, {"min_gap": 0}]
)
def test_config_rejects_what_the_events_need(overrides: dict) -> None:
    with pytest.raises(ValueError):
        ReidConfig(**overrides)


def test_cli_writes_the_preset_in_youtube_vis_layout(tmp_path: Path) -> None:
    assert main(["synth", "--preset", "reid", "--videos", "2", "--seed", "4", "--out",
                 str(tmp_path)]) == 0  # fmt: skip
    gt = load_ground_truth(tmp_path / "instances.json")
    doc = json.loads((tmp_path / "instances.json").read_text())
    assert "preset=reid" in doc["info"]["description"]
    assert len(gt.videos) == 2
    video = gt.videos[1]
    assert video.length == 32 and video.file_names[0] == "reid_4_0000/00000.png"
    with Image.open(tmp_path / "frames" / video.file_names[5]) as img:
        assert img.size == (video.width, video.height)
        pixels = np.asarray(img)
    rendered = render_reid_video(4 * 100_003)
    assert np.array_equal(pixels, rendered.frames[5])
    assert len([t for t in gt.tracks if t.video_id == 1]) == len(rendered.tracks)


def test_cli_preset_and_split_exclude_each_other(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        main(["synth", "--preset", "reid", "--split", "hard", "--out", str(tmp_path)])


def test_help_states_the_preset_parameters(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["synth", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    cfg = ReidConfig()
    stated = [
        f"{cfg.num_frames} frames of {cfg.width}x{cfg.height}",
        f"{cfg.min_size}-{cfg.max_size} px",
        f"{cfg.min_hidden}-{cfg.max_hidden} frames",
        f"{cfg.min_gap}-{cfg.max_gap} frames",
        f"move {cfg.min_speed}-{cfg.max_speed}",
        f"{cfg.max_speed}-{2 * cfg.max_speed}",
        "--tracker box_iou_weight=0",
    ]
    for words in stated:
        assert words in text
