"""A real ``ctvis serve`` process for tests that must see what a client on the network sees.

``LiveServer`` starts the server on a free loopback port with its own ``TMPDIR`` and job
directory, waits for ``/readyz``, and exposes what bad-input tests measure: the process's
resident memory (``/proc``), the bytes under its temp directory, and its log output.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

import httpx

from tests.service.conftest import free_port


def _dir_bytes(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):  # a file deleted while walking
                total += (Path(root) / name).stat().st_size
    return total


class LiveServer:
    """``ctvis serve`` on 127.0.0.1 with ``env`` overrides (``CTVIS_*`` settings).

    Use as a context manager; the process is terminated (then killed) on exit.
    """

    def __init__(self, env: dict[str, str] | None = None, startup_s: float = 120.0) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}"
        self.workdir = Path(tempfile.mkdtemp(prefix="ctvis-live-"))
        self.tmpdir = self.workdir / "tmp"
        self.tmpdir.mkdir()
        self.log_path = self.workdir / "server.log"
        self._env = dict(env or {})
        self._startup_s = startup_s
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> LiveServer:
        exe = shutil.which("ctvis") or str(Path(sys.executable).parent / "ctvis")
        env = {k: v for k, v in os.environ.items() if not k.startswith("CTVIS_")}
        env.update(
            {
                "TMPDIR": str(self.tmpdir),
                "CTVIS_JOB_DIR": str(self.workdir / "jobs"),
                "CTVIS_LOG_LEVEL": "info",
                **self._env,
                "CTVIS_HOST": "127.0.0.1",
                "CTVIS_PORT": str(self.port),
            }
        )
        log = self.log_path.open("wb")
        self.proc = subprocess.Popen([exe, "serve"], stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()
        deadline = time.monotonic() + self._startup_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ctvis serve exited at start-up:\n{self.log()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.__exit__(None, None, None)
        raise RuntimeError(f"ctvis serve not ready after {self._startup_s} s:\n{self.log()}")

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def alive(self) -> bool:
        """The process runs and ``/healthz`` answers 200."""
        if self.proc is None or self.proc.poll() is not None:
            return False
        try:
            return httpx.get(self.url + "/healthz", timeout=5).status_code == 200
        except httpx.TransportError:
            return False

    def rss_bytes(self) -> int:
        """Resident memory of the server process now."""
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS in /proc status")

    def peak_rss_bytes(self) -> int:
        """Highest resident memory of the server process so far (``VmHWM``)."""
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmHWM in /proc status")

    def temp_bytes(self) -> int:
        """Bytes in files under the server's ``TMPDIR`` and job directory."""
        log_size = self.log_path.stat().st_size if self.log_path.exists() else 0
        return _dir_bytes(self.workdir) - log_size

    def log(self) -> str:
        """Everything the server printed so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""
