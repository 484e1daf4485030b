"""Decoding client frames: JPEG / PNG / WebP bytes, or raw RGB with a declared shape."""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from service.errors import ApiError

ALLOWED_FORMATS = {"JPEG", "PNG", "WEBP"}
MAX_PIXELS = 4096 * 4096
# ``<_io.BytesIO object at 0x7f...>`` and other default object reprs, and bare addresses
_OBJECT_REPR = re.compile(r"<[^<>]*\bat 0x[0-9a-fA-F]+>")
_ADDRESS = re.compile(r"\b0x[0-9a-fA-F]{6,}\b")


def scrub(text: str, paths: Iterable[str | Path] = (), name: str = "the upload") -> str:
    """``text`` fit for a client: object reprs, memory addresses and server paths removed.

    Library messages (Pillow's, FFmpeg's) name the Python object or the file they read;
    neither means anything to a client, and both tell it about the server. Each of ``paths``
    (longest first, so a file inside a listed directory goes whole) becomes ``name``.
    """
    for path in sorted((str(p) for p in paths), key=len, reverse=True):
        if path:
            text = text.replace(path, name)
    text = _OBJECT_REPR.sub(name, text)
    return _ADDRESS.sub("an address", text)


def decode_image(data: bytes, max_bytes: int) -> np.ndarray:
    """Decode an encoded image to RGB.

    Args:
        data: JPEG, PNG or WebP bytes.
        max_bytes: largest accepted payload.

    Returns:
        HxWx3 uint8 RGB array (EXIF orientation applied).

    Raises:
        ApiError: 413 ``frame_too_large`` or 415 ``unsupported_frame``.
    """
    if len(data) > max_bytes:
        raise ApiError(413, "frame_too_large", f"frame is {len(data)} bytes; limit {max_bytes}")
    if not data:
        raise ApiError(415, "unsupported_frame", "empty frame")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img: Image.Image = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ApiError(413, "frame_too_large", f"image is too large: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise ApiError(
            415, "unsupported_frame", "cannot decode the frame: not a JPEG, PNG or WebP image"
        ) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ApiError(415, "unsupported_frame", _decode_failed(exc)) from exc
    try:
        with img:
            if img.format not in ALLOWED_FORMATS:
                raise ApiError(
                    415, "unsupported_frame", f"format {img.format} not accepted (JPEG/PNG/WebP)"
                )
            if img.width * img.height > MAX_PIXELS:
                raise ApiError(413, "frame_too_large", f"{img.width}x{img.height} is too large")
            img = ImageOps.exif_transpose(img)
            return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ApiError(415, "unsupported_frame", _decode_failed(exc)) from exc


def _decode_failed(exc: BaseException) -> str:
    return f"cannot decode the frame: {scrub(str(exc), name='the frame')}"


def decode_raw_rgb(data: bytes, height: int, width: int, max_bytes: int) -> np.ndarray:
    """Interpret ``data`` as row-major HxWx3 uint8 RGB.

    Raises:
        ApiError: 400 ``bad_shape`` when the byte count does not match the declared shape.
    """
    if len(data) > max_bytes:
        raise ApiError(413, "frame_too_large", f"frame is {len(data)} bytes; limit {max_bytes}")
    if height <= 0 or width <= 0 or height * width > MAX_PIXELS:
        raise ApiError(400, "bad_shape", f"invalid raw frame shape {height}x{width}")
    if len(data) != height * width * 3:
        raise ApiError(
            400, "bad_shape", f"raw frame has {len(data)} bytes, expected {height}*{width}*3"
        )
    return np.frombuffer(data, dtype=np.uint8).reshape(height, width, 3).copy()
