"""Request bodies read with a size limit and an idle timeout (``service.bodies``).

Most requests are built from an ASGI scope and a scripted ``receive``, so each test controls
exactly what arrives and when, and sees how much of the body was read.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from starlette.requests import Request

from service.bodies import (
    MULTIPART_ALLOWANCE,
    BodyLimit,
    check_declared,
    read_body,
    save_body,
)
from service.errors import ApiError
from service.main import create_app
from service.settings import Settings

LIMIT = BodyLimit(max_bytes=1000, idle_timeout_s=0.2, code="thing_too_large", what="thing")
BOUNDARY = "b0undary"


class Script:
    """A ``receive`` that hands out ``chunks`` (then hangs or disconnects) and counts calls."""

    def __init__(self, chunks: list[bytes], then: str = "end") -> None:
        self.chunks = list(chunks)
        self.then = then  # "end": last chunk ends the body; "hang"; "disconnect"
        self.calls = 0

    async def __call__(self) -> dict[str, Any]:
        self.calls += 1
        if self.chunks:
            chunk = self.chunks.pop(0)
            more = bool(self.chunks) or self.then != "end"
            return {"type": "http.request", "body": chunk, "more_body": more}
        if self.then == "disconnect":
            return {"type": "http.disconnect"}
        await asyncio.Event().wait()  # "hang": nothing ever comes
        raise AssertionError("unreachable")


def _request(receive: Callable[[], Awaitable[dict[str, Any]]], **headers: str) -> Request:
    raw = [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()]
    scope = {"type": "http", "method": "POST", "path": "/", "headers": raw, "query_string": b""}
    return Request(scope, receive)  # type: ignore[arg-type]


def _refused(coro: Awaitable[Any]) -> ApiError:
    with pytest.raises(ApiError) as exc:
        asyncio.run(coro)  # type: ignore[arg-type]
    return exc.value


def _multipart(*parts: tuple[str, bytes]) -> bytes:
    """A form from (Content-Disposition parameters, data) pairs."""
    out = b""
    for disposition, data in parts:
        out += f"--{BOUNDARY}\r\nContent-Disposition: form-data; {disposition}\r\n\r\n".encode()
        out += data + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


def _pieces(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


MULTIPART = {"content_type": f"multipart/form-data; boundary={BOUNDARY}"}


def test_body_within_limit_is_read_whole() -> None:
    script = Script([b"ab", b"", b"cd" * 498, b"ef"])  # exactly the limit
    request = _request(script, content_length="1000")
    assert asyncio.run(read_body(request, LIMIT)) == b"ab" + b"cd" * 498 + b"ef"


def test_declared_length_over_limit_refused_before_reading() -> None:
    script = Script([b"x" * 1001])
    error = _refused(read_body(_request(script, content_length="5000000"), LIMIT))
    assert (error.status, error.code) == (413, "thing_too_large")
    assert "5000000" in error.message and "1000" in error.message
    assert error.headers == {"Connection": "close"}
    assert script.calls == 0


def test_undeclared_body_stops_at_limit() -> None:
    script = Script([b"x" * 300] * 100)
    error = _refused(read_body(_request(script), LIMIT))
    assert (error.status, error.code) == (413, "thing_too_large")
    assert script.calls == 4  # 1200 bytes seen: not one chunk more


def test_stalled_body_times_out() -> None:
    script = Script([b"x" * 10], then="hang")
    error = asyncio.run(_timed(read_body(_request(script, content_length="100"), LIMIT)))
    assert isinstance(error, ApiError)
    assert (error.status, error.code) == (408, "body_timeout")
    assert "0.2 s" in error.message


async def _timed(coro: Awaitable[Any]) -> Any:
    """``coro``'s result, or the ApiError it raised within a second."""
    loop = asyncio.get_running_loop()
    began = loop.time()
    try:
        return await coro
    except ApiError as exc:
        assert loop.time() - began < 1.0
        return exc


def test_disconnect_and_bad_length() -> None:
    error = _refused(read_body(_request(Script([b"x"], then="disconnect")), LIMIT))
    assert (error.status, error.code) == (400, "bad_request")
    for value in ("-1", "ten"):
        error = _refused(read_body(_request(Script([b"x"]), content_length=value), LIMIT))
        assert (error.status, error.code) == (400, "bad_request")


