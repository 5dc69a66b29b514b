"""Prometheus metrics, named like Triton's where Triton has one, served at ``/metrics``."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import Counter, Gauge, Histogram

_LABELS = ("model", "version")

REQUEST_SUCCESS = Counter(
    "nv_inference_request_success", "Number of successful inference requests", _LABELS
)
REQUEST_FAILURE = Counter(
    "nv_inference_request_failure", "Number of failed inference requests", (*_LABELS, "reason")
)
INFERENCE_COUNT = Counter(
    "nv_inference_count", "Number of inferences performed (batch rows)", _LABELS
)
EXEC_COUNT = Counter("nv_inference_exec_count", "Number of model executions", _LABELS)
REQUEST_DURATION = Counter(
    "nv_inference_request_duration_us", "Cumulative request duration in microseconds", _LABELS
)
QUEUE_DURATION = Counter(
    "nv_inference_queue_duration_us", "Cumulative time requests spent queued, microseconds", _LABELS
)
COMPUTE_DURATION = Counter(
    "nv_inference_compute_infer_duration_us",
    "Cumulative model execution time attributed to requests, microseconds",
    _LABELS,
)
PENDING = Gauge(
    "nv_inference_pending_request_count", "Requests waiting in the queue or running", _LABELS
)
QUEUE_DEPTH = Gauge("infergate_queue_depth", "Requests waiting in the batch queue", ("model",))
BATCH_SIZE = Histogram(
    "infergate_batch_size",
    "Rows per model execution",
    ("model",),
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
LATENCY = Histogram(
    "infergate_request_latency_seconds",
    "End-to-end inference latency inside the gateway",
    ("model",),
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0),
)
REJECTED = Counter(
    "infergate_rejected_requests_total", "Requests refused before running", ("model", "reason")
)


@dataclass(slots=True)
class ModelMetrics:
    """Label-bound children, resolved once per model version: ``labels()`` is too slow per request."""

    success: Counter
    inference_count: Counter
    exec_count: Counter
    request_duration: Counter
    queue_duration: Counter
    compute_duration: Counter
    pending: Gauge
    queue_depth: Gauge
    batch_size: Histogram
    latency: Histogram
    model: str
    version: str

    @classmethod
    def bind(cls, model: str, version: str) -> ModelMetrics:
        return cls(
            success=REQUEST_SUCCESS.labels(model, version),
            inference_count=INFERENCE_COUNT.labels(model, version),
            exec_count=EXEC_COUNT.labels(model, version),
            request_duration=REQUEST_DURATION.labels(model, version),
            queue_duration=QUEUE_DURATION.labels(model, version),
            compute_duration=COMPUTE_DURATION.labels(model, version),
            pending=PENDING.labels(model, version),
            queue_depth=QUEUE_DEPTH.labels(model),
            batch_size=BATCH_SIZE.labels(model),
            latency=LATENCY.labels(model),
            model=model,
            version=version,
        )

    def failure(self, reason: str) -> None:
        REQUEST_FAILURE.labels(self.model, self.version, reason).inc()

    def rejected(self, reason: str) -> None:
        REJECTED.labels(self.model, reason).inc()
