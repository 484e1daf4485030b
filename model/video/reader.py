"""Video input for offline tracking.

Input is a video file (anything PyAV/FFmpeg decodes) or a directory of frames (``.jpg``,
``.jpeg``, ``.png``, ``.webp``, sorted by file name, as YouTube-VIS stores them). Frames come
out as uint8 HxWx3 RGB numpy arrays.

A pixel budget (``max_pixels``, width x height) bounds what decoding may allocate: the
stream's frame size is read from its metadata before any frame is decoded, FFmpeg's decoder is
told the same limit (so it refuses an oversized frame before allocating it, also when the
resolution changes mid-stream), and every decoded frame is checked again.

Imports only numpy, Pillow and PyAV (``model/`` must not depend on web or storage stacks).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import av
import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


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
