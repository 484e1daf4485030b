"""Overlay videos: coloured masks, boxes, track ids and class names drawn on the frames.

The output is an MP4 (H.264 when FFmpeg has an encoder for it, else MPEG-4 Part 2). What an
overlay shows is chosen from a video's results: each ``track_id`` whose best results entry
scores at least the overlay score (``OVERLAY_MIN_SCORE`` unless the caller asks for another) is
drawn once, with that entry's class and score, so every ``#id`` drawn is the ``track_id`` of a
results entry and a track absent from the results is never drawn.
"""

from __future__ import annotations

import colorsys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import Any, cast

import av
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from model import rle
from model.config import ModelConfig
from model.pipeline import VideoResult

# First encoder FFmpeg has wins; h264 keeps files small, mpeg4 is built into every FFmpeg.
ENCODER_PREFERENCE = ("libx264", "libopenh264", "mpeg4")
MASK_ALPHA = 0.5
# Above this many pixels per frame libx264 encodes with its ultrafast preset: the default
# preset's lookahead and reference frames hold ~70 bytes per pixel (1.2 GB at 4096x4096),
# ultrafast ~25 (and encodes ~3x faster, at a larger file). Smaller frames keep the default.
LARGE_FRAME_PIXELS = 1920 * 1088
LARGE_FRAME_X264_OPTIONS = {"preset": "ultrafast"}


def track_color(track_id: int) -> tuple[int, int, int]:
    """A stable, well-spread RGB colour for a track id (golden-ratio hue steps)."""
    hue = (track_id * 0.6180339887498949) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.75, 0.95)
    return round(r * 255), round(g * 255), round(b * 255)


@dataclass(frozen=True)
class OverlayItem:
    """One instance to draw on one frame.

    Attributes:
        track_id: Public track id; picks the colour and is printed.
        mask: HxW bool (or 0/1) mask at the frame's resolution.
        label: Class name to print (empty: none).
        score: Confidence to print (None: none).
        bbox: (x, y, w, h) in pixels; None computes the box from the mask.
    """

    track_id: int
    mask: np.ndarray
    label: str = ""
    score: float | None = None
    bbox: tuple[float, float, float, float] | None = None


