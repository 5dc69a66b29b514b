"""Prometheus metrics at ``/metrics``.

Triton's per-model families (``nv_inference_*``, ``nv_cache_*``) are rendered from the same
counters that back ``/v2/models/m/stats``, with Triton's exact names and types, so dashboards
written for Triton work unchanged and the two views never disagree. Gateway-only metrics
(histograms, queue depth, rejections) live in prometheus-client's registry.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from service.observability import gpu

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
STAY = Histogram(
    "infergate_request_stay_seconds",
    "A request's whole stay, from its arrival at the front end (decoding included) to its "
    "answer: what the admission budget (--max-queue-wait-ms) covers",
    ("model",),
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 7.5, 10.0, 30.0),
)
FRAME_REQUESTS = Histogram(
    "infergate_executor_frame_requests",
    "Requests per frame a front-end worker sent the executor (--workers N)",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
STATISTICS_SINCE = Gauge(
    "infergate_statistics_start_time_seconds",
    "When the counts of /v2/models/m/stats and of the nv_inference_* families began (the "
    "process holding them started: they reset, as Triton's do, when it restarts)",
)
REJECTED = Counter(
    "infergate_rejected_requests_total", "Requests refused before running", ("model", "reason")
)

RESIDENT_BYTES = Gauge(
    "infergate_model_resident_bytes",
    "Memory a resident model holds, measured across its load (sessions and warm-up): RSS growth "
    "for device cpu, NVML used-memory growth for each GPU",
    ("model", "device"),
)
MODEL_LOADS = Counter(
    "infergate_model_loads_total", "Model loads, by outcome (ok or failed)", ("model", "outcome")
)
MODEL_EVICTIONS = Counter(
    "infergate_model_evictions_total",
    "Models unloaded to make room under a memory budget (least recently used, idle, unpinned)",
    ("model",),
)
MODEL_LOAD_SECONDS = Histogram(
    "infergate_model_load_seconds",
    "Duration of a model's load: every version's sessions and warm-up",
    ("model",),
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0),
)


class SharedGauge:
    """A labelled gauge whose children outlive a reload: the new backend sets the same labels
    before the old one closes, so a child is removed only when its last holder lets go."""

    def __init__(self, gauge: Gauge) -> None:
        self.gauge = gauge
        self._holders: dict[tuple[str, ...], int] = {}
        self._lock = threading.Lock()

    def hold(self, labels: tuple[str, ...], value: float) -> None:
        with self._lock:
            self._holders[labels] = self._holders.get(labels, 0) + 1
            self.gauge.labels(*labels).set(value)

    def release(self, labels: tuple[str, ...]) -> None:
        with self._lock:
            left = self._holders.get(labels, 0) - 1
            if left > 0:
                self._holders[labels] = left
            elif labels in self._holders:
                del self._holders[labels]
                self.gauge.remove(*labels)


INSTANCE_INFO = SharedGauge(
    Gauge(
        "infergate_model_instance_info",
        "Loaded model instances by device and the ONNX Runtime provider really in use",
        ("model", "version", "device", "provider", "gpu_mem_limit_bytes"),
    )
)
WARMUP_SECONDS = SharedGauge(
    Gauge(
        "infergate_warmup_seconds",
        "Duration of the last model_warmup run of a model version (all samples, all instances)",
        ("model", "version"),
    )
)


@dataclass(slots=True)
class ModelMetrics:
    """Label-bound children, resolved once per model: ``labels()`` is too slow per request."""

    queue_depth: Gauge
    batch_size: Histogram
    latency: Histogram
    stay: Histogram
    model: str

    @classmethod
    def bind(cls, model: str) -> ModelMetrics:
        return cls(
            QUEUE_DEPTH.labels(model),
            BATCH_SIZE.labels(model),
            LATENCY.labels(model),
            STAY.labels(model),
            model,
        )

    def rejected(self, reason: str) -> None:
        REJECTED.labels(self.model, reason).inc()


@dataclass(frozen=True, slots=True)
class ModelCounters:
    """One model version's counters, as Triton's metric families read them."""

    model: str
    version: str
    success: int
    failure: int
    inference_count: int
    execution_count: int
    request_ns: int
    queue_ns: int
    compute_input_ns: int
    compute_infer_ns: int
    compute_output_ns: int
    pending: int
    cache_hits: int
    cache_misses: int
    cache_hit_ns: int
    cache_miss_ns: int


# (name, type, help, ModelCounters field, divisor): Triton 2.51's families, same names and units.
_TRITON_FAMILIES: list[tuple[str, str, str, str, int]] = [
    ("nv_inference_request_success", "counter",
     "Number of successful inference requests, all batch sizes", "success", 1),
    ("nv_inference_request_failure", "counter",
     "Number of failed inference requests, all batch sizes", "failure", 1),
    ("nv_inference_count", "counter",
     "Number of inferences performed (does not include cached requests)", "inference_count", 1),
    ("nv_inference_exec_count", "counter",
     "Number of model executions performed (does not include cached requests)",
     "execution_count", 1),
    ("nv_inference_request_duration_us", "counter",
     "Cumulative inference request duration in microseconds (includes cached requests)",
     "request_ns", 1000),
    ("nv_inference_queue_duration_us", "counter",
     "Cumulative inference queuing duration in microseconds", "queue_ns", 1000),
    ("nv_inference_compute_input_duration_us", "counter",
     "Cumulative compute input duration in microseconds", "compute_input_ns", 1000),
    ("nv_inference_compute_infer_duration_us", "counter",
     "Cumulative compute inference duration in microseconds", "compute_infer_ns", 1000),
    ("nv_inference_compute_output_duration_us", "counter",
     "Cumulative inference compute output duration in microseconds", "compute_output_ns", 1000),
    ("nv_inference_pending_request_count", "gauge",
     "Instantaneous number of pending requests awaiting execution per-model", "pending", 1),
    ("nv_cache_num_hits_per_model", "counter", "Number of cache hits per model", "cache_hits", 1),
    ("nv_cache_num_misses_per_model", "counter",
     "Number of cache misses per model", "cache_misses", 1),
    ("nv_cache_hit_duration_per_model", "counter",
     "Total cache hit duration per model, in microseconds", "cache_hit_ns", 1000),
    ("nv_cache_miss_duration_per_model", "counter",
     "Total cache miss (insertion) duration per model, in microseconds", "cache_miss_ns", 1000),
]  # fmt: skip


def render(model_counters: Iterable[ModelCounters], registry: bytes) -> bytes:
    """Triton-named families from each version's counters, GPU gauges, then ``registry`` (the
    exposition of prometheus-client's registry, this process's or every process's merged)."""
    stats = list(model_counters)
    lines: list[str] = []
    for name, kind, help_text, field, divisor in _TRITON_FAMILIES:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        for entry in stats:
            value = int(getattr(entry, field)) // divisor
            lines.append(f'{name}{{model="{entry.model}",version="{entry.version}"}} {value}')
    lines.extend(gpu.render_lines(gpu.read_gpus()))
    return ("\n".join(lines) + "\n").encode() + registry


