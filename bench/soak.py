"""Soak: live sessions + a trickle of video jobs while workers are killed and restarted.

    python bench/soak.py --sessions 30 --duration 600 --kill-every 120 --plot docs/soak.png

Starts Redis-backed processes on loopback (one ``ctvis serve --no-worker`` API and
``--workers`` ``ctvis worker`` processes), drives HTTP frame sessions and video jobs against
them, SIGKILLs one worker every ``--kill-every`` seconds and starts a replacement. Every 10 s
it samples frames/s, latency p50/p99, errors by code, RSS of every process and Redis
``used_memory``. Bounded in time and count; talks only to 127.0.0.1. ``run_soak`` is also
used by the default test suite with a 30-second configuration.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _proc import free_port, rss_mb  # noqa: E402

from model.video.overlay import OverlayWriter  # noqa: E402
from training.data.synthetic import config_for, render_video  # noqa: E402

RETRYABLE = {"worker_lost", "worker_unavailable", "session_busy", "state_store_unavailable"}


@dataclass
class SoakReport:
    """What a soak run measured."""

    samples: list[dict[str, Any]] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    frames: int = 0
    jobs_submitted: int = 0
    jobs_done: int = 0
    jobs_failed: int = 0
    jobs_lost: int = 0
    frames_lost: int = 0
    kills: int = 0

    @property
    def unexplained_errors(self) -> int:
        return sum(n for code, n in self.errors.items() if code not in RETRYABLE)


def _redis_mb(client: Any) -> float:
    return int(client.info("memory")["used_memory"]) / 2**20


def _png(frame: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="PNG")
    return buf.getvalue()


class Cluster:
    """One API and N workers on a Redis, each a real process."""

    def __init__(self, redis_url: str, workers: int, workdir: Path) -> None:
        tag = uuid.uuid4().hex[:8]
        # the recorded numbers use the random-weight tiny preset; CTVIS_CHECKPOINT overrides
        self.env = {**os.environ, "CTVIS_REDIS_URL": redis_url,
                    "CTVIS_CHECKPOINT": os.environ.get("CTVIS_CHECKPOINT") or "tiny-random",
                    "CTVIS_FRAMES_STREAM": f"ctvis:soak-frames:{tag}",
                    "CTVIS_JOBS_STREAM": f"ctvis:soak-jobs:{tag}",
                    "CTVIS_JOB_DIR": str(workdir / "jobs"), "CTVIS_CLAIM_IDLE_MS": "1000",
                    "CTVIS_JOB_CLAIM_IDLE_MS": "2000", "CTVIS_JOB_CHECKPOINT_CLIPS": "1",
                    "CTVIS_MAX_SESSION_FPS": "1000", "CTVIS_LOG_LEVEL": "error"}  # fmt: skip
        self.exe = shutil.which("ctvis") or str(Path(sys.executable).parent / "ctvis")
        self.port = free_port()
        self.api = subprocess.Popen(
            [self.exe, "serve", "--no-worker", "--port", str(self.port)],
            env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self.workers = [self.start_worker() for _ in range(workers)]
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.base}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.3)
        raise RuntimeError("API did not become ready")

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start_worker(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [self.exe, "worker"], env=self.env, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def kill_one_worker(self, index: int) -> None:
        victim = self.workers[index % len(self.workers)]
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=30)
        self.workers[index % len(self.workers)] = self.start_worker()

    def pids(self) -> dict[str, int]:
        out = {"api": self.api.pid}
        out.update({f"worker{i}": w.pid for i, w in enumerate(self.workers)})
        return out

    def stop(self) -> None:
        for proc in [self.api, *self.workers]:
            if proc.poll() is None:
                proc.terminate()
        for proc in [self.api, *self.workers]:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()


def _session_loop(base: str, frames: list[bytes], stop: threading.Event, report: SoakReport,
                  latencies: list[tuple[float, float]], lock: threading.Lock) -> None:  # fmt: skip
    with httpx.Client(base_url=base, timeout=120) as http:
        created = http.post("/v1/sessions").json()
        sid, hdr = created["session_id"], {"X-Session-Token": created["token"]}
        sent = 0
        while not stop.is_set():
            t0 = time.perf_counter()
            try:
                resp = http.post(f"/v1/sessions/{sid}/frames", content=frames[sent % len(frames)],
                                 headers=hdr)  # fmt: skip
            except httpx.HTTPError as exc:
                with lock:
                    report.errors[f"transport:{type(exc).__name__}"] += 1
                continue
            with lock:
                if resp.status_code == 200:
                    body = resp.json()
                    if body["frame_index"] != sent:
                        report.frames_lost += 1  # a frame was skipped or applied twice
                    sent = body["frame_index"] + 1
                    report.frames += 1
                    latencies.append((time.monotonic(), (time.perf_counter() - t0) * 1000))
                else:
                    report.errors[resp.json().get("code", str(resp.status_code))] += 1
        info = http.get(f"/v1/sessions/{sid}", headers=hdr).json()
        with lock:
            if info["frame_index"] != sent:
                report.frames_lost += abs(info["frame_index"] - sent)


def _jobs_loop(base: str, video: bytes, every_s: float, stop: threading.Event,
               report: SoakReport, lock: threading.Lock) -> list[str]:  # fmt: skip
    ids: list[str] = []
    with httpx.Client(base_url=base, timeout=60) as http:
        while not stop.wait(every_s if ids else 0.5):
            resp = http.post("/v1/videos", content=video)
            with lock:
                if resp.status_code == 202:
                    ids.append(resp.json()["job_id"])
                    report.jobs_submitted += 1
                else:
                    report.errors[f"job:{resp.json().get('code')}"] += 1
    return ids


def _drain_jobs(base: str, job_ids: list[str], drain_s: float, report: SoakReport) -> None:
    """Wait up to ``drain_s`` for the submitted jobs to end; count done, failed and lost."""
    deadline = time.monotonic() + drain_s
    pending = set(job_ids)
    with httpx.Client(base_url=base, timeout=30) as http:
        while pending and time.monotonic() < deadline:
            for job_id in list(pending):
                state = http.get(f"/v1/videos/{job_id}").json().get("state")
                if state == "done":
                    report.jobs_done += 1
                    pending.discard(job_id)
                elif state in ("failed", "cancelled", "dead_letter"):
                    report.jobs_failed += 1
                    pending.discard(job_id)
            time.sleep(0.5)
    report.jobs_lost = len(pending)


def run_soak(redis_url: str, sessions: int, duration_s: float, kill_every_s: float,
             workers: int = 2, job_every_s: float = 10.0, sample_s: float = 10.0,
             drain_s: float = 120.0) -> SoakReport:  # fmt: skip
    """Run the soak and return its report (see the module docstring)."""
    import redis

    report = SoakReport()
    tmp = Path(tempfile.mkdtemp(prefix="ctvis-soak-"))
    frames, _ = render_video(9, config_for("val", num_frames=24, height=96, width=128))
    pngs = [_png(f) for f in frames]
    video_path = tmp / "job.mp4"
    with OverlayWriter(video_path, 10, (128, 96)) as w:
        for f in frames[:12]:
            w.write(f)
    cluster = Cluster(redis_url, workers, tmp)
    rclient = redis.Redis.from_url(redis_url)
    stop, lock = threading.Event(), threading.Lock()
    latencies: list[tuple[float, float]] = []
    threads = [threading.Thread(target=_session_loop, args=(cluster.base, pngs, stop, report,
               latencies, lock)) for _ in range(sessions)]  # fmt: skip
    job_ids: list[str] = []
    job_thread = threading.Thread(
        target=lambda: job_ids.extend(
            _jobs_loop(cluster.base, video_path.read_bytes(), job_every_s, stop, report, lock)
        )
    )
    try:
        for t in [*threads, job_thread]:
            t.start()
        start = time.monotonic()
        next_kill, next_sample, last_frames = start + kill_every_s, start + sample_s, 0
        while time.monotonic() - start < duration_s:
            time.sleep(0.2)
            now = time.monotonic()
            if now >= next_kill:
                cluster.kill_one_worker(report.kills)
                report.kills += 1
                next_kill += kill_every_s
            if now >= next_sample:
                with lock:
                    window = [ms for t, ms in latencies if t >= now - sample_s]
                    frames_now = report.frames
                    errors = dict(report.errors)
                sample = {"t": round(now - start), "fps": (frames_now - last_frames) / sample_s,
                          "p50_ms": float(np.percentile(window, 50)) if window else None,
                          "p99_ms": float(np.percentile(window, 99)) if window else None,
                          "errors": errors,
                          "redis_used_mb": _redis_mb(rclient)}  # fmt: skip
                sample.update({f"rss_{k}_mb": rss_mb(pid) for k, pid in cluster.pids().items()})
                report.samples.append(sample)
                last_frames, next_sample = frames_now, next_sample + sample_s
        stop.set()
        for t in [*threads, job_thread]:
            t.join(timeout=180)
        _drain_jobs(cluster.base, job_ids, drain_s, report)
    finally:
        stop.set()
        cluster.stop()
        rclient.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return report


def plot(report: SoakReport, path: Path) -> None:
    """A small PNG line plot (frames/s, p99 latency, API RSS) drawn with Pillow."""
    w, h, pad = 900, 420, 50
    img = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(img)
    series = {"frames/s": ("fps", (40, 90, 200)), "p99 ms": ("p99_ms", (200, 60, 40)),
              "API RSS MB": ("rss_api_mb", (40, 150, 60))}  # fmt: skip
    ts = [s["t"] for s in report.samples] or [0]
    for row, (name, (key, color)) in enumerate(series.items()):
        values = [s.get(key) or 0.0 for s in report.samples] or [0.0]
        top = max(values) or 1.0
        y0 = pad + row * (h - pad) // 3
        band = (h - 2 * pad) // 3
        draw.text((5, y0), f"{name} (max {top:.1f})", fill=color)
        points = [(pad + (t / max(ts[-1], 1)) * (w - 2 * pad), y0 + band - v / top * band)
                  for t, v in zip(ts, values, strict=True)]  # fmt: skip
        if len(points) > 1:
            draw.line(points, fill=color, width=2)
    draw.text((pad, h - 20), f"seconds (0..{ts[-1]})", fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--redis-url", default=os.environ.get("CTVIS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    )
    parser.add_argument("--sessions", type=int, default=30)
    parser.add_argument("--duration", type=float, default=600)
    parser.add_argument("--kill-every", type=float, default=120)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--plot", type=Path)
    args = parser.parse_args()
    report = run_soak(args.redis_url, args.sessions, args.duration, args.kill_every, args.workers)
    print("| t (s) | frames/s | p50 ms | p99 ms | API RSS MB | worker RSS MB | Redis MB | errors |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for s in report.samples:
        workers = "/".join(f"{v:.0f}" for k, v in s.items() if k.startswith("rss_worker"))
        print(
            f"| {s['t']} | {s['fps']:.1f} | {s['p50_ms'] or 0:.0f} | {s['p99_ms'] or 0:.0f} | "
            f"{s['rss_api_mb']:.0f} | {workers} | {s['redis_used_mb']:.1f} | {s['errors']} |"
        )
    print(
        f"\nframes {report.frames}, kills {report.kills}, jobs submitted "
        f"{report.jobs_submitted} / done {report.jobs_done} / failed {report.jobs_failed} / "
        f"lost {report.jobs_lost}, frames lost {report.frames_lost}, errors {dict(report.errors)}"
    )
    if args.plot:
        plot(report, args.plot)


if __name__ == "__main__":
    main()
