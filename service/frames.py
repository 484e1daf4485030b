"""Decoding client frames: JPEG / PNG / WebP bytes, or raw RGB with a declared shape."""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from service.errors import ApiError

ALLOWED_FORMATS = {"JPEG", "PNG", "WEBP"}
MAX_PIXELS = 4096 * 4096


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
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ApiError(415, "unsupported_frame", f"cannot decode image: {exc}") from exc
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
        raise ApiError(415, "unsupported_frame", f"cannot decode image: {exc}") from exc


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
