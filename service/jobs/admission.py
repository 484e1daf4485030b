"""What a video job may take, and the interface the routes need from a job manager.

Admission is bounded (``JobLimits``): an upload reserves a place among the jobs queued or
running (429 ``too_many_jobs`` past ``max_pending_jobs``) and its bytes among theirs (507
``job_storage_full`` past ``max_job_bytes``) before its body is read, and grows the reservation
as the body arrives (``UploadQuota``); a video whose frames are over ``max_video_pixels`` is
refused (413 ``video_too_large``) from its metadata, and the decoder enforces the same budget
while the job runs.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from service.errors import ApiError
from service.jobs.status import JobOptions
from service.settings import Settings


@dataclass(frozen=True)
class JobLimits:
    """What video jobs may take, from ``Settings`` (see its fields of the same names).

    Attributes:
        max_pending_jobs: Jobs queued or running, uploads in progress included.
        max_job_bytes: Total bytes of their uploads.
        max_video_pixels: Largest frame (width x height) a job decodes.
        upload_lease_s: How long an upload's reservation holds without news; a replica
            that dies mid-upload frees its place after this long.
    """

    max_pending_jobs: int
    max_job_bytes: int
    max_video_pixels: int
    upload_lease_s: float

    @classmethod
    def from_settings(cls, settings: Settings) -> JobLimits:
        """The limits ``settings`` configures (a lease well past the body idle timeout)."""
        return cls(
            max_pending_jobs=settings.max_pending_jobs,
            max_job_bytes=settings.max_job_bytes,
            max_video_pixels=settings.max_video_pixels,
            upload_lease_s=2 * settings.body_idle_timeout_s + 60,
        )


def too_many_jobs(limits: JobLimits) -> ApiError:
    """The 429 for an upload past ``max_pending_jobs``."""
    return ApiError(
        429,
        "too_many_jobs",
        f"{limits.max_pending_jobs} video jobs are queued or running, the limit; retry later",
        headers={"Retry-After": "10"},
    )


def storage_full(used: int, nbytes: int, limits: JobLimits) -> ApiError:
    """The 507 for an upload whose bytes would pass ``max_job_bytes``."""
    return ApiError(
        507,
        "job_storage_full",
        f"queued and running video jobs hold {used} bytes of uploads; {nbytes} more would "
        f"pass the limit of {limits.max_job_bytes} bytes; retry later",
    )


class JobBackend(Protocol):
    """What the video routes need from a job manager."""

    root: Path

    def new_workdir(self) -> tuple[str, Path]: ...

    async def reserve(self, job_id: str, nbytes: int, limits: JobLimits) -> None:
        """Hold a place for the upload of ``job_id`` with ``nbytes`` bytes (again with a
        larger count as it grows; every call renews the reservation).

        Raises:
            ApiError: 429 ``too_many_jobs``, 507 ``job_storage_full``.
        """
        ...

    async def release(self, job_id: str) -> None:
        """Drop the reservation of an upload that did not become a job."""
        ...

    async def create(
        self,
        job_id: str,
        workdir: Path,
        options: JobOptions,
        owner: str | None,
        limits: JobLimits,
    ) -> dict[str, Any]: ...

    async def status(self, job_id: str, owner: str | None) -> dict[str, Any]: ...

    def events(self, job_id: str, owner: str | None) -> AsyncIterator[dict[str, Any]]: ...

    async def cancel(self, job_id: str, owner: str | None) -> None: ...

    async def close(self) -> None: ...


class UploadQuota:
    """An upload's reservation (``JobBackend.reserve``), kept ahead of the bytes received.

    ``start`` reserves the place and the declared size before the body is read; ``grow``
    (called with the bytes stored so far after every chunk) reserves ``STEP`` more whenever
    the upload passes its reservation (or exactly what it holds when a step does not fit),
    and renews the reservation's lease every third of it. A refusal raises out of the body
    reader, which stops reading.
    """

    STEP = 8 * 1024 * 1024

    def __init__(self, jobs: JobBackend, job_id: str, limits: JobLimits) -> None:
        self.jobs = jobs
        self.job_id = job_id
        self.limits = limits
        self.reserved = 0
        self._renewed = 0.0

    async def start(self, declared: int | None) -> None:
        """Reserve a place, with the body's declared length when it has one."""
        await self._reserve(declared or 0)

    async def grow(self, size: int) -> None:
        """Keep the reservation at or above ``size`` bytes and its lease alive."""
        if size > self.reserved:
            try:
                await self._reserve(size + self.STEP)
            except ApiError as exc:
                if exc.code != "job_storage_full":
                    raise
                await self._reserve(size)
        elif time.monotonic() - self._renewed > self.limits.upload_lease_s / 3:
            await self._reserve(self.reserved)

    async def _reserve(self, nbytes: int) -> None:
        await self.jobs.reserve(self.job_id, nbytes, self.limits)
        self.reserved = nbytes
        self._renewed = time.monotonic()