def mask_to_bbox(mask: np.ndarray) -> tuple[float, float, float, float] | None:
    """(x, y, w, h) of the foreground of an HxW mask, None if it is empty."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    x0, y0 = float(cols[0]), float(rows[0])
    return x0, y0, float(cols[-1]) + 1 - x0, float(rows[-1]) + 1 - y0


def draw_overlay(frame: np.ndarray, items: Sequence[OverlayItem]) -> np.ndarray:
    """Blend masks and draw boxes and ``id label score`` tags on a copy of ``frame``.

    Args:
        frame: uint8 HxWx3 RGB.
        items: Instances to draw, all with HxW masks.

    Returns:
        uint8 HxWx3 RGB.
    """
    out = frame.astype(np.float32)
    for item in items:
        mask = np.asarray(item.mask, dtype=bool)
        if mask.shape != frame.shape[:2]:
            raise ValueError(f"mask shape {mask.shape} does not match frame {frame.shape[:2]}")
        tint = np.array(track_color(item.track_id), dtype=np.float32)
        out[mask] = (1 - MASK_ALPHA) * out[mask] + MASK_ALPHA * tint
    image = Image.fromarray(out.round().astype(np.uint8))
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    for item in items:
        bbox = item.bbox if item.bbox is not None else mask_to_bbox(np.asarray(item.mask, bool))
        if bbox is None:
            continue
        color = track_color(item.track_id)
        x, y, w, h = bbox
        draw.rectangle([x, y, x + w - 1, y + h - 1], outline=color, width=2)
        text = " ".join(
            part for part in (f"#{item.track_id}", item.label, _fmt_score(item.score)) if part
        )
        left, top, right, bottom = draw.textbbox((x, y), text, font=font)
        top_y = max(0.0, y - (bottom - top) - 4)
        draw.rectangle([x, top_y, x + (right - left) + 4, top_y + (bottom - top) + 4], fill=color)
        draw.text((x + 2, top_y + 2 - (top - y)), text, fill=(0, 0, 0), font=font)
    return np.asarray(image)


def _fmt_score(score: float | None) -> str:
    return "" if score is None else f"{score:.2f}"


def pick_encoder(preference: Sequence[str] = ENCODER_PREFERENCE) -> str:
    """Name of the first FFmpeg video encoder in ``preference`` that this build has."""
    for name in preference:
        try:
            av.codec.Codec(name, "w")
        except (av.FFmpegError, ValueError):
            continue
        return name
    raise RuntimeError(f"FFmpeg has none of the encoders {list(preference)}")


class OverlayWriter:
    """Write frames with drawn instances to an MP4 file.

    Args:
        path: Output file (``.mp4``); parent directories are created.
        fps: Frame rate of the output.
        size: (width, height) of the frames that will be written. yuv420p needs even sizes,
            so odd sizes are padded by one black row/column in the file.
        codec: FFmpeg encoder name; None picks h264 (libx264/libopenh264) or mpeg4.

    Use as a context manager, or call :meth:`close` to flush the encoder.
    """

    def __init__(
        self, path: str | Path, fps: float, size: tuple[int, int], codec: str | None = None
    ):
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.path = Path(path)
        self.width, self.height = int(size[0]), int(size[1])
        self.codec = codec or pick_encoder()
        self.frames_written = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._container: av.container.OutputContainer | None = av.open(str(self.path), mode="w")
        try:
            rate = Fraction(fps).limit_denominator(1001)
            stream = self._container.add_stream(self.codec, rate=rate)
            self._stream = cast("av.video.stream.VideoStream", stream)
            self._stream.width = self.width + self.width % 2
            self._stream.height = self.height + self.height % 2
            self._stream.pix_fmt = "yuv420p"
            if self.codec == "libx264" and self.width * self.height > LARGE_FRAME_PIXELS:
                self._stream.options = {**self._stream.options, **LARGE_FRAME_X264_OPTIONS}
        except Exception:
            self._container.close()
            raise

    def write(self, frame: np.ndarray, items: Sequence[OverlayItem] = ()) -> None:
        """Draw ``items`` on a uint8 HxWx3 RGB ``frame`` and encode it."""
        if frame.shape != (self.height, self.width, 3) or frame.dtype != np.uint8:
            raise ValueError(
                f"expected uint8 {(self.height, self.width, 3)} frame, "
                f"got {frame.dtype} {frame.shape}"
            )
        drawn = draw_overlay(frame, items) if items else frame
        pad = ((0, self._stream.height - self.height), (0, self._stream.width - self.width))
        if any(p[1] for p in pad):
            drawn = np.pad(drawn, (*pad, (0, 0)))
        if self._container is None:
            raise RuntimeError(f"{self.path}: writer is closed")
        video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(drawn), format="rgb24")
        for packet in self._stream.encode(video_frame):
            self._container.mux(packet)
        self.frames_written += 1

    def close(self) -> None:
        """Flush the encoder and close the file (idempotent)."""
        if self._container is None:
            return
        for packet in self._stream.encode(None):
            self._container.mux(packet)
        self._container.close()
        self._container = None

    def __enter__(self) -> OverlayWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


OverlayTrack = tuple[int, str, float, list[Any]]
"""(track id, class name, score, per-frame RLE or None) of one track to draw."""

OVERLAY_MIN_SCORE = 0.3
"""Lowest results score a track needs to be drawn in an overlay video: the default of
``ctvis track --overlay-score`` and of ``POST /v1/videos?overlay_score=``. Lower-scoring
entries are mostly tracks repeated under unlikely classes (the official top-k fills its ``k``
slots with them) and weak detections; drawing them would bury the real tracks."""


def overlay_tracks(
    result: VideoResult, model_cfg: ModelConfig, min_score: float = OVERLAY_MIN_SCORE
) -> list[OverlayTrack]:
    """The tracks an overlay draws: results entries scoring at least ``min_score``.

    One item per ``track_id``, from its highest-scoring results entry (its class and score;
    for a track in the results that is its most probable class), in the tracker's output
    order (the order masks are drawn in). Tracks the results do not contain are not drawn,
    so every drawn id can be looked up in the results file.
    """
    best: dict[int, dict[str, Any]] = {}
    for item in result.results:
        track_id = int(item["track_id"])
        if item["score"] >= min_score and (
            track_id not in best or item["score"] > best[track_id]["score"]
        ):
            best[track_id] = item
    names = {
        model_cfg.category_id(k): model_cfg.class_name(k) for k in range(model_cfg.num_classes)
    }
    tracks: list[OverlayTrack] = []
    for entry in result.entries:
        chosen = best.get(entry.track_id)
        if chosen is not None:
            name = names.get(chosen["category_id"], f"category {chosen['category_id']}")
            tracks.append((entry.track_id, name, float(chosen["score"]), list(entry.rles)))
    return tracks


def write_overlay(
    path: str | Path, frames: Iterable[np.ndarray], tracks: list[OverlayTrack], fps: float
) -> int:
    """Draw ``tracks`` over the frames (decoded again) into an MP4; returns the frame count."""
    writer: OverlayWriter | None = None
    try:
        for t, frame in enumerate(frames):
            if writer is None:
                writer = OverlayWriter(path, fps, (frame.shape[1], frame.shape[0]))
            items = [
                OverlayItem(track_id, rle.decode(rles[t]), name, score)
                for track_id, name, score, rles in tracks
                if t < len(rles) and rles[t] is not None
            ]
            writer.write(frame, items)
        return 0 if writer is None else writer.frames_written
    finally:
        if writer is not None:
            writer.close()
