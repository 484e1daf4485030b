"""Request bodies read in chunks, with a size limit and an idle timeout.

The frame route (``POST /v1/sessions/{id}/frames``) and the video upload (``POST /v1/videos``)
read their bodies here, so both refuse the same way and neither ever holds or writes more
than its limit:

* a declared ``Content-Length`` over the limit is refused (413) before a byte is read;
* a body without one (chunked) is read chunk by chunk and refused as soon as it passes the
  limit;
* each chunk must arrive within ``idle_timeout_s`` of the previous one (else 408
  ``body_timeout``), so a client that stops sending cannot hold a request open;
* a ``multipart/form-data`` upload is parsed as it arrives (python-multipart's streaming
  parser): the file part goes straight to its destination file, counted against the same
  limit as a raw body; the rest of the form (boundaries, part headers, small fields) may add
  ``MULTIPART_ALLOWANCE`` bytes and is never kept.

Refusals close the connection (``Connection: close``): the rest of the body is never read.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from service.errors import ApiError

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

MULTIPART_ALLOWANCE = 64 * 1024
"""Bytes a multipart body may carry beyond its file part's limit (boundaries, part headers,
small fields such as a file name)."""

CLOSE = {"Connection": "close"}

Progress = Callable[[int], Awaitable[None]]
"""Called with the bytes stored so far after every chunk (a chance to refuse, by raising)."""


@dataclass(frozen=True)
class BodyLimit:
    """How many bytes a route accepts and how long it waits for each chunk.

    Attributes:
        max_bytes: Largest payload (a raw body, or a multipart body's file part).
        idle_timeout_s: Longest wait for the next chunk of the body.
        code: Error code of the 413 (``frame_too_large``, ``upload_too_large``).
        what: What the payload is called in messages (``frame``, ``upload``).
    """

    max_bytes: int
    idle_timeout_s: float
    code: str
    what: str

    def too_large(self, declared: int | None = None, allowance: int = 0) -> ApiError:
        """The 413 for a body declared as (or grown past) the limit."""
        limit = f"the limit of {self.max_bytes} bytes"
        if allowance:
            limit += f" (plus {allowance} bytes of multipart framing)"
        size = f" of {declared} bytes" if declared is not None else ""
        return ApiError(413, self.code, f"{self.what}{size} is over {limit}", headers=CLOSE)


def is_multipart(request: Request) -> bool:
    """Whether the body is a ``multipart/form-data`` form."""
    return request.headers.get("content-type", "").lower().startswith("multipart/form-data")


def declared_length(request: Request) -> int | None:
    """The request's ``Content-Length`` (None for a chunked body).

    Raises:
        ApiError: 400 ``bad_request`` for a value that is not a non-negative integer.
    """
    value = request.headers.get("content-length")
    if value is None:
        return None
    try:
        length = int(value)
    except ValueError:
        length = -1
    if length < 0:
        raise ApiError(400, "bad_request", "Content-Length is not a byte count", headers=CLOSE)
    return length


def check_declared(request: Request, limit: BodyLimit) -> int | None:
    """``declared_length``, refused at once (413) when it is over the limit.

    A multipart body may declare ``MULTIPART_ALLOWANCE`` bytes more than the limit.
    """
    declared = declared_length(request)
    allowance = MULTIPART_ALLOWANCE if is_multipart(request) else 0
    if declared is not None and declared > limit.max_bytes + allowance:
        raise limit.too_large(declared, allowance)
    return declared


async def body_chunks(
    request: Request, limit: BodyLimit, allowance: int = 0
) -> AsyncGenerator[bytes, None]:
    """The body's chunks as they arrive, at most ``limit.max_bytes + allowance`` bytes.

    Raises:
        ApiError: 413 ``limit.code`` (declared or grown over the limit), 408
            ``body_timeout`` (no chunk for ``limit.idle_timeout_s``), 400 ``bad_request``
            (the client disconnected; nobody will read the answer, but the caller's cleanup
            runs and no traceback is logged).
    """
    declared = declared_length(request)
    cap = limit.max_bytes + allowance
    if declared is not None and declared > cap:
        raise limit.too_large(declared, allowance)
    stream = request.stream()
    seen = 0
    try:
        while True:
            try:
                async with asyncio.timeout(limit.idle_timeout_s):
                    chunk = await anext(stream)
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise ApiError(
                    408,
                    "body_timeout",
                    f"no bytes of the {limit.what} for {limit.idle_timeout_s:g} s",
                    headers=CLOSE,
                ) from None
            except ClientDisconnect:
                raise ApiError(400, "bad_request", "the client disconnected") from None
            seen += len(chunk)
            if seen > cap:
                raise limit.too_large(None, allowance)
            if chunk:
                yield chunk
    finally:
        await stream.aclose()


async def read_body(request: Request, limit: BodyLimit) -> bytes:
    """The whole body (at most ``limit.max_bytes``), for payloads handled in memory."""
    async with aclosing(body_chunks(request, limit)) as stream:
        chunks = [chunk async for chunk in stream]
    return b"".join(chunks)


async def save_body(
    request: Request, dest: Path, limit: BodyLimit, progress: Progress | None = None
) -> int:
    """Write the payload to ``dest``: the raw body, or the file part of a multipart form.

    Returns:
        Bytes written (at most ``limit.max_bytes``).

    Raises:
        ApiError: those of ``body_chunks``; for multipart bodies also 400 ``bad_multipart``
            (malformed, or the body ends inside the file part) and 422 ``no_file``.
    """
    check_declared(request, limit)
    if is_multipart(request):
        return await _save_multipart(request, dest, limit, progress)
    size = 0
    with dest.open("wb") as out:
        async with aclosing(body_chunks(request, limit)) as stream:
            async for chunk in stream:
                out.write(chunk)
                size += len(chunk)
                if progress is not None:
                    await progress(size)
    return size


class _FilePart:
    """Callbacks for python-multipart's ``MultipartParser`` that write one file part.

    The file part is the first part whose ``Content-Disposition`` has a ``filename`` or the
    name ``file``; its bytes go to ``out`` as they are parsed. Other parts are skipped without
    being kept. Header lines are bounded by the parser (``max_header_size``).
    """

    def __init__(self, out: BinaryIO, limit: BodyLimit) -> None:
        self.out = out
        self.limit = limit
        self.size = 0
        self.found = False  # a file part began
        self.complete = False  # ... and its closing boundary was seen
        self._writing = False
        self._field = bytearray()
        self._value = bytearray()
        self._disposition = b""

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
        }

    def _part_begin(self) -> None:
        self._disposition = b""

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        if self._field.lower() == b"content-disposition":
            self._disposition = bytes(self._value)
        self._field.clear()
        self._value.clear()

    def _headers_finished(self) -> None:
        if self.found:
            return
        _, params = parse_options_header(self._disposition)
        if b"filename" in params or params.get(b"name") == b"file":
            self.found = self._writing = True

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if not self._writing:
            return
        if self.size + (end - start) > self.limit.max_bytes:
            raise self.limit.too_large()
        self.out.write(memoryview(data)[start:end])
        self.size += end - start

    def _part_end(self) -> None:
        if self._writing:
            self._writing = False
            self.complete = True


async def _save_multipart(
    request: Request, dest: Path, limit: BodyLimit, progress: Progress | None
) -> int:
    _, params = parse_options_header(request.headers.get("content-type"))
    boundary = params.get(b"boundary")
    if not boundary:
        raise ApiError(400, "bad_multipart", "multipart/form-data without a boundary")
    with dest.open("wb") as out:
        part = _FilePart(out, limit)
        parser = MultipartParser(boundary, part.callbacks())
        async with aclosing(body_chunks(request, limit, MULTIPART_ALLOWANCE)) as stream:
            async for chunk in stream:
                try:
                    parser.write(chunk)
                except MultipartParseError as exc:
                    raise ApiError(
                        400, "bad_multipart", f"malformed multipart body: {exc}", headers=CLOSE
                    ) from None
                if progress is not None:
                    await progress(part.size)
        parser.finalize()
    if not part.found:
        raise ApiError(422, "no_file", "multipart upload has no file part")
    if not part.complete:
        raise ApiError(400, "bad_multipart", "the multipart body ends inside its file part")
    return part.size
