"""Triton's statistics extension: per model version counters served at ``/v2/models/m/stats``.

Every recording also feeds the Prometheus children, so the two views never disagree.
"""

from __future__ import annotations

import time

from service.messages import JsonObject
from service.observability.metrics import ModelCounters, ModelMetrics


class Duration:
    __slots__ = ("count", "ns")

    def __init__(self) -> None:
        self.count = 0
        self.ns = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns

    def to_dict(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


class BatchStats:
    __slots__ = ("compute_input", "compute_infer", "compute_output")

    def __init__(self) -> None:
        self.compute_input = Duration()
        self.compute_infer = Duration()
        self.compute_output = Duration()


#: what a front-end worker counted of one version since it last shipped its counts: success
#: count and nanoseconds, failure count and nanoseconds, the last inference (ms since the epoch)
RequestCounts = tuple[int, int, int, int, int]


class ModelStats:
    """Counters for one model version, updated only from the event loop (no locking needed)."""

    def __init__(self, model: str, version: str) -> None:
        self.model = model
        self.version = version
        self.metrics = ModelMetrics.bind(model)
        self.success = Duration()
        self.fail = Duration()
        self.queue = Duration()
        self.compute_input = Duration()
        self.compute_infer = Duration()
        self.compute_output = Duration()
        self.inference_count = 0
        self.execution_count = 0
        self.last_inference_ms = 0
        self.batches: dict[int, BatchStats] = {}
        self._shipped = (0, 0, 0, 0)

    def take_counts(self) -> RequestCounts | None:
        """The request counts since the last take (None: nothing new), for the process that
        holds the counts (the executor); this process's own stay as they are."""
        now = (self.success.count, self.success.ns, self.fail.count, self.fail.ns)
        if now == self._shipped:
            return None
        delta = tuple(value - shipped for value, shipped in zip(now, self._shipped))
        self._shipped = now
        return delta[0], delta[1], delta[2], delta[3], self.last_inference_ms

    def add_counts(self, counts: RequestCounts) -> None:
        """Another process's :meth:`take_counts`."""
        success, success_ns, failures, failure_ns, last_ms = counts
        self.success.add(success_ns, success)
        self.fail.add(failure_ns, failures)
        self.last_inference_ms = max(self.last_inference_ms, last_ms)

    def record_execution(self, rows: int, input_ns: int, infer_ns: int, output_ns: int) -> None:
        """One model execution of ``rows`` rows (one call into the backend)."""
        self.execution_count += 1
        self.inference_count += rows
        stats = self.batches.get(rows)
        if stats is None:
            stats = self.batches[rows] = BatchStats()
        stats.compute_input.add(input_ns)
        stats.compute_infer.add(infer_ns)
        stats.compute_output.add(output_ns)
        self.metrics.batch_size.observe(rows)

    def record_request(
        self, queue_ns: int, input_ns: int, infer_ns: int, output_ns: int, requests: int = 1
    ) -> None:
        """Per-request share of an execution: its queue wait and the batch's compute times."""
        self.queue.add(queue_ns * requests, requests)
        self.compute_input.add(input_ns * requests, requests)
        self.compute_infer.add(infer_ns * requests, requests)
        self.compute_output.add(output_ns * requests, requests)

    def record_success(self, total_ns: int, stay_ns: int = 0) -> None:
        """A request answered: ``total_ns`` in the data plane, ``stay_ns`` since it arrived at
        the front end (what admission's budget covers; 0 = unknown)."""
        self.success.add(total_ns)
        self.last_inference_ms = time.time_ns() // 1_000_000
        self.metrics.latency.observe(total_ns / 1e9)
        if stay_ns:
            self.metrics.stay.observe(stay_ns / 1e9)

    def record_failure(self, total_ns: int) -> None:
        self.fail.add(total_ns)

    def counters(self, cache: dict[str, int] | None, pending: int) -> ModelCounters:
        """What Triton's metric families show of this version (the same counters as /stats)."""
        cache = cache or {}
        return ModelCounters(
            model=self.model,
            version=self.version,
            success=self.success.count,
            failure=self.fail.count,
            inference_count=self.inference_count,
            execution_count=self.execution_count,
            request_ns=self.success.ns + self.fail.ns,
            queue_ns=self.queue.ns,
            compute_input_ns=self.compute_input.ns,
            compute_infer_ns=self.compute_infer.ns,
            compute_output_ns=self.compute_output.ns,
            pending=pending,
            cache_hits=cache.get("hit_count", 0),
            cache_misses=cache.get("miss_count", 0),
            cache_hit_ns=cache.get("hit_ns", 0),
            cache_miss_ns=cache.get("miss_ns", 0),
        )

    def to_dict(self, cache: dict[str, int] | None = None) -> JsonObject:
        """The JSON form of Triton's ``ModelStatistics`` (numbers, not strings)."""
        cache = cache or {}
        return {
            "name": self.model,
            "version": self.version,
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": {
                "success": self.success.to_dict(),
                "fail": self.fail.to_dict(),
                "queue": self.queue.to_dict(),
                "compute_input": self.compute_input.to_dict(),
                "compute_infer": self.compute_infer.to_dict(),
                "compute_output": self.compute_output.to_dict(),
                "cache_hit": {"count": cache.get("hit_count", 0), "ns": cache.get("hit_ns", 0)},
                "cache_miss": {"count": cache.get("miss_count", 0), "ns": cache.get("miss_ns", 0)},
            },
            "batch_stats": [
                {
                    "batch_size": size,
                    "compute_input": stats.compute_input.to_dict(),
                    "compute_infer": stats.compute_infer.to_dict(),
                    "compute_output": stats.compute_output.to_dict(),
                }
                for size, stats in sorted(self.batches.items())
            ],
            "memory_usage": [],
        }
