"""Failover: a Redis Cluster primary SIGKILLed while live sessions stream and a video job runs.

    python bench/failover.py --sessions 10 --frames 48 --kill-after 4

Starts a 3-primary / 3-replica Redis Cluster on loopback, one ``ctvis serve --no-worker``
API and one ``ctvis worker`` on it (tiny random-weight model), runs one reference session and
one reference video job, then streams ``--sessions`` HTTP sessions of the same frames and
submits the same video while one primary is SIGKILLed ``--kill-after`` seconds in. A frame
answered 503 (store unavailable during the election) or 409 ``session_busy`` (a lease left by
a frame the outage interrupted) is resent after a short pause, as a client would. Prints the
timeline (frames answered and errors per second) and checks that every session's track ids
equal the reference's and the job's result equals the reference result. Bounded in time and
count; talks only to 127.0.0.1. ``run_failover`` is also used by the test suite.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _cluster import LocalCluster  # noqa: E402
from _proc import free_port  # noqa: E402

from model.video.overlay import OverlayWriter  # noqa: E402
from training.data.synthetic import config_for, render_video  # noqa: E402

RETRYABLE = {503, 409}


@dataclass
class FailoverReport:
    """What happened around the kill."""

    killed_port: int = 0
    kill_at_s: float = 0.0
    frames: int = 0
    retries: Counter[str] = field(default_factory=Counter)
    other_errors: Counter[str] = field(default_factory=Counter)
    sessions_matching: int = 0
    sessions: int = 0
    job_state: str = ""
    job_result_equal: bool = False
    timeline: list[tuple[int, int, int]] = field(default_factory=list)
    """(second, frames answered, retryable errors) per second since the start."""

    def ok(self) -> bool:
        """No wrong state: every session matches, the job finished identically."""
        return (
            self.sessions_matching == self.sessions
            and not self.other_errors
            and self.job_state == "done"
            and self.job_result_equal
        )


def _png(frame: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="PNG")
    return buf.getvalue()


class _Processes:
    """The API and one worker on the cluster."""

    def __init__(self, redis_url: str, workdir: Path, worker_timeout_s: float) -> None:
        exe = shutil.which("ctvis") or str(Path(sys.executable).parent / "ctvis")
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("CTVIS_")}
        env.update(
            CTVIS_REDIS_URL=redis_url, CTVIS_CHECKPOINT="tiny-random",
            CTVIS_JOB_DIR=str(workdir / "jobs"), CTVIS_LOG_LEVEL="warning",
            CTVIS_MAX_SESSION_FPS="1000", CTVIS_LEASE_MS="2000",
            CTVIS_WORKER_TIMEOUT_S=str(worker_timeout_s),
        )  # fmt: skip
        self.logs = [(workdir / "api.log").open("wb"), (workdir / "worker.log").open("wb")]
        self.procs = [
            subprocess.Popen([exe, "serve", "--no-worker", "--port", str(self.port)],
                             env=env, stdout=self.logs[0], stderr=subprocess.STDOUT),
            subprocess.Popen([exe, "worker"], env=env, stdout=self.logs[1],
                             stderr=subprocess.STDOUT),
        ]  # fmt: skip
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.base + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.close()
        raise RuntimeError("the API did not become ready")

    def close(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        for log in self.logs:
            log.close()


def _send(http: httpx.Client, path: str, **kwargs: Any) -> httpx.Response:
    return http.post(path, **kwargs)


def _session(base: str, frames: list[bytes], report: FailoverReport | None,
             events: list[tuple[float, str]] | None, lock: threading.Lock,
             deadline: float) -> list[list[tuple[int, int]]]:  # fmt: skip
    """One session's ids per frame; retryable refusals are resent (counted in ``report``)."""
    out: list[list[tuple[int, int]]] = []
    with httpx.Client(base_url=base, timeout=60) as http:
        while True:
            created = http.post("/v1/sessions")
            if created.status_code == 201:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"cannot create a session: {created.text}")
            time.sleep(0.2)
        sid, hdr = created.json()["session_id"], {"X-Session-Token": created.json()["token"]}
        for index, frame in enumerate(frames):
            while True:
                try:
                    resp = http.post(f"/v1/sessions/{sid}/frames", content=frame, headers=hdr)
                    code = resp.json().get("code", str(resp.status_code))
                except httpx.HTTPError as exc:
                    resp, code = None, f"transport:{type(exc).__name__}"
                now = time.monotonic()
                if resp is not None and resp.status_code == 200:
                    body = resp.json()
                    if body["frame_index"] != index:
                        raise RuntimeError(f"frame {index} answered as {body['frame_index']}")
                    out.append([(i["track_id"], i["category_id"]) for i in body["instances"]])
                    if events is not None:
                        with lock:
                            events.append((now, "frame"))
                    break
                retryable = resp is None or resp.status_code in RETRYABLE
                if report is not None:
                    with lock:
                        (report.retries if retryable else report.other_errors)[code] += 1
                        if events is not None:
                            events.append((now, "error"))
                if not retryable or now > deadline:
                    raise RuntimeError(f"frame {index}: {code}")
                time.sleep(0.2)
    return out


