"""A small Python client of the ctvis-serve API (httpx + websockets; never imports torch).

    from service.client import CtvisClient

    with CtvisClient("http://localhost:8000", api_key="...") as client:
        session = client.create_session()
        for result in client.stream_video(session, "clip.mp4"):   # WebSocket
            print(result.frame_index, [i.track_id for i in result.instances])
        job = client.submit_video("clip.mp4", overlay=True)          # batch job
        client.wait_job(job.job_id, on_progress=print)
        client.download_result(job.job_id, "results.json")

Every error reply of the API raises ``ApiError`` carrying its ``status``, ``code`` and
``message``. ``python -m service.client --help`` is a command-line front end.
"""

from service.client.http import CtvisClient, camera_frames
from service.client.types import (
    ApiError,
    CtvisError,
    FrameResult,
    Instance,
    JobFailedError,
    JobStatus,
    MissingDependencyError,
    ServiceUnreachableError,
    Session,
)

__all__ = [
    "ApiError",
    "CtvisClient",
    "CtvisError",
    "FrameResult",
    "Instance",
    "JobFailedError",
    "JobStatus",
    "MissingDependencyError",
    "ServiceUnreachableError",
    "Session",
    "camera_frames",
]
