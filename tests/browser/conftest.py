"""Browser tests of the page at ``GET /``: real headless Chromium driven by Playwright.

Chromium is Debian's ``chromium`` package (``scripts/test.sh`` installs it when missing); no
browser is ever downloaded. When it cannot start, these tests fail loudly; they never skip.
The servers are real ``ctvis serve`` processes on loopback with the embedded default model.

Screenshots go to ``$CTVIS_TEST_ARTEFACTS`` (default: a pytest temporary folder). With
``CTVIS_TEST_UPDATE_SCREENSHOTS=1`` the README's ones are also copied to ``docs/``.
"""

from __future__ import annotations

import base64
import io
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from model.video.overlay import OverlayWriter
from tests.service.conftest import free_port
from training.data.synthetic import config_for, render_video

REPO = Path(__file__).resolve().parents[2]
API_KEY = "browser-test-key"
CHROMIUM = os.environ.get("CTVIS_TEST_CHROMIUM", "/usr/bin/chromium")
VIDEO_FPS = 10
SEED = 7
README_SHOTS = ("video", "live")  # the screenshots the README shows (docs/)


class Server:
    """One ``ctvis serve`` process (API key required); restartable on the same port."""

    def __init__(self, log_dir: Path, port: int, redis_url: str | None = None) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.redis_url = redis_url
        self.log_path = log_dir / f"serve-{port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        exe = shutil.which("ctvis") or str(Path(sys.executable).parent / "ctvis")
        cmd = [exe, "serve", "--port", str(self.port), "--log-level", "warning"]
        if self.redis_url:
            cmd += ["--redis-url", self.redis_url]
        if os.environ.get("CTVIS_TEST_BROWSER_CHECKPOINT"):  # default: the embedded model
            cmd += ["--checkpoint", os.environ["CTVIS_TEST_BROWSER_CHECKPOINT"]]
        env = {k: v for k, v in os.environ.items() if not k.startswith("CTVIS_")}
        env.update(CTVIS_API_KEYS=API_KEY, CTVIS_SHUTDOWN_GRACE_S="2")
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"ctvis serve exited:\n{self.log()}"
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"ctvis serve did not become ready:\n{self.log()}")

    def stop(self) -> None:
        """SIGTERM (uvicorn closes WebSockets with 1012) and wait for the exit."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""

    def get(self, path: str, key: str = API_KEY) -> httpx.Response:
        return httpx.get(self.url + path, headers={"Authorization": f"Bearer {key}"}, timeout=30)


@pytest.fixture(scope="session")
def artefacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where screenshots and server logs of the browser tests go."""
    folder = os.environ.get("CTVIS_TEST_ARTEFACTS")
    path = Path(folder) if folder else tmp_path_factory.mktemp("browser-artefacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


def save_screenshot(page: Any, artefacts: Path, name: str) -> Path:
    """Write ``name``.png as a test artefact (and to docs/ when asked to)."""
    path = artefacts / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")
    if name in README_SHOTS and os.environ.get("CTVIS_TEST_UPDATE_SCREENSHOTS") == "1":
        shutil.copyfile(path, REPO / "docs" / f"screenshot-{name}.png")
    return path


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A synthetic video (as ``ctvis synth`` renders them) as MP4 (PyAV) and as Y4M."""
    frames, tracks = render_video(SEED, config_for("val", num_frames=24))
    folder = tmp_path_factory.mktemp("synthetic")
    mp4 = folder / "synthetic.mp4"
    with OverlayWriter(mp4, VIDEO_FPS, (frames[0].shape[1], frames[0].shape[0])) as writer:
        for frame in frames:
            writer.write(frame)
    y4m = folder / "synthetic.y4m"
    write_y4m(y4m, frames, VIDEO_FPS)
    return {"frames": frames, "tracks": tracks, "mp4": mp4, "y4m": y4m}


def write_y4m(path: Path, frames: list[np.ndarray], fps: int) -> None:
    """YUV4MPEG2 4:2:0 (BT.601 full range), the format of Chromium's fake camera file."""
    h, w = frames[0].shape[:2]
    with path.open("wb") as out:
        out.write(f"YUV4MPEG2 W{w} H{h} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for frame in frames:
            rgb = frame.astype(np.float32)
            r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
            y = 0.299 * r + 0.587 * g + 0.114 * b
            u = 128 - 0.168736 * r - 0.331264 * g + 0.5 * b
            v = 128 + 0.5 * r - 0.418688 * g - 0.081312 * b
            sub = [c.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3)) for c in (u, v)]
            out.write(b"FRAME\n")
            for plane in (y, *sub):
                out.write(np.clip(plane.round(), 0, 255).astype(np.uint8).tobytes())


@pytest.fixture(scope="package")
def browser(synthetic: dict[str, Any]) -> Iterator[Any]:
    """Headless Debian Chromium with a fake camera playing the synthetic Y4M."""
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(
            f"Chromium not found at {CHROMIUM}: install Debian's `chromium` package "
            "(scripts/test.sh does) or set CTVIS_TEST_CHROMIUM",
            pytrace=False,
        )
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--use-fake-ui-for-media-stream",
                "--use-fake-device-for-media-stream",
                f"--use-file-for-fake-video-capture={synthetic['y4m']}",
                "--autoplay-policy=no-user-gesture-required",
            ],
        )
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh tab (own context: no shared memory); uncaught page errors fail the test."""
    context = browser.new_context(accept_downloads=True, viewport={"width": 1000, "height": 900})
    tab = context.new_page()
    tab.set_default_timeout(30_000)
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        yield tab
    finally:
        context.close()
    assert not errors, f"uncaught errors in the page: {errors}"


@pytest.fixture(scope="package")
def keyed_server(artefacts: Path) -> Iterator[Server]:
    """``ctvis serve`` with the embedded default model and an API key, in-process store."""
    server = Server(artefacts, free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()


def open_page(page: Any, server: Server, key: str = API_KEY) -> None:
    """Load the page and enter the API key with the keyboard."""
    page.goto(server.url + "/")
    page.wait_for_selector("body[data-ready='true']")
    page.focus("#api-key")
    page.keyboard.type(key)
    page.keyboard.press("Enter")
    if key == API_KEY:
        page.wait_for_selector("#model-info[data-key-accepted='true']")


def canvas_image(page: Any, selector: str) -> np.ndarray:
    """The pixels of a canvas as uint8 HxWx4 RGBA."""
    url = page.eval_on_selector(selector, "c => c.toDataURL('image/png')")
    data = base64.b64decode(url.split(",", 1)[1])
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGBA"))


def decode_rle(rle: dict[str, Any]) -> np.ndarray:
    from model import rle as rle_utils

    return np.asarray(rle_utils.decode(rle), dtype=bool)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def wait_for(page: Any, function: str, arg: Any = None, timeout: float = 30.0) -> Any:
    """Poll ``function(arg)`` in the page until it is truthy (the page's CSP forbids eval,
    which ``page.wait_for_function`` needs for its polling)."""
    deadline = time.monotonic() + timeout
    while True:
        value = page.evaluate(function, arg)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {function}")
        page.wait_for_timeout(100)
