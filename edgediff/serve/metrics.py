"""The server's Prometheus metrics: requests, queue depth, batch sizes, latency."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Latency buckets from a few-step model on a GPU (tens of ms) to SD 1.5 on a CPU (a minute).
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60, 120)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class ServerMetrics:
    """One app's metrics, in a registry of their own (so several apps can share a process)."""

    content_type = CONTENT_TYPE

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "edgediff_requests",
            "Generation requests answered, by endpoint and HTTP status",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "edgediff_request_seconds",
            "Seconds from a generation request's arrival to its answer (successful ones)",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "edgediff_queue_depth",
            "Generation requests taken and not yet answered (waiting or running)",
            registry=self.registry,
        )
        self.batch_images = Histogram(
            "edgediff_batch_images",
            "Images made by one pipeline call",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.images = Counter(
            "edgediff_images", "Images generated and sent", registry=self.registry
        )

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
