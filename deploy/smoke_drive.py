"""Drive a running ctvis-serve compose stack through its load balancer (``deploy/smoke.sh``).

    python deploy/smoke_drive.py --url http://127.0.0.1:8080 --engine podman \\
        --project ctvis-smoke --work /tmp/smoke

Every check is fatal; they run in this order:

1. ``/readyz`` answers 200 several times in a row (every API replica behind nginx is ready) and
   ``/v1/models`` serves the bundled demo model with one model id.
2. Live: two WebSocket sessions stream the same synthetic video (PNG frames, at the same
   time, through nginx) and get the same track ids, classes and scores (1e-4) and masks
   (IoU >= 0.99) on every frame; some ground-truth object keeps one track id on most frames.
3. Video job: an MP4 goes to ``done`` and its YouTube-VIS result agrees with ``ctvis track`` on
   the same file, run here (same tracks, classes, scores within 1e-3, mask IoU >= 0.98).
4. Worker loss: the same MP4 again; the worker running it is found in Redis (the pending
   entry of the jobs stream names ``<hostname>-<pid>-jobs``) and SIGKILLed
   (``<engine> kill``) past a third of the video; another worker resumes it from its progress
   checkpoint (the job record's ``resumed_from`` > 0), and the job is ``done`` with a result
   byte-for-byte equal to step 3's. The killed container is started again.
5. ``/metrics``: through nginx, and inside every API (port 8000) and worker (port 9100)
   container that runs; the API replicas together counted every live frame.

Prints one line, ``drive ok: ...`` or ``drive FAIL [check]: reason``; exit status 0 or 1.
Runs on the host with the project's virtual environment (httpx, websockets, numpy, PyAV,
pycocotools and the synthetic video generator of ``training.data.synthetic``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT, ROOT / "deploy"):  # run as a script: the packages and smoke_stack.py
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from smoke_stack import (  # noqa: E402
    CheckFailed,
    Stack,
    check,
    iou,
    png,
    synthetic_video,
    write_mp4,
)

FINAL = {"done", "failed", "cancelled", "dead_letter"}


# ---- 1. ready and serving the demo model -----------------------------------------------------


def wait_ready(client: httpx.Client, timeout: float, in_a_row: int = 6) -> float:
    """Seconds until ``/readyz`` answered 200 ``in_a_row`` times in a row."""
    start, streak, last = time.monotonic(), 0, ""
    while time.monotonic() - start < timeout:
        try:
            resp = client.get("/readyz")
            streak, last = (streak + 1, "") if resp.status_code == 200 else (0, resp.text)
        except httpx.HTTPError as exc:
            streak, last = 0, repr(exc)
        if streak >= in_a_row:
            return time.monotonic() - start
        time.sleep(0.5 if streak else 2)
    raise CheckFailed("ready", f"/readyz not 200 {in_a_row} times in a row in {timeout}s: {last}")


def served_model(client: httpx.Client) -> dict[str, Any]:
    ids = set()
    for _ in range(4):  # several requests: nginx spreads them over the replicas
        resp = client.get("/v1/models")
        check(resp.status_code == 200, "models", f"/v1/models: {resp.status_code} {resp.text}")
        (model,) = resp.json()["models"]
        ids.add(model["model_id"])
    check(model["name"] == "ctvis-demo", "models", f"serves {model['name']!r}, not ctvis-demo")
    check(len(ids) == 1, "models", f"replicas serve different model ids: {ids}")
    return model


# ---- 2. live sessions over WebSockets --------------------------------------------------------


async def live_session(url: str, frames: list[bytes]) -> list[dict[str, Any]]:
    """One session: create it, stream every frame, ``end``; the frame replies in order."""
    from websockets.asyncio.client import connect

    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        resp = await client.post("/v1/sessions", json={})
        check(resp.status_code == 201, "live", f"POST /v1/sessions: {resp.status_code} {resp.text}")
        created = resp.json()
    ws_url = url.replace("http", "ws", 1) + f"/v1/sessions/{created['session_id']}/stream"
    replies: list[dict[str, Any]] = []
    async with connect(f"{ws_url}?token={created['token']}", max_size=None) as ws:
        for data in frames:  # one at a time: each reply before the next frame
            await ws.send(data)
            reply = json.loads(await asyncio.wait_for(ws.recv(), 120))
            check(reply.get("type") == "frame", "live", f"frame {len(replies)}: {reply}")
            replies.append(reply)
        await ws.send(json.dumps({"type": "end"}))
        end = json.loads(await asyncio.wait_for(ws.recv(), 60))
    check(end.get("type") == "end" and end.get("frames") == len(frames), "live", f"end: {end}")
    return replies


def same_instances(a: list[dict[str, Any]], b: list[dict[str, Any]], where: str) -> None:
    ids_a = [(i["track_id"], i["category_id"]) for i in a]
    ids_b = [(i["track_id"], i["category_id"]) for i in b]
    check(ids_a == ids_b, "live", f"{where}: track ids / classes differ: {ids_a} vs {ids_b}")
    for x, y in zip(a, b, strict=True):
        check(
            abs(x["score"] - y["score"]) < 1e-4,
            "live",
            f"{where}: scores {x['score']} {y['score']}",
        )
        overlap = iou(x["segmentation"], y["segmentation"])
        check(overlap >= 0.99, "live", f"{where}: track {x['track_id']} mask IoU {overlap:.3f}")


def id_consistency(replies: list[dict[str, Any]], truth: list[dict[str, Any]]) -> float:
    """Best over ground-truth objects: the share of the frames where it is found (mask IoU
    >= 0.5) that carry its most frequent track id."""
    from pycocotools import mask as mask_utils

    best = 0.0
    for obj in truth:
        seen: Counter[int] = Counter()
        for reply, mask in zip(replies, obj["masks"], strict=True):
            if mask is None or not mask.any():
                continue
            gt = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            found = [
                (iou({"size": gt["size"], "counts": gt["counts"]}, i["segmentation"]), i)
                for i in reply["instances"]
            ]
            overlap, inst = max(found, key=lambda f: f[0], default=(0.0, None))
            if inst is not None and overlap >= 0.5:
                seen[inst["track_id"]] += 1
        if seen:
            best = max(best, seen.most_common(1)[0][1] / sum(seen.values()))
    return best


def drive_live(url: str, frames: list[np.ndarray], truth: list[dict[str, Any]]) -> str:
    data = [png(f) for f in frames]

    async def both() -> list[list[dict[str, Any]]]:
        return list(await asyncio.gather(live_session(url, data), live_session(url, data)))

    first, second = asyncio.run(both())
    check(
        [r["frame_index"] for r in first] == [r["frame_index"] for r in second],
        "live",
        "frame indexes differ",
    )
    for n, (a, b) in enumerate(zip(first, second, strict=True)):
        same_instances(a["instances"], b["instances"], f"frame {n}")
    tracks = {i["track_id"] for r in first for i in r["instances"]}
    check(tracks, "live", "no instance tracked on any frame")
    consistency = id_consistency(first, truth)
    check(consistency >= 0.5, "live", f"no object keeps one track id ({consistency:.0%})")
    return (
        f"live 2 sessions x {len(frames)} frames: same ids ({len(tracks)} tracks, "
        f"{consistency:.0%} id-consistent)"
    )


# ---- 3. + 4. video jobs ----------------------------------------------------------------------


def submit(client: httpx.Client, video: Path) -> str:
    resp = client.post(
        "/v1/videos",
        content=video.read_bytes(),
        headers={"Content-Type": "application/octet-stream"},
    )
    check(resp.status_code == 202, "job", f"POST /v1/videos: {resp.status_code} {resp.text}")
    return str(resp.json()["job_id"])


def status(client: httpx.Client, job_id: str) -> dict[str, Any]:
    resp = client.get(f"/v1/videos/{job_id}")
    check(resp.status_code == 200, "job", f"GET /v1/videos/{job_id}: {resp.status_code}")
    return dict(resp.json())


def wait_done(client: httpx.Client, job_id: str, timeout: float) -> dict[str, Any]:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        state = status(client, job_id)
        if state["state"] in FINAL:
            check(state["state"] == "done", "job", f"job {job_id} ended {state}")
            return state
        time.sleep(0.5)
    raise CheckFailed("job", f"job {job_id} not done in {timeout}s: {status(client, job_id)}")


def result(client: httpx.Client, job_id: str) -> bytes:
    resp = client.get(f"/v1/videos/{job_id}/result")
    check(resp.status_code == 200, "job", f"result of {job_id}: {resp.status_code} {resp.text}")
    return resp.content


def check_ytvis(results: list[dict[str, Any]], frames: int) -> None:
    check(isinstance(results, list) and results, "job", "empty YouTube-VIS result")
    for entry in results:
        check(
            {"video_id", "category_id", "score", "segmentations"} <= set(entry),
            "job",
            f"not a YouTube-VIS result entry: {sorted(entry)}",
        )
        check(len(entry["segmentations"]) == frames, "job", "one segmentation per frame")


def same_tracks(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> None:
    """The job's result against ``ctvis track``: order, classes, scores, masks."""
    check(len(got) == len(want), "job", f"{len(got)} tracks, ctvis track {len(want)}")
    for n, (a, b) in enumerate(zip(got, want, strict=True)):
        check(a["category_id"] == b["category_id"], "job", f"track {n}: class differs")
        check(abs(a["score"] - b["score"]) < 1e-3, "job", f"track {n}: {a['score']} {b['score']}")
        worst = min(iou(x, y) for x, y in zip(a["segmentations"], b["segmentations"], strict=True))
        check(worst >= 0.98, "job", f"track {n}: a mask IoU of {worst:.3f} with ctvis track")


