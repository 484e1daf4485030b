"""Video input and overlay output for offline tracking.

Input is a video file (anything PyAV/FFmpeg decodes) or a directory of frames (``.jpg``,
``.jpeg``, ``.png``, ``.webp``, sorted by file name, as YouTube-VIS stores them). Frames come
out as uint8 HxWx3 RGB numpy arrays. Output is an MP4 with coloured masks, boxes, track ids
and class names drawn on the frames (H.264 when FFmpeg has an encoder for it, else MPEG-4
Part 2).

A pixel budget (``max_pixels``, width x height) bounds what decoding may allocate: the
stream's frame size is read from its metadata before any frame is decoded, FFmpeg's decoder is
told the same limit (so it refuses an oversized frame before allocating it, also when the
resolution changes mid-stream), and every decoded frame is checked again.

Imports only numpy, Pillow and PyAV (``model/`` must not depend on web or storage stacks).
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import cast

import av
import numpy as np
from PIL import Image, ImageDraw, ImageFont, UnidentifiedImageError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
# First encoder FFmpeg has wins; h264 keeps files small, mpeg4 is built into every FFmpeg.
ENCODER_PREFERENCE = ("libx264", "libopenh264", "mpeg4")
MASK_ALPHA = 0.5
# Above this many pixels per frame libx264 encodes with its ultrafast preset: the default
# preset's lookahead and reference frames hold ~70 bytes per pixel (1.2 GB at 4096x4096),
# ultrafast ~25 (and encodes ~3x faster, at a larger file). Smaller frames keep the default.
LARGE_FRAME_PIXELS = 1920 * 1088
LARGE_FRAME_X264_OPTIONS = {"preset": "ultrafast"}


class VideoReadError(RuntimeError):
    """The input is missing, not a video or frame folder, or cannot be decoded."""


class VideoTooLarge(VideoReadError):
    """A frame of the input is larger than the pixel budget (``max_pixels``)."""


def _over_budget(what: str, width: int, height: int, max_pixels: int) -> VideoTooLarge:
    """``what`` (which ends in its verb: ``"frame 3 is"``) is over the budget."""
    return VideoTooLarge(
        f"{what} {width}x{height} ({width * height} pixels), over the limit of {max_pixels} pixels"
    )


class FrameSource:
    """Frames of a video file, a frame folder or a list of image files, decoded lazily.

    Iterating twice decodes the input twice (the overlay writer relies on this to avoid
    holding a whole video in memory).

    Args:
        path: A video file, a directory of image files (sorted by name), or a sequence of
            image files taken in the given order (a dataset's ``file_names``).
        frame_stride: Keep every ``frame_stride``-th frame, starting with the first (>= 1).
        max_frames: Stop after this many kept frames (None: no limit).
        max_pixels: Largest frame (width x height) to decode (None: no limit). A video whose
            metadata declares larger frames is refused here, before any frame is decoded; a
            larger frame met while iterating (a stream may change resolution) stops the
            iteration with ``VideoTooLarge`` (or ``VideoReadError`` when FFmpeg's decoder
            refuses it first).

    Attributes:
        num_frames: Number of frames iteration will yield, or None when the container does
            not say how many frames it holds.
        fps: Frame rate of the kept frames (source rate / stride), or None for images and
            containers without a rate.
        width, height: Frame size the video's metadata declares (None for frame folders).
        duration_s: Duration the container declares in seconds, or None.

    Raises:
        VideoReadError: If the input does not exist, is an empty folder, or is not decodable.
        VideoTooLarge: If the video's declared frame size is over ``max_pixels``.
    """

    def __init__(
        self,
        path: str | Path | Sequence[str | Path],
        frame_stride: int = 1,
        max_frames: int | None = None,
        max_pixels: int | None = None,
    ):
        if frame_stride < 1:
            raise ValueError(f"frame_stride must be >= 1, got {frame_stride}")
        if max_frames is not None and max_frames < 0:
            raise ValueError(f"max_frames must be >= 0, got {max_frames}")
        if max_pixels is not None and max_pixels < 1:
            raise ValueError(f"max_pixels must be >= 1, got {max_pixels}")
        self.frame_stride = frame_stride
        self.max_frames = max_frames
        self.max_pixels = max_pixels
        self.width: int | None = None
        self.height: int | None = None
        self.duration_s: float | None = None
        self._files: list[Path] | None = None
        source_fps: float | None = None
        if isinstance(path, str | Path):
            self.path = Path(path)
            if not self.path.exists():
                raise VideoReadError(f"{self.path}: no such file or directory")
            if self.path.is_dir():
                self._files = sorted(
                    p for p in self.path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES
                )
                if not self._files:
                    kinds = "/".join(IMAGE_SUFFIXES)
                    raise VideoReadError(f"{self.path}: no {kinds} frames found")
        else:
            self._files = [Path(p) for p in path]
            self.path = self._files[0].parent if self._files else Path()
            missing = [str(p) for p in self._files if not p.is_file()]
            if missing:
                more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
                raise VideoReadError(f"missing frame file {missing[0]}{more}")
        if self._files is not None:
            total: int | None = len(self._files)
        else:
            total, source_fps = self._probe_video()
        self.num_frames = None if total is None else self._kept(total)
        self.fps = None if source_fps is None else source_fps / frame_stride

    def _kept(self, total: int) -> int:
        kept = math.ceil(total / self.frame_stride)
        return kept if self.max_frames is None else min(kept, self.max_frames)

    def _decoder_options(self) -> dict[str, str]:
        """FFmpeg codec options that make the decoder refuse frames over the budget.

        ``max_pixels`` is checked by FFmpeg when a decoder sets its frame size, before the
        frame's buffers are allocated (also inside ``avformat_find_stream_info``, which
        decodes a frame of some containers while opening them).
        """
        return {} if self.max_pixels is None else {"max_pixels": str(self.max_pixels)}

    def _open(self) -> av.container.InputContainer:
        try:
            container = av.open(str(self.path), mode="r", options=self._decoder_options())
        except (av.FFmpegError, OSError, ValueError) as exc:
            raise VideoReadError(f"{self.path}: cannot open as a video ({exc})") from exc
        if not container.streams.video:
            container.close()
            raise VideoReadError(f"{self.path}: has no video stream")
        return container

    def _probe_video(self) -> tuple[int | None, float | None]:
        """Frame count and rate from the container; frame size and duration into ``self``.

        Only metadata is read: with ``max_pixels`` set, a declared frame size over it raises
        ``VideoTooLarge`` here. A stream whose size stays unknown under the limit (FFmpeg's
        decoder refused its first frame while probing, or the stream is damaged) raises
        ``VideoReadError``, since decoding it would fail anyway.
        """
        container = self._open()
        try:
            stream = container.streams.video[0]
            total = int(stream.frames) if stream.frames else None
            rate = stream.average_rate or stream.guessed_rate
            context = stream.codec_context
            width = int(context.width) if context is not None else 0
            height = int(context.height) if context is not None else 0
            if width > 0 and height > 0:
                self.width, self.height = width, height
            if stream.duration is not None and stream.time_base is not None:
                self.duration_s = float(stream.duration * stream.time_base)
            elif container.duration is not None:
                self.duration_s = container.duration / av.time_base
        finally:
            container.close()
        if self.max_pixels is not None:
            if self.width is None or self.height is None:
                raise VideoReadError(
                    f"{self.path}: the frame size cannot be read (the stream is damaged, or "
                    f"its frames are over the limit of {self.max_pixels} pixels)"
                )
            if self.width * self.height > self.max_pixels:
                size = (self.width, self.height)
                raise _over_budget(f"{self.path}: its frames are", *size, self.max_pixels)
        return total, (float(rate) if rate else None)

    def __len__(self) -> int:
        if self.num_frames is None:
            raise TypeError("the number of frames of this video is unknown")
        return self.num_frames

    def __iter__(self) -> Iterator[np.ndarray]:
        """Yield uint8 HxWx3 RGB frames (the kept ones only)."""
        if self.max_frames == 0:
            return iter(())
        if self._files is not None:
            return self._iter_folder(self._files)
        return self._iter_video()

    def _iter_folder(self, files: list[Path]) -> Iterator[np.ndarray]:
        size: tuple[int, int] | None = None
        for count, file in enumerate(files[:: self.frame_stride]):
            if self.max_frames is not None and count >= self.max_frames:
                return
            try:
                with Image.open(file) as image:
                    width, height = image.size  # from the header: nothing decoded yet
                    if self.max_pixels is not None and width * height > self.max_pixels:
                        raise _over_budget(f"{file} is", width, height, self.max_pixels)
                    frame = np.asarray(image.convert("RGB"), dtype=np.uint8)
            except (OSError, UnidentifiedImageError, ValueError) as exc:
                raise VideoReadError(f"{file}: cannot decode image ({exc})") from exc
            if size is not None and frame.shape[:2] != size:
                raise VideoReadError(f"{file}: size {frame.shape[:2]} differs from {size}")
            size = frame.shape[:2]
            yield frame

    def _iter_video(self) -> Iterator[np.ndarray]:
        container = self._open()
        decoded = 0
        try:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            if stream.codec_context is not None:  # opened on the first decode, with these
                stream.codec_context.options = {
                    **stream.codec_context.options,
                    **self._decoder_options(),
                }
            kept = 0
            for index, frame in enumerate(container.decode(stream)):
                decoded = index + 1
                if self.max_pixels is not None and frame.width * frame.height > self.max_pixels:
                    size = (frame.width, frame.height)
                    raise _over_budget(f"{self.path}: frame {index} is", *size, self.max_pixels)
                if index % self.frame_stride:
                    continue
                if self.max_frames is not None and kept >= self.max_frames:
                    return
                yield frame.to_ndarray(format="rgb24")
                kept += 1
        except av.FFmpegError as exc:
            hint = ""
            refused = isinstance(exc, av.InvalidDataError | av.ArgumentError)
            if self.max_pixels is not None and refused:  # what FFmpeg's max_pixels check raises
                hint = f"; damaged, or a frame over the limit of {self.max_pixels} pixels"
            raise VideoReadError(
                f"{self.path}: decoding failed after {decoded} frames ({exc}){hint}"
            ) from exc
        finally:
            container.close()


def read_frames(
    path: str | Path | Sequence[str | Path], frame_stride: int = 1, max_frames: int | None = None
) -> Iterator[np.ndarray]:
    """Iterate uint8 HxWx3 RGB frames of a video file or frame folder (see FrameSource)."""
    return iter(FrameSource(path, frame_stride=frame_stride, max_frames=max_frames))


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
