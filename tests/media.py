"""Small encoded media for tests that need a real video stream."""

from __future__ import annotations

import io

import av
import numpy as np


def h264_bytes(width: int, height: int, frames: int) -> bytes:
    """An Annex-B H.264 stream of ``frames`` flat frames of ``width`` x ``height``.

    Raw streams concatenate into one stream, so two of them of different sizes make a video
    whose resolution changes mid-way.
    """
    buf = io.BytesIO()
    with av.open(buf, "w", format="h264") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(frames):
            image = np.full((height, width, 3), 40 + 20 * i, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buf.getvalue()