def registry_text() -> bytes:
    """This process's prometheus-client registry in the text exposition format."""
    return generate_latest()


#: per-process gauges that do not add up across processes: the largest is shown
_NOT_SUMMED = frozenset(
    {
        "process_start_time_seconds",
        "process_max_fds",
        "python_info",
        "infergate_statistics_start_time_seconds",
    }
)


def merge_exposition(texts: Iterable[bytes]) -> bytes:
    """Several processes' registries as one exposition: samples with equal names and labels
    summed (counters, histogram buckets, gauges such as queue depth or resident memory)."""
    families: dict[str, Metric] = {}
    values: dict[tuple[str, str, tuple[tuple[str, str], ...]], float] = {}
    for text in texts:
        for family in text_string_to_metric_families(text.decode()):
            if family.name.endswith("_created"):
                continue  # creation times do not add up; they are optional in the format
            known = families.setdefault(
                family.name, Metric(family.name, family.documentation, family.type)
            )
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue
                key = (family.name, sample.name, tuple(sorted(sample.labels.items())))
                if key not in values:
                    known.samples.append(sample)
                    values[key] = sample.value
                elif sample.name in _NOT_SUMMED:
                    values[key] = max(values[key], sample.value)
                else:
                    values[key] += sample.value
    for family in families.values():
        family.samples = [
            sample._replace(
                value=values[(family.name, sample.name, tuple(sorted(sample.labels.items())))]
            )
            for sample in family.samples
        ]
    return exposition(families.values())


def exposition(families: Iterable[Metric]) -> bytes:
    """Already-collected families in the text exposition format."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(list(families)))
    return generate_latest(registry)


class _Fixed(Collector):
    """Already-collected families, for ``generate_latest``."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return self.families