def local_track(video: Path, out: Path) -> list[dict[str, Any]]:
    done = subprocess.run(
        [sys.executable, "-m", "cli", "track", str(video), "--out", str(out), "--no-progress"],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    check(done.returncode == 0, "job", f"ctvis track failed: {done.stderr[-2000:]}")
    return list(json.loads(out.read_text()))


def job_holder(stack: Stack) -> str | None:
    """Hostname of the worker that holds the (only) pending entry of the jobs stream or its
    shards (the key names come from the service's own code: the same tree the image was
    built from)."""
    from service.keys import JOB_GROUP, JOBS_STREAM, jobs_stream_key

    shards = stack.stream_shards
    for shard in range(shards):
        stream = jobs_stream_key(JOBS_STREAM, shard, shards)
        lines = stack.redis_cli("XPENDING", stream, JOB_GROUP, "-", "+", "10").split()
        if len(lines) >= 4:
            consumer = lines[1]  # entry id, consumer, idle ms, deliveries
            return consumer.rsplit("-", 2)[0] if consumer.endswith("-jobs") else None
    return None


def job_field(stack: Stack, job_id: str, field: str) -> str:
    """One field of the job's Redis hash."""
    from service.keys import JOBS_STREAM, job_key

    key = job_key(JOBS_STREAM, job_id, stack.stream_shards)
    return stack.redis_cli("HGET", key, field).strip()


def drive_jobs(
    client: httpx.Client, stack: Stack, video: Path, frames: int, work: Path, timeout: float
) -> tuple[str, str]:
    start = time.monotonic()
    first = submit(client, video)
    wait_done(client, first, timeout)
    job_s = time.monotonic() - start
    reference = result(client, first)
    results = json.loads(reference)
    check_ytvis(results, frames)
    same_tracks(results, local_track(video, work / "ctvis_track.json"))
    job = f"job {frames} frames done in {job_s:.1f}s, {len(results)} tracks = ctvis track"

    second = submit(client, video)
    deadline = time.monotonic() + timeout
    state = status(client, second)
    while state["frames_done"] < frames // 3:
        check(time.monotonic() < deadline, "kill", f"job never got a third done: {state}")
        check(state["state"] not in FINAL, "kill", f"job ended before the kill: {state}")
        time.sleep(0.2)
        state = status(client, second)
    holder = job_holder(stack)
    while holder is None:  # between reads, or its shard's node answering late: look again
        state = status(client, second)
        check(state["state"] not in FINAL, "kill", f"job ended before the kill: {state}")
        check(time.monotonic() < deadline, "kill", "no worker holds the running job")
        time.sleep(0.5)
        holder = job_holder(stack)
    workers = {stack.hostname(c): c for c in stack.containers("worker")}
    check(len(workers) >= 2, "kill", f"{len(workers)} worker(s) running: none to take over")
    check(holder in workers, "kill", f"job held by {holder!r}, workers are {sorted(workers)}")
    stack.run("kill", workers[holder])
    try:
        killed_at = status(client, second)["frames_done"]  # its last progress report
        check(killed_at < frames, "kill", f"job finished before the kill ({killed_at} frames)")
        final = wait_done(client, second, timeout)
        check(final["attempts"] >= 2, "kill", f"job not resumed by another attempt: {final}")
        resumed_from = job_field(stack, second, "resumed_from")
        check(
            resumed_from.isdigit() and 0 < int(resumed_from) < frames,
            "kill",
            f"the last attempt started at frame {resumed_from!r}, not from a checkpoint",
        )
        again = result(client, second)
        check(
            again == reference, "kill", "result after the kill differs from the uninterrupted run"
        )
    finally:  # the killed worker stays down (a restart policy ignores a kill): start it again
        stack.run("start", workers[holder])
    kill = (
        f"worker killed at frame {killed_at}/{frames}, resumed from checkpoint {resumed_from} "
        f"(attempt {final['attempts']}), result identical"
    )
    return job, kill


# ---- 5. metrics ------------------------------------------------------------------------------


def samples(text: str, name: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                total += sample.value
    return total


def retry(fetch: Callable[[], str], timeout: float) -> str:
    """``fetch()``, tried again every 2 s for ``timeout`` seconds while it raises."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return fetch()
        except (RuntimeError, subprocess.TimeoutExpired):
            if time.monotonic() > deadline:
                raise
            time.sleep(2)


def drive_metrics(client: httpx.Client, stack: Stack, live_frames: int) -> str:
    resp = client.get("/metrics")
    check(resp.status_code == 200, "metrics", f"/metrics through nginx: {resp.status_code}")
    check("ctvis_frames_total" in resp.text, "metrics", "no ctvis_frames_total through nginx")
    apis, workers = stack.containers("api"), stack.containers("worker")
    check(apis and workers, "metrics", f"running: {len(apis)} API, {len(workers)} worker")
    api_frames = 0.0
    for container in apis:
        text = stack.metrics(container, 8000)
        check("ctvis_live_sessions" in text, "metrics", f"API {container[:12]}: {text[:200]}")
        api_frames += samples(text, "ctvis_frames_total")
    for container in workers:
        text = retry(lambda c=container: stack.metrics(c, 9100), 90)  # a restarted one loads
        check("ctvis_batch_size" in text, "metrics", f"worker {container[:12]}: {text[:200]}")
    check(
        api_frames >= live_frames,
        "metrics",
        f"API replicas counted {api_frames:.0f} frames, {live_frames} were sent",
    )
    return f"/metrics: {len(apis)} API + {len(workers)} worker containers"


# ---- main ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="the load balancer, http://HOST:PORT")
    parser.add_argument("--engine", default="podman", help="podman or docker")
    parser.add_argument("--project", required=True, help="compose project name")
    parser.add_argument("--work", type=Path, required=True, help="folder for the test files")
    parser.add_argument("--live-frames", type=int, default=24)
    parser.add_argument("--job-frames", type=int, default=480)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--stream-shards", type=int, default=1, help="the stack's shards")
    parser.add_argument("--timeout", type=float, default=300, help="per wait, seconds")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    stack = Stack(args.engine, args.project, args.stream_shards)
    step, parts = "ready", []
    try:
        with httpx.Client(base_url=args.url, timeout=120) as client:
            ready_s = wait_ready(client, args.timeout)
            model = served_model(client)
            parts.append(f"ready in {ready_s:.0f}s, model {model['name']}")
            step = "live"
            frames, truth = synthetic_video(args.seed, args.live_frames)
            parts.append(drive_live(args.url, frames, truth))
            step = "job"
            video = write_mp4(
                synthetic_video(args.seed + 1, args.job_frames)[0], args.work / "job.mp4"
            )
            parts.extend(drive_jobs(client, stack, video, args.job_frames, args.work, args.timeout))
            step = "metrics"
            parts.append(drive_metrics(client, stack, 2 * args.live_frames))
    except CheckFailed as exc:
        print(f"drive FAIL [{exc.args[0]}]: {exc.args[1]}", flush=True)
        return 1
    except Exception as exc:  # noqa: BLE001 - any other failure is a failed drive too
        print(f"drive FAIL [{step}]: {exc!r}", flush=True)
        return 1
    print("drive ok: " + "; ".join(parts), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
