"""Prometheus metrics of one server process (prometheus-client, its own registry).

With ``--workers N`` each worker process keeps its own counters: scrape
through the load balancer's view, or run one worker per port.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge,
                               Histogram, generate_latest)

#: seconds: from sub-millisecond single rows to the request timeout
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                   2.5, 5.0, 10.0, 30.0)
ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)


class Metrics:
    """Requests, errors, latency, requests in flight, queue time and batch sizes."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("vaeanom_requests", "HTTP requests answered",
                                ["endpoint", "model", "status"], registry=self.registry)
        self.errors = Counter("vaeanom_request_errors", "Requests answered with 4xx or 5xx",
                              ["endpoint", "model", "status"], registry=self.registry)
        self.latency = Histogram("vaeanom_request_seconds", "Time to answer a request",
                                 ["endpoint", "model"], buckets=LATENCY_BUCKETS,
                                 registry=self.registry)
        #: Triton's nv_inference_pending_request_count, for every endpoint: what an
        #: autoscaler or a drain (wait for 0 before SIGTERM) watches
        self.in_flight = Gauge("vaeanom_requests_in_flight",
                               "Requests received and not yet answered", ["endpoint", "model"],
                               registry=self.registry)
        self.queue = Histogram("vaeanom_queue_seconds",
                               "Time a request waited for its batch to start", ["model"],
                               buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_rows = Histogram("vaeanom_batch_rows", "Rows per onnxruntime batch",
                                    ["model"], buckets=ROW_BUCKETS, registry=self.registry)

    def request(self, path: str, model: str, status: int, seconds: float,
                endpoint: str | None = None) -> None:
        """One answered request; ``endpoint`` overrides the label read off ``path``."""
        endpoint = endpoint or _endpoint(path)
        self.requests.labels(endpoint, model, str(status)).inc()
        if status >= 400:
            self.errors.labels(endpoint, model, str(status)).inc()
        self.latency.labels(endpoint, model).observe(seconds)

    def in_progress(self, path: str, model: str):
        """A context manager that counts a request in flight while it runs."""
        return self.in_flight.labels(_endpoint(path), model).track_inprogress()

    def batch_observer(self, model: str) -> Callable[[int, list[float]], None]:
        def observe(rows: int, waits: list[float]) -> None:
            self.batch_rows.labels(model).observe(rows)
            for wait in waits:
                self.queue.labels(model).observe(wait)
        return observe

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def _endpoint(path: str) -> str:
    """A low-cardinality label for a path: its last word (infer, ready, score, ...)."""
    last = path.rstrip("/").rsplit("/", 1)[-1]
    return last if last in ("infer", "score", "ready", "live", "metrics", "v2") else "metadata"
