"""Graceful shutdown: SIGTERM closes WebSockets with 1012; the session continues elsewhere."""

from __future__ import annotations

import asyncio
import json
import os
import signal

import numpy as np
import pytest
import websockets

from tests.service.conftest import free_port, png_bytes
from tests.service.test_redis_processes import _start_server

pytestmark = pytest.mark.redis
REDIS_URL = os.environ.get("CTVIS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


async def _stream(base: str, sid: str, token: str, frames: list[np.ndarray]) -> list[dict]:
    url = base.replace("http", "ws") + f"/v1/sessions/{sid}/stream?token={token}"
    out = []
    async with websockets.connect(url, max_size=None) as ws:
        for f in frames:
            await ws.send(png_bytes(f))
            out.append(json.loads(await ws.recv()))
    return out


def test_sigterm_closes_websockets_1012_and_session_continues(
    video_frames: list[np.ndarray],
) -> None:
    import httpx

    port_a, port_b = free_port(), free_port()
    a = _start_server(port_a, REDIS_URL)
    b = None
    try:
        base_a = f"http://127.0.0.1:{port_a}"
        created = httpx.post(f"{base_a}/v1/sessions", timeout=30).json()
        sid, token = created["session_id"], created["token"]

        async def first_part() -> tuple[list[dict], tuple[int, str] | None]:
            url = base_a.replace("http", "ws") + f"/v1/sessions/{sid}/stream?token={token}"
            got: list[dict] = []
            async with websockets.connect(url, max_size=None) as ws:
                for f in video_frames[:3]:
                    await ws.send(png_bytes(f))
                    got.append(json.loads(await ws.recv()))
                a.send_signal(signal.SIGTERM)
                try:
                    while True:
                        got.append(json.loads(await asyncio.wait_for(ws.recv(), 30)))
                except websockets.ConnectionClosed as closed:
                    rcvd = closed.rcvd
                    return got, (rcvd.code, rcvd.reason) if rcvd else None
            return got, None

        answered, close = asyncio.run(first_part())
        assert close is not None and close[0] == 1012
        assert "reconnect" in close[1]  # the hint tells clients what to do
        # uvicorn finishes its graceful shutdown, then re-raises SIGTERM to report it.
        assert a.wait(timeout=60) in (0, -signal.SIGTERM)
        b = _start_server(port_b, REDIS_URL)
        base_b = f"http://127.0.0.1:{port_b}"
        info = httpx.get(f"{base_b}/v1/sessions/{sid}", params={"token": token}).json()
        resume = info["frame_index"]
        assert resume == len(answered)
        rest = asyncio.run(_stream(base_b, sid, token, video_frames[resume:]))
        ref = httpx.post(f"{base_b}/v1/sessions", timeout=30).json()
        straight = asyncio.run(_stream(base_b, ref["session_id"], ref["token"], video_frames))
    finally:
        for proc in (a, b):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
    combined = answered + rest
    assert [r["frame_index"] for r in combined] == list(range(len(video_frames)))
    assert [r["instances"] for r in combined] == [r["instances"] for r in straight]
