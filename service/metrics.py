"""Prometheus metrics of one process (its own registry, so tests can build many apps)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


@dataclass
class Metrics:
    """The service's counters, gauges and histograms."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.frames = Counter("ctvis_frames_total", "Frames processed", ["path"], registry=r)
        self.dropped = Counter("ctvis_frames_dropped_total", "Frames dropped", registry=r)
        self.errors = Counter("ctvis_errors_total", "Errors by code", ["code"], registry=r)
        self.state_cache_misses = Counter(
            "ctvis_state_cache_misses_total",
            "Frames whose session state was read from the store (not saved by this replica)",
            registry=r,
        )
        self.state_bytes = Histogram(
            "ctvis_state_save_bytes",
            "Bytes of tracker state saved per live frame (a delta, or a periodic snapshot)",
            buckets=(4096, 16384, 32768, 65536, 131072, 262144, 524288, 1048576, 4194304),
            registry=r,
        )
        self.batch_size = Histogram(
            "ctvis_batch_size",
            "Frames per model batch",
            buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32),
            registry=r,
        )
        self.model_seconds = Histogram(
            "ctvis_model_seconds",
            "Model + tracker time per batch",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.frame_seconds = Histogram(
            "ctvis_frame_seconds",
            "Receipt-to-reply time per frame",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge("ctvis_queue_depth", "Frames waiting for a batch", registry=r)
        self.live_sessions = Gauge("ctvis_live_sessions", "Live sessions here", registry=r)
        self.jobs = Counter(
            "ctvis_video_jobs_total", "Video jobs by outcome", ["state"], registry=r
        )

    def render(self) -> bytes:
        """Text exposition format."""
        return generate_latest(self.registry)
