"""Frame decoding limits and formats."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from service.errors import ApiError
from service.frames import decode_image, decode_raw_rgb, scrub


def _encode(arr: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_lossless_roundtrip(fmt: str) -> None:
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 255, size=(20, 30, 3), dtype=np.uint8)
    data = _encode(arr, fmt) if fmt == "PNG" else _webp_lossless(arr)
    out = decode_image(data, max_bytes=1 << 20)
    assert out.shape == (20, 30, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, arr)


def _webp_lossless(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="WEBP", lossless=True)
    return buf.getvalue()


def test_jpeg_grey_becomes_rgb() -> None:
    grey = np.full((8, 8), 128, np.uint8)
    buf = io.BytesIO()
    Image.fromarray(grey).save(buf, format="JPEG")
    assert decode_image(buf.getvalue(), 1 << 20).shape == (8, 8, 3)


def test_too_large_and_garbage() -> None:
    with pytest.raises(ApiError) as exc:
        decode_image(b"x" * 2000, max_bytes=1000)
    assert exc.value.code == "frame_too_large"
    with pytest.raises(ApiError) as exc:
        decode_image(b"not an image at all", max_bytes=1000)
    assert exc.value.code == "unsupported_frame"


def test_gif_rejected() -> None:
    data = _encode(np.zeros((4, 4, 3), np.uint8), "GIF")
    with pytest.raises(ApiError) as exc:
        decode_image(data, 1 << 20)
    assert exc.value.code == "unsupported_frame"


def test_raw_rgb() -> None:
    arr = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    np.testing.assert_array_equal(decode_raw_rgb(arr.tobytes(), 2, 3, 1 << 20), arr)
    with pytest.raises(ApiError) as exc:
        decode_raw_rgb(arr.tobytes(), 3, 3, 1 << 20)
    assert exc.value.code == "bad_shape"


def _png_claiming(width: int, height: int, rows: int = 1) -> bytes:
    import struct
    import zlib

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload)
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    raw = zlib.compress(b"\x00" + b"\x00" * (3 * width) * rows)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


@pytest.mark.parametrize("side", [20000, 5000])
def test_huge_image_header_is_rejected_not_decoded(side: int) -> None:
    with pytest.raises(ApiError) as exc:
        decode_image(_png_claiming(side, side), max_bytes=1 << 22)
    assert exc.value.status == 413
    assert exc.value.code == "frame_too_large"


@pytest.mark.parametrize(
    "data",
    [
        b"not an image at all",
        b"\x89PNG\r\n\x1a\n" + b"\x00" * 64,  # a PNG signature, then nothing valid
        b"\xff\xd8\xff\xe0" + b"\x00" * 64,  # a JPEG marker, then nothing valid
        b"RIFF\x00\x00\x00\x00WEBPVP8 " + b"\x00" * 40,
    ],
    ids=["text", "png", "jpeg", "webp"],
)
def test_decode_errors_name_no_python_objects(data: bytes) -> None:
    with pytest.raises(ApiError) as exc:
        decode_image(data, max_bytes=1 << 20)
    assert exc.value.status == 415 and exc.value.code == "unsupported_frame"
    message = exc.value.message
    assert "0x" not in message and "object at" not in message and "BytesIO" not in message


def test_scrub_removes_reprs_addresses_and_paths() -> None:
    text = (
        "cannot identify image file <_io.BytesIO object at 0x7f3a2b1c0d90>; "
        "/srv/jobs/abc/input: failed (/srv/jobs/abc) at 0xdeadbeef00"
    )
    clean = scrub(text, ["/srv/jobs/abc", "/srv/jobs/abc/input"])
    assert "0x" not in clean and "/srv" not in clean and "BytesIO" not in clean
    assert clean.startswith("cannot identify image file the upload; the upload: failed")
