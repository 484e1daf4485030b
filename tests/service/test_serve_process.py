"""Command 1 of the README: ``ctvis serve`` as a real process answers ``/healthz``."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.service.conftest import free_port


def test_ctvis_serve_answers_healthz() -> None:
    port = free_port()
    exe = shutil.which("ctvis") or str(Path(sys.executable).parent / "ctvis")
    proc = subprocess.Popen(
        [exe, "serve", "--port", str(port), "--log-level", "warning"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        body = None
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            try:
                resp = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2)
                if resp.status_code == 200:
                    body = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).json()
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        assert body == {"status": "ok"}
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert f"http://127.0.0.1:{port}" in out
    assert "RANDOM WEIGHTS" in out
