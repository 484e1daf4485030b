"""Frame reading (video files and folders) and the MP4 overlay writer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model.video.overlay import OverlayItem, OverlayWriter, draw_overlay, mask_to_bbox, track_color
from model.video.reader import FrameSource, VideoReadError, read_frames

HEIGHT, WIDTH = 48, 64


def _frame(i: int) -> np.ndarray:
    """A frame whose mean brightness encodes its index (survives lossy coding)."""
    return np.full((HEIGHT, WIDTH, 3), 10 + 20 * i, dtype=np.uint8)


def _write_video(path: Path, num_frames: int, codec: str | None = None) -> Path:
    with OverlayWriter(path, fps=10, size=(WIDTH, HEIGHT), codec=codec) as writer:
        for i in range(num_frames):
            writer.write(_frame(i))
    return path


def _index(frame: np.ndarray) -> int:
    return round((float(frame.mean()) - 10) / 20)


@pytest.mark.parametrize("codec", [None, "mpeg4"])
def test_video_roundtrip_with_stride_and_max(tmp_path: Path, codec: str | None) -> None:
    path = _write_video(tmp_path / "clip.mp4", 10, codec)
    source = FrameSource(path)
    frames = list(source)
    assert source.num_frames == len(frames) == 10
    assert source.fps == pytest.approx(10)
    assert all(f.shape == (HEIGHT, WIDTH, 3) and f.dtype == np.uint8 for f in frames)
    assert [_index(f) for f in frames] == list(range(10))

    strided = FrameSource(path, frame_stride=3, max_frames=3)
    assert strided.num_frames == len(strided) == 3
    assert strided.fps == pytest.approx(10 / 3)
    assert [_index(f) for f in strided] == [0, 3, 6]
    assert [_index(f) for f in read_frames(path, frame_stride=4)] == [0, 4, 8]


def test_folder_sorted_by_name_with_stride_and_max(tmp_path: Path) -> None:
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(7):
        suffix = ".png" if i % 2 else ".jpg"
        Image.fromarray(_frame(i)).save(folder / f"{i:05d}{suffix}")
    (folder / "notes.txt").write_text("not a frame")
    source = FrameSource(folder, frame_stride=2, max_frames=3)
    assert source.num_frames == 3 and source.fps is None
    assert [_index(f) for f in source] == [0, 2, 4]
    assert FrameSource(folder).num_frames == 7
    assert [_index(f) for f in FrameSource(folder, frame_stride=5)] == [0, 5]


def test_overlay_writes_decodable_mp4(tmp_path: Path) -> None:
    path = tmp_path / "out" / "overlay.mp4"
    width, height = 65, 33  # odd sizes get padded for yuv420p
    with OverlayWriter(path, fps=12, size=(width, height)) as writer:
        for i in range(5):
            mask = np.zeros((height, width), dtype=bool)
            mask[5:25, 10 + i : 30 + i] = True
            items = [OverlayItem(track_id=3, mask=mask, label="person", score=0.9)]
            writer.write(np.zeros((height, width, 3), dtype=np.uint8), items)
        assert writer.frames_written == 5
    frames = list(FrameSource(path))
    assert len(frames) == 5
    assert frames[0].shape[:2] == (height + 1, width + 1)
    # The mask region is tinted with the track colour, the background stays dark.
    assert frames[0][15, 20].mean() > 40 and frames[0][30, 60].mean() < 10


def test_draw_overlay_colours_and_boxes() -> None:
    frame = np.zeros((40, 40, 3), dtype=np.uint8)
    mask = np.zeros((40, 40), dtype=bool)
    mask[20:30, 10:20] = True
    assert mask_to_bbox(mask) == (10.0, 20.0, 10.0, 10.0)
    assert mask_to_bbox(np.zeros((4, 4), dtype=bool)) is None
    out = draw_overlay(frame, [OverlayItem(7, mask, "dog")])
    assert out.shape == frame.shape and out.dtype == np.uint8
    expected = np.round(0.5 * np.array(track_color(7))).astype(int)
    assert np.abs(out[25, 15].astype(int) - expected).max() <= 1
    assert track_color(7) == track_color(7) and track_color(7) != track_color(8)
    with pytest.raises(ValueError, match="mask shape"):
        draw_overlay(frame, [OverlayItem(1, np.zeros((3, 3), dtype=bool))])


def test_writer_rejects_wrong_frame_size(tmp_path: Path) -> None:
    writer = OverlayWriter(tmp_path / "x.mp4", fps=5, size=(WIDTH, HEIGHT))
    with writer, pytest.raises(ValueError, match="frame"):
        writer.write(np.zeros((HEIGHT + 2, WIDTH, 3), dtype=np.uint8))


def test_unreadable_inputs_raise_video_read_error(tmp_path: Path) -> None:
    with pytest.raises(VideoReadError, match="no such file"):
        FrameSource(tmp_path / "missing.mp4")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"definitely not a video" * 50)
    with pytest.raises(VideoReadError, match="cannot open"):
        FrameSource(junk)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(VideoReadError, match="no .* frames"):
        FrameSource(empty)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "00000.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(VideoReadError, match="cannot decode"):
        list(FrameSource(broken))
    with pytest.raises(ValueError, match="frame_stride"):
        FrameSource(junk, frame_stride=0)


def test_explicit_file_list_keeps_order(tmp_path: Path) -> None:
    files = []
    for i in range(4):
        files.append(tmp_path / f"f{i}.png")
        Image.fromarray(_frame(i)).save(files[-1])
    order = [files[2], files[0], files[3]]
    assert [_index(f) for f in FrameSource(order)] == [2, 0, 3]
    assert FrameSource(order, max_frames=2).num_frames == 2
    with pytest.raises(VideoReadError, match="missing frame file"):
        FrameSource([*order, tmp_path / "gone.png"])