def _job(base: str, video: bytes, deadline: float) -> tuple[str, Any]:
    with httpx.Client(base_url=base, timeout=60) as http:
        while True:
            resp = http.post("/v1/videos", content=video)
            if resp.status_code == 202:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"cannot submit the job: {resp.text}")
            time.sleep(0.2)
        job_id = resp.json()["job_id"]
        while time.monotonic() < deadline:
            try:
                status = http.get(f"/v1/videos/{job_id}")
            except httpx.HTTPError:
                time.sleep(0.2)
                continue
            if status.status_code == 200 and status.json()["state"] in (
                "done", "failed", "dead_letter", "cancelled"
            ):  # fmt: skip
                state = status.json()["state"]
                result = http.get(f"/v1/videos/{job_id}/result").json() if state == "done" else None
                return state, result
            time.sleep(0.25)
    return "timeout", None


def run_failover(sessions: int = 10, frames_per_session: int = 48, kill_after_s: float = 4.0,
                 worker_timeout_s: float = 30.0,
                 timeout_s: float = 240.0) -> FailoverReport:  # fmt: skip
    """Run the scenario of the module docstring and return its report.

    ``worker_timeout_s`` (``CTVIS_WORKER_TIMEOUT_S``) bounds how long a frame whose request
    was lost with the killed primary (the frames stream lives on one primary) waits before
    its 503 ``worker_unavailable``.
    """
    report = FailoverReport(sessions=sessions)
    tmp = Path(tempfile.mkdtemp(prefix="ctvis-failover-"))
    rendered, _ = render_video(5, config_for("val", num_frames=16, height=96, width=128))
    pngs = [_png(rendered[i % len(rendered)]) for i in range(frames_per_session)]
    video_path = tmp / "job.mp4"
    with OverlayWriter(video_path, 10, (128, 96)) as writer:
        for frame in rendered:
            writer.write(frame)
    video = video_path.read_bytes()
    lock = threading.Lock()
    try:
        with LocalCluster(tmp / "cluster") as cluster:
            procs = _Processes(cluster.url, tmp, worker_timeout_s)
            try:
                deadline = time.monotonic() + timeout_s
                want = _session(procs.base, pngs, None, None, lock, deadline)
                want_state, want_result = _job(procs.base, video, deadline)
                assert want_state == "done", want_state
                events: list[tuple[float, str]] = []
                results: list[Any] = [None] * sessions
                job_out: list[Any] = [None]

                def drive(i: int) -> None:
                    try:
                        results[i] = _session(procs.base, pngs, report, events, lock, deadline)
                    except RuntimeError as exc:
                        results[i] = exc

                def job() -> None:
                    job_out[0] = _job(procs.base, video, deadline)

                started = time.monotonic()
                threads = [threading.Thread(target=drive, args=(i,)) for i in range(sessions)]
                threads.append(threading.Thread(target=job))
                for t in threads:
                    t.start()
                time.sleep(kill_after_s)
                report.kill_at_s = time.monotonic() - started
                report.killed_port = cluster.kill_primary()
                for t in threads:
                    t.join(timeout=max(1.0, deadline - time.monotonic()))
                report.sessions_matching = sum(r == want for r in results)
                for r in results:
                    if isinstance(r, Exception):
                        report.other_errors[str(r)] += 1
                report.frames = sum(1 for _, kind in events if kind == "frame")
                report.job_state, result = job_out[0] or ("timeout", None)
                report.job_result_equal = result == want_result
                seconds = int(max((t for t, _ in events), default=started) - started) + 1
                for s in range(seconds):
                    in_s = [k for t, k in events if s <= t - started < s + 1]
                    report.timeline.append((s, in_s.count("frame"), in_s.count("error")))
            finally:
                procs.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--frames", type=int, default=48, help="frames per session")
    parser.add_argument("--kill-after", type=float, default=4.0, help="seconds before the kill")
    parser.add_argument("--worker-timeout", type=float, default=30.0, help="CTVIS_WORKER_TIMEOUT_S")
    args = parser.parse_args()
    report = run_failover(args.sessions, args.frames, args.kill_after, args.worker_timeout)
    print("| t (s) | frames answered | retryable errors |")
    print("| --- | --- | --- |")
    for second, frames, errors in report.timeline:
        mark = " (kill)" if second == int(report.kill_at_s) else ""
        print(f"| {second}{mark} | {frames} | {errors} |")
    print(
        f"\nkilled primary :{report.killed_port} at {report.kill_at_s:.1f} s; frames "
        f"{report.frames}; retries {dict(report.retries)}; other errors "
        f"{dict(report.other_errors)}; sessions matching the reference "
        f"{report.sessions_matching}/{report.sessions}; job {report.job_state}, result equal: "
        f"{report.job_result_equal}"
    )
    return 0 if report.ok() else 1


if __name__ == "__main__":
    raise SystemExit(main())
