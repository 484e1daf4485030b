"""``CtvisClient``: HTTP (httpx) and WebSocket (websockets) calls of the ctvis-serve API."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

import httpx
import numpy as np

from service.client.types import (
    ApiError,
    CtvisError,
    FrameResult,
    JobFailedError,
    JobStatus,
    MissingDependencyError,
    ServiceUnreachableError,
    Session,
)

Frame = bytes | np.ndarray
_MAGIC = {b"\xff\xd8\xff": "image/jpeg", b"\x89PNG": "image/png", b"RIFF": "image/webp"}


def _raise_for_error(resp: httpx.Response) -> None:
    if resp.is_success:
        return
    try:
        body = resp.json()
        code, message = str(body["code"]), str(body["message"])
    except (ValueError, KeyError, TypeError):
        code, message = f"http_{resp.status_code}", resp.text[:500]
    raise ApiError(resp.status_code, code, message)


def _content_type(data: bytes) -> str:
    for magic, kind in _MAGIC.items():
        if data.startswith(magic):
            return kind
    return "application/octet-stream"


def _raw_frame(frame: np.ndarray) -> np.ndarray:
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"frames must be HxWx3 RGB arrays, got shape {frame.shape}")
    return np.ascontiguousarray(frame, dtype=np.uint8)


# Refusals of the stream (close 1008): the reason is the API's error code.
_REFUSAL_STATUS = {
    "unauthorized": 401,
    "invalid_token": 401,
    "session_not_found": 404,
    "model_mismatch": 409,
}


def _closed_error(exc: Any) -> ApiError:
    """The ``ApiError`` for a stream the server closed before its ``end`` (a websockets
    ``ConnectionClosed``): the close code says whether to fix something, retry or stop."""
    close = exc.rcvd
    code, reason = (close.code, close.reason) if close is not None else (1006, "")
    name = reason.partition(":")[0].strip()
    if code == 1008:
        name = name or "unauthorized"
        message = f"the server refused the stream ({name}): check the API key and session token"
        return ApiError(_REFUSAL_STATUS.get(name, 403), name, message)
    if code == 4001:
        message = "another stream took over this session; this one was closed (do not reconnect)"
        return ApiError(409, "superseded", message)
    if code == 1013:
        return ApiError(503, name or "try_again_later", f"server busy, try again later ({reason})")
    if code == 1009:
        return ApiError(413, "frame_too_large", "a frame exceeded the server's message size limit")
    if code == 1012:
        return ApiError(503, "server_restarting", f"server restarting; reconnect ({reason})")
    if code == 1011:
        return ApiError(500, name or "internal_error", f"server error: {reason or 'no reason'}")
    return ApiError(503, "stream_closed", f"stream closed early: {exc}")


def _send_all(ws: Any, frames: Iterable[Frame], failure: list[BaseException]) -> None:
    """Send ``frames`` (raw arrays after a ``raw`` control, or encoded bytes), then ``end``."""
    from websockets.exceptions import ConnectionClosed

    shape: tuple[int, int] | None = None
    try:
        for frame in frames:
            if isinstance(frame, np.ndarray):
                array = _raw_frame(frame)
                if array.shape[:2] != shape:
                    shape = (array.shape[0], array.shape[1])
                    ws.send(json.dumps({"type": "raw", "height": shape[0], "width": shape[1]}))
                ws.send(array.tobytes())
            else:
                if shape is not None:
                    ws.send(json.dumps({"type": "encoded"}))
                    shape = None
                ws.send(bytes(frame))
        ws.send(json.dumps({"type": "end"}))
    except ConnectionClosed:
        pass  # the reader sees the close and reports it
    except Exception as exc:  # noqa: BLE001 - re-raised in the reading thread
        failure.append(exc)
        ws.close()


class CtvisClient:
    """Synchronous client of one ctvis-serve deployment.

    Args:
        base_url: e.g. ``http://localhost:8000`` (no trailing ``/v1``).
        api_key: sent as ``Authorization: Bearer <key>`` when set.
        timeout: seconds for each HTTP request (uploads and downloads included).
    """

    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = 60.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    def __enter__(self) -> CtvisClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._http.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            resp = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ServiceUnreachableError(f"{method} {self.base_url}{path}: {exc}") from exc
        _raise_for_error(resp)
        return resp

    # -- ops ---------------------------------------------------------------------------
    def health(self) -> bool:
        """True when ``/healthz`` answers ok."""
        return bool(self._request("GET", "/healthz").json().get("status") == "ok")

    def ready(self) -> bool:
        """True when ``/readyz`` says the model is loaded and the store reachable."""
        try:
            return self._http.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False

    def models(self) -> list[dict[str, Any]]:
        """The served models (``GET /v1/models``)."""
        return list(self._request("GET", "/v1/models").json()["models"])

    # -- live sessions -----------------------------------------------------------------
    def create_session(
        self,
        tracker: dict[str, Any] | None = None,
        backpressure: Literal["block", "drop_oldest"] = "block",
        queue_size: int = 4,
    ) -> Session:
        """Start a live session (``tracker``: TrackerConfig overrides)."""
        body = {"tracker": tracker or {}, "backpressure": backpressure, "queue_size": queue_size}
        data = self._request("POST", "/v1/sessions", json=body).json()
        return Session(data["session_id"], data["token"], float(data["expires_at"]))

    def session_info(self, session: Session) -> dict[str, Any]:
        """Frame counter, live tracks and settings of ``session``."""
        headers = {"X-Session-Token": session.token}
        return dict(
            self._request("GET", f"/v1/sessions/{session.session_id}", headers=headers).json()
        )

    def close_session(self, session: Session) -> None:
        """End ``session`` and delete its state."""
        headers = {"X-Session-Token": session.token}
        self._request("DELETE", f"/v1/sessions/{session.session_id}", headers=headers)

    def send_frame(self, session: Session, frame: Frame) -> FrameResult:
        """Track one frame over HTTP: encoded image bytes or an HxWx3 uint8 RGB array."""
        headers = {"X-Session-Token": session.token}
        params: dict[str, int] = {}
        if isinstance(frame, np.ndarray):
            array = _raw_frame(frame)
            params = {"height": array.shape[0], "width": array.shape[1]}
            data, headers["Content-Type"] = array.tobytes(), "application/octet-stream"
        else:
            data, headers["Content-Type"] = frame, _content_type(frame)
        path = f"/v1/sessions/{session.session_id}/frames"
        resp = self._request("POST", path, content=data, headers=headers, params=params)
        return FrameResult.from_json(resp.json())

    def stream_frames(self, session: Session, frames: Iterable[Frame]) -> Iterator[FrameResult]:
        """Track ``frames`` over the session's WebSocket, one result per frame, in order.

        A sender thread writes frames while results are read, so the server batches and
        pipelines them. An error reply of the server raises ``ApiError``, and so does a close
        before the end: ``code`` is the refusal (close 1008: ``unauthorized``,
        ``invalid_token``, ``session_not_found``, ``model_mismatch``), ``superseded`` (4001:
        another stream took over the session), ``too_many_streams`` (1013: retry later),
        ``server_restarting`` (1012: reconnect), ``frame_too_large`` (1009) or
        ``internal_error`` (1011).
        """
        from websockets.exceptions import ConnectionClosed, InvalidStatus
        from websockets.sync.client import connect

        url = self.base_url.replace("http", "ws", 1) + f"/v1/sessions/{session.session_id}/stream"
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else None
        try:
            ws_context = connect(f"{url}?token={session.token}", additional_headers=headers,
                                 max_size=None, open_timeout=30)  # fmt: skip
        except InvalidStatus as exc:
            message = "WebSocket refused: bad session token or API key"
            raise ApiError(exc.response.status_code, "unauthorized", message) from exc
        except OSError as exc:
            raise ServiceUnreachableError(f"{url}: {exc}") from exc
        with ws_context as ws:
            failure: list[BaseException] = []
            sender = threading.Thread(
                target=_send_all,
                args=(ws, frames, failure),
                name="ctvis-client-sender",
                daemon=True,
            )
            sender.start()
            try:
                while True:
                    try:
                        message = json.loads(ws.recv())
                    except ConnectionClosed as exc:
                        if failure:
                            raise failure[0] from exc
                        raise _closed_error(exc) from exc
                    if message.get("type") == "frame":
                        yield FrameResult.from_json(message)
                    elif message.get("type") == "error":
                        raise ApiError(400, message["code"], message["message"])
                    elif message.get("type") == "end":
                        return
            finally:
                ws.close()
                sender.join(timeout=5)

    def stream_video(
        self,
        session: Session,
        path: str | Path,
        frame_stride: int = 1,
        max_frames: int | None = None,
    ) -> Iterator[FrameResult]:
        """Stream a video file or frame folder (decoded with ``model.video.reader.FrameSource``)."""
        try:
            from model.video.reader import FrameSource
        except ImportError as exc:  # PyAV / Pillow missing
            raise MissingDependencyError(f"reading videos needs PyAV and Pillow: {exc}") from exc
        return self.stream_frames(session, FrameSource(path, frame_stride, max_frames))

    def stream_camera(
        self, session: Session, device: int = 0, max_frames: int | None = None
    ) -> Iterator[FrameResult]:
        """Stream a camera (OpenCV ``VideoCapture(device)``) as JPEG frames."""
        return self.stream_frames(session, camera_frames(device, max_frames))

    # -- video jobs --------------------------------------------------------------------
    def submit_video(
        self,
        path: str | Path,
        frame_stride: int = 1,
        max_frames: int | None = None,
        overlay: bool = False,
        video_id: int = 1,
        overlay_score: float | None = None,
    ) -> JobStatus:
        """Upload a video file (streamed from disk) as a batch job; returns its first status.

        ``overlay_score``: lowest results score the overlay draws (None: the server's default).
        """
        params: dict[str, Any] = {"frame_stride": frame_stride, "overlay": str(overlay).lower()}
        params["video_id"] = video_id
        if max_frames is not None:
            params["max_frames"] = max_frames
        if overlay_score is not None:
            params["overlay_score"] = overlay_score

        def chunks() -> Iterator[bytes]:
            with open(path, "rb") as handle:
                while chunk := handle.read(1 << 20):
                    yield chunk

        headers = {"Content-Type": "application/octet-stream"}
        resp = self._request("POST", "/v1/videos", params=params, content=chunks(), headers=headers)
        return JobStatus.from_json(resp.json())

    def job_status(self, job_id: str) -> JobStatus:
        """The current status of a job."""
        return JobStatus.from_json(self._request("GET", f"/v1/videos/{job_id}").json())

    def wait_job(
        self,
        job_id: str,
        on_progress: Callable[[JobStatus], None] | None = None,
        timeout: float | None = None,
        mode: Literal["events", "poll"] = "events",
        poll_interval: float = 0.5,
    ) -> JobStatus:
        """Wait until a job finishes, calling ``on_progress`` on every update.

        ``events`` follows the server-sent events; ``poll`` polls the status. Raises
        ``JobFailedError`` when the job fails or is cancelled, ``TimeoutError`` after
        ``timeout`` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        updates = self._events(job_id) if mode == "events" else self._poll(job_id, poll_interval)
        for status in updates:
            if on_progress is not None:
                on_progress(status)
            if status.finished:
                if status.state != "done":
                    raise JobFailedError(status)
                return status
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {status.state} after {timeout} s")
        raise CtvisError(f"progress of job {job_id} ended before the job finished")

    def _poll(self, job_id: str, interval: float) -> Iterator[JobStatus]:
        while True:
            status = self.job_status(job_id)
            yield status
            time.sleep(interval)

    def _events(self, job_id: str) -> Iterator[JobStatus]:
        try:
            with self._http.stream("GET", f"/v1/videos/{job_id}/events", timeout=None) as resp:
                if not resp.is_success:
                    resp.read()
                    _raise_for_error(resp)
                for line in resp.iter_lines():
                    if line.startswith("data:"):
                        yield JobStatus.from_json(json.loads(line[5:]))
        except httpx.TransportError as exc:
            raise ServiceUnreachableError(f"events of job {job_id}: {exc}") from exc

    def job_result(self, job_id: str) -> list[dict[str, Any]]:
        """The YouTube-VIS results JSON of a finished job."""
        return list(self._request("GET", f"/v1/videos/{job_id}/result").json())

    def download_result(self, job_id: str, dest: str | Path) -> Path:
        """Save the results JSON of a finished job to ``dest``."""
        return self._download(f"/v1/videos/{job_id}/result", Path(dest))

    def download_overlay(self, job_id: str, dest: str | Path) -> Path:
        """Save the overlay MP4 of a finished job created with ``overlay=True``."""
        return self._download(f"/v1/videos/{job_id}/overlay", Path(dest))

    def cancel_job(self, job_id: str) -> None:
        """Cancel a running job, or delete a finished one."""
        self._request("DELETE", f"/v1/videos/{job_id}")

    def _download(self, path: str, dest: Path) -> Path:
        try:
            with self._http.stream("GET", path) as resp:
                if not resp.is_success:
                    resp.read()
                    _raise_for_error(resp)
                dest.parent.mkdir(parents=True, exist_ok=True)
                with dest.open("wb") as out:
                    for chunk in resp.iter_bytes(1 << 20):
                        out.write(chunk)
        except httpx.TransportError as exc:
            raise ServiceUnreachableError(f"GET {self.base_url}{path}: {exc}") from exc
        return dest


def camera_frames(device: int = 0, max_frames: int | None = None) -> Iterator[bytes]:
    """JPEG frames from an OpenCV camera; needs ``opencv-python(-headless)``."""
    try:
        import cv2
    except ImportError as exc:
        raise MissingDependencyError(
            "camera input needs OpenCV: pip install opencv-python-headless"
        ) from exc
    capture = cv2.VideoCapture(device)
    if not capture.isOpened():
        raise CtvisError(f"cannot open camera {device}")
    try:
        count = 0
        while max_frames is None or count < max_frames:
            ok, bgr = capture.read()
            if not ok:
                return
            ok, jpeg = cv2.imencode(".jpg", bgr)  # OpenCV frames are BGR; JPEG keeps colours
            if ok:
                count += 1
                yield jpeg.tobytes()
    finally:
        capture.release()
