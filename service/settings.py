"""Service settings, read from the environment (prefix ``CTVIS_``) or passed in tests."""

from __future__ import annotations

import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.keys import FRAMES_STREAM, JOBS_STREAM
from service.redis_conn import SENTINEL_SCHEME, parse_sentinel_url


class Settings(BaseSettings):
    """Deployment knobs of ``ctvis serve`` / ``ctvis worker``.

    Every field can be set as an environment variable ``CTVIS_<FIELD>`` (case-insensitive),
    e.g. ``CTVIS_REDIS_URL=redis://redis:6379/0``.
    """

    model_config = SettingsConfigDict(env_prefix="CTVIS_", extra="ignore")

    host: str = Field("127.0.0.1", description="Interface the HTTP server binds to.")
    port: int = Field(8000, ge=0, le=65535, description="TCP port of the HTTP server.")
    checkpoint: str | None = Field(
        None,
        description="Checkpoint directory (ours, from `ctvis convert` or training). "
        "Unset: the bundled demo checkpoint (a tiny model trained on the synthetic benchmark); "
        "`tiny-random`: the tiny preset with random weights (for tests).",
    )
    redis_url: str | None = Field(
        None,
        description="Redis URL for session state: one server or any node of a Redis Cluster "
        "(`redis://host:port/db`), or Sentinels "
        "(`redis+sentinel://host:port,host:port/<service>/<db>`). Unset: in-process store "
        "(one replica).",
    )
    redis_mode: Literal["auto", "single", "cluster"] = Field(
        "auto",
        description="How to talk to `redis_url`: `auto` asks the server (`INFO cluster`) and "
        "uses the cluster client for a Redis Cluster node; `single` / `cluster` force one.",
    )
    device: str = Field("cpu", description="Torch device for inference, e.g. `cpu`, `cuda:0`.")
    dtype: Literal["float32", "float16", "bfloat16"] = Field(
        "float32", description="Inference precision (half types run the forward under autocast)."
    )
    onednn_linear: Literal["auto", "on", "off"] = Field(
        "auto",
        description="For float32 on the CPU, run the network's larger linear layers through "
        "oneDNN instead of MKL (the same values up to float32 rounding). `auto`: where oneDNN "
        "is the faster one (AMD CPUs with AVX-512: 1.5-2.3x faster products; MKL stays on "
        "AVX2-only and Intel CPUs). `true` / `false` are read as `on` / `off`.",
    )
    max_batch_size: int = Field(8, ge=1, description="Frames from different sessions per batch.")
    max_wait_ms: float = Field(5.0, ge=0, description="Longest wait to fill a batch.")
    session_ttl_s: int = Field(600, ge=1, description="Idle seconds before a session expires.")
    max_sessions: int = Field(256, ge=1, description="Live sessions allowed at once.")
    max_upload_bytes: int = Field(
        512 * 1024 * 1024, ge=1024, description="Largest accepted video upload."
    )
    max_video_frames: int = Field(
        5000, ge=1, description="Most frames (after stride) one video job may process."
    )
    max_frame_bytes: int = Field(
        16 * 1024 * 1024, ge=1024, description="Largest accepted encoded frame."
    )
    max_video_pixels: int = Field(
        4096 * 4096,
        ge=64 * 64,
        description="Largest video frame (width x height) a job accepts; the stream is probed "
        "before any frame is decoded (413 `video_too_large` beyond).",
    )
    max_pending_jobs: int = Field(
        16,
        ge=1,
        description="Video jobs queued or running at once (429 `too_many_jobs` beyond).",
    )
    max_job_bytes: int = Field(
        4 * 1024 * 1024 * 1024,
        ge=1024,
        description="Total bytes of the uploads of queued or running video jobs "
        "(507 `job_storage_full` beyond).",
    )
    body_idle_timeout_s: float = Field(
        30.0,
        gt=0,
        description="A request body that sends nothing for this long is abandoned (408).",
    )
    header_timeout_s: float = Field(
        10.0,
        gt=0,
        description="A connection whose request headers are not complete this long after it "
        "opens (or after its previous response) is closed.",
    )
    max_connections: int = Field(
        1024,
        ge=1,
        description="Open connections and requests per process; past it new requests get 503.",
    )
    max_websockets: int = Field(
        256,
        ge=1,
        description="Open WebSocket streams per process (close 1013 `try again later` beyond).",
    )
    ws_queue_bytes: int = Field(
        64 * 1024 * 1024,
        ge=1024,
        description="Bytes of frames one WebSocket may have waiting; past it the reader stops "
        "(`block`) or drops the oldest frames (`drop_oldest`).",
    )
    api_keys: str | None = Field(
        None,
        description="Comma-separated API keys (or `sha256:<hex>` digests) required as "
        "`Authorization: Bearer <key>` on /v1 routes. Unset: no API key needed.",
    )
    max_session_fps: float = Field(
        60.0, gt=0, description="Frames per second one session may send (429 beyond)."
    )
    lease_ms: int = Field(
        10_000, ge=100, description="Per-session lease serialising frames across replicas."
    )
    lease_wait_ms: int = Field(
        2_000, ge=0, description="How long a frame waits for another replica's lease."
    )
    state_cache_sessions: int = Field(
        256,
        ge=0,
        description="Sessions whose last saved tracker state a replica keeps in memory, so "
        "their next frame skips reading it back from the store (0 = always read).",
    )
    state_snapshot_every: int = Field(
        32,
        ge=1,
        description="A live frame saves only what it changed in the tracker state (a delta of "
        "a few KB) except every Nth frame, which saves the whole state; 1 saves it every frame.",
    )
    malloc_tuned: bool = Field(
        True,
        description="Raise glibc's mmap / trim thresholds (64 / 256 MiB) at start-up, so the "
        "~1 MB tensors every frame allocates reuse freed heap memory instead of fresh mmap'd, "
        "page-faulted pages (the tracker step runs ~2x faster); a process may keep up to "
        "256 MiB of freed memory. No effect outside glibc.",
    )
    worker: bool = Field(
        True,
        description="Run the model in this process. False (`ctvis serve --no-worker`): send "
        "frames to `ctvis worker` processes through Redis Streams (needs redis_url).",
    )
    worker_timeout_s: float = Field(
        30.0, gt=0, description="How long the API waits for a worker's reply (then 503)."
    )
    frames_stream: str = Field(
        FRAMES_STREAM, min_length=1, description="Redis stream carrying frames to workers."
    )
    stream_shards: int = Field(
        1,
        ge=1,
        le=256,
        description="Shards of the frames stream and of the job queue: a session's frames and "
        "a job go to the shard their id hashes to, every worker reads all shards. On a Redis "
        "Cluster, the number of primaries (or a multiple) spreads the streams over them; API "
        "replicas and workers must agree.",
    )
    send_timeout_s: float = Field(
        10.0, gt=0, description="Deadline for sending one reply to a WebSocket client."
    )
    shutdown_grace_s: float = Field(
        10.0, ge=0, description="Time in-flight frames get to finish on shutdown/disconnect."
    )
    claim_idle_ms: int = Field(
        5_000,
        ge=100,
        description="Workers take over frames another worker left unanswered this long.",
    )
    stream_ttl_s: int = Field(
        3600, ge=1, description="The frames stream expires after this long without traffic."
    )
    job_dir: str | None = Field(
        None,
        description="Directory for uploads and results of video jobs; API replicas and "
        "workers must share it. Unset: a directory under the system temp dir.",
    )
    max_job_attempts: int = Field(
        3, ge=1, description="A video job failing this often moves to dead_letter."
    )
    job_claim_idle_ms: int = Field(
        30_000, ge=100, description="A job whose worker went silent this long is resumed."
    )
    job_checkpoint_clips: int = Field(
        4, ge=1, description="Clips between progress checkpoints of a video job."
    )
    job_ttl_s: int = Field(86_400, ge=60, description="How long job records are kept.")
    jobs_stream: str = Field(JOBS_STREAM, min_length=1, description="Redis stream of jobs.")
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Log level of the service."
    )

    @model_validator(mode="after")
    def _worker_needs_redis(self) -> Settings:
        if not self.worker and not self.redis_url:
            raise ValueError("worker=False (--no-worker) needs redis_url: workers meet in Redis")
        return self

    @field_validator("onednn_linear", mode="before")
    @classmethod
    def _onednn_linear_words(cls, value: object) -> object:
        words = {"true": "on", "1": "on", "yes": "on", "false": "off", "0": "off", "no": "off"}
        if isinstance(value, bool):
            return "on" if value else "off"
        if isinstance(value, str):
            return words.get(value.strip().lower(), value.strip().lower())
        return value

    @property
    def onednn_linear_choice(self) -> bool | None:
        """``onednn_linear`` as ``TorchBackend`` takes it: None for ``auto``."""
        return None if self.onednn_linear == "auto" else self.onednn_linear == "on"

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str | None) -> str | None:
        if (
            value is not None
            and value
            and not value.startswith(("redis://", "rediss://", "unix://", SENTINEL_SCHEME))
        ):
            raise ValueError(
                "redis_url must start with redis://, rediss://, unix:// or redis+sentinel://"
            )
        if value and value.startswith(SENTINEL_SCHEME):
            parse_sentinel_url(value)  # ValueError names what is wrong
        return value or None


def job_dir(settings: Settings) -> Path:
    """The shared job directory (created on demand)."""
    path = Path(settings.job_dir or Path(tempfile.gettempdir()) / "ctvis-jobs")
    path.mkdir(parents=True, exist_ok=True)
    return path


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings (cached; tests pass their own ``Settings`` instead)."""
    return Settings()
