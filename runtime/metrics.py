"""Prometheus metrics of one server, in a registry of its own (two apps never share counters)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from bitfit_deploy.runtime.batcher import BatchStats

CONTENT_TYPE = CONTENT_TYPE_LATEST
UNKNOWN_TASK = "_unknown"
"""The task label of requests naming no loaded task: client-chosen names never become labels."""

_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ServerMetrics:
    """Counters, histograms and gauges of one server; `render()` is the `GET /metrics` body."""

    def __init__(self, loaded_tasks: Callable[[], int]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "bitfit_requests",
            "Prediction requests per task and endpoint.",
            ["task", "endpoint"],
            registry=r,
        )
        self.errors = Counter(
            "bitfit_request_errors",
            "Failed requests per task and HTTP status.",
            ["task", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "bitfit_request_latency_seconds",
            "Time from request to response, per endpoint.",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "bitfit_batch_size", "Rows per runtime run.", buckets=_BATCH_BUCKETS, registry=r
        )
        self.batch_tasks = Histogram(
            "bitfit_batch_tasks",
            "Distinct tasks per runtime run.",
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.batch_requests = Histogram(
            "bitfit_batch_requests", "Requests per runtime run.", buckets=_BATCH_BUCKETS, registry=r
        )
        self.mixed_batches = Counter(
            "bitfit_mixed_batches", "Runtime runs holding rows of more than one task.", registry=r
        )
        self.inference = Histogram(
            "bitfit_inference_seconds",
            "Duration of one runtime run.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge("bitfit_queue_depth", "Rows waiting for a batch.", registry=r)
        self.loaded = Gauge("bitfit_loaded_tasks", "Tasks loaded in the runtime.", registry=r)
        self.loaded.set_function(lambda: float(loaded_tasks()))

    def observe_batch(self, stats: BatchStats) -> None:
        """Record one runtime run (the batcher's `on_batch` callback)."""
        self.batch_size.observe(stats.rows)
        self.batch_tasks.observe(stats.tasks)
        self.batch_requests.observe(stats.requests)
        self.inference.observe(stats.seconds)
        if stats.tasks > 1:
            self.mixed_batches.inc()

    def set_queue_depth(self, rows: int) -> None:
        """Record the rows waiting (the batcher's `on_queue` callback)."""
        self.queue_depth.set(rows)

    def render(self) -> bytes:
        """The registry in the Prometheus text format."""
        return generate_latest(self.registry)