def test_check_declared_allows_multipart_framing() -> None:
    within = str(LIMIT.max_bytes + MULTIPART_ALLOWANCE)
    assert check_declared(_request(Script([]), content_length=within, **MULTIPART), LIMIT)
    over = str(LIMIT.max_bytes + MULTIPART_ALLOWANCE + 1)
    for request in (
        _request(Script([]), content_length=within),  # a raw body gets no allowance
        _request(Script([]), content_length=over, **MULTIPART),
    ):
        with pytest.raises(ApiError) as exc:
            check_declared(request, LIMIT)
        assert exc.value.status == 413
    assert "multipart" in exc.value.message


def test_save_raw_body_reports_progress(tmp_path: Path) -> None:
    seen: list[int] = []

    async def progress(size: int) -> None:
        seen.append(size)

    dest = tmp_path / "input"
    data = bytes(range(256)) * 3
    written = asyncio.run(save_body(_request(Script(_pieces(data, 100))), dest, LIMIT, progress))
    assert written == len(data) and dest.read_bytes() == data
    assert seen == [100, 200, 300, 400, 500, 600, 700, 768]


def test_progress_refusal_stops_reading(tmp_path: Path) -> None:
    async def progress(size: int) -> None:
        if size > 250:
            raise ApiError(507, "full", "no room")

    script = Script([b"x" * 100] * 9)
    error = _refused(save_body(_request(script), tmp_path / "input", LIMIT, progress))
    assert error.code == "full" and script.calls == 3


def test_multipart_file_part_streamed_to_disk(tmp_path: Path) -> None:
    payload = bytes(range(256)) * 3 + b"\r\n--not-the-boundary\r\n"
    body = _multipart(
        ('name="note"', b"a small field before the file"),
        ('name="file"; filename="clip.mp4"', payload),
        ('name="other"; filename="second.mp4"', b"ignored: only the first file part is kept"),
    )
    for piece in (1, 7, 64, len(body)):  # boundaries split at every position
        dest = tmp_path / f"input-{piece}"
        request = _request(Script(_pieces(body, piece)), **MULTIPART)
        assert asyncio.run(save_body(request, dest, LIMIT)) == len(payload)
        assert dest.read_bytes() == payload


def test_multipart_file_part_over_limit(tmp_path: Path) -> None:
    body = _multipart(('name="file"; filename="big.mp4"', b"z" * 5000))
    script = Script(_pieces(body, 256))
    dest = tmp_path / "input"
    error = _refused(save_body(_request(script, **MULTIPART), dest, LIMIT))
    assert (error.status, error.code) == (413, "thing_too_large")
    assert dest.stat().st_size <= LIMIT.max_bytes
    assert script.calls <= 6  # stopped about the limit, not at the end of the body
    declared = _request(Script(_pieces(body, 256)), content_length=str(len(body)), **MULTIPART)
    assert _refused(save_body(declared, tmp_path / "input2", LIMIT)).status == 413


def test_multipart_without_a_file_or_truncated(tmp_path: Path) -> None:
    no_file = _multipart(('name="note"', b"just a field"))
    error = _refused(save_body(_request(Script([no_file]), **MULTIPART), tmp_path / "a", LIMIT))
    assert (error.status, error.code) == (422, "no_file")
    cut = _multipart(('name="file"; filename="x.mp4"', b"y" * 300))[:-60]
    error = _refused(save_body(_request(Script([cut]), **MULTIPART), tmp_path / "b", LIMIT))
    assert (error.status, error.code) == (400, "bad_multipart")
    nothing = {"content_type": "multipart/form-data"}
    error = _refused(save_body(_request(Script([cut]), **nothing), tmp_path / "c", LIMIT))
    assert (error.status, error.code) == (400, "bad_multipart")
    garbage = b"--wrong\r\n" + b"x" * 100
    error = _refused(save_body(_request(Script([garbage]), **MULTIPART), tmp_path / "d", LIMIT))
    assert (error.status, error.code) == (400, "bad_multipart")


def test_frame_route_reads_through_the_limit() -> None:
    with TestClient(create_app(Settings(max_frame_bytes=1024))) as client:
        created = client.post("/v1/sessions").json()
        url = f"/v1/sessions/{created['session_id']}/frames"
        headers = {"X-Session-Token": created["token"]}
        for body in (b"x" * 2000, iter([b"x" * 600, b"x" * 600])):  # declared / chunked
            resp = client.post(url, content=body, headers=headers)
            assert resp.status_code == 413, resp.text
            assert resp.json()["code"] == "frame_too_large"
        resp = client.post(url + "?height=4", content=b"x" * 48, headers=headers)
        assert resp.status_code == 422 and resp.json()["code"] == "bad_shape"
        resp = client.post(url, content=iter([b"not ", b"an image"]), headers=headers)
        assert resp.status_code == 415 and "0x" not in resp.json()["message"]
