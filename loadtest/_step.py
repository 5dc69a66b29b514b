"""Step load: users rise through ``--step-users``, each held ``--step-duration`` seconds.

The shape snapshots Locust's aggregated statistics every tick (1 s). The difference of two
snapshots is the exact histogram of the requests completed between them, so each step (from
the moment all its users run to its end) and each second of the timeline get exact
throughput and p50/p95/p99, with no guessing from Locust's 10 s sliding-window columns.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from locust import LoadTestShape, events

from loadtest import (
    _arguments,  # noqa: F401  (registers the custom options)
    _latency,
)
from loadtest._options import parse_users
from loadtest._report import format_ms

log = logging.getLogger(__name__)
_LATENCY_REPORT = "infergate_latency_ms"


@events.request.add_listener
def _record_latency(response_time: float | None = None, **_: Any) -> None:
    _latency.record(response_time)


@events.report_to_master.add_listener
def _send_latency(client_id: str, data: dict[str, Any]) -> None:
    data[_LATENCY_REPORT] = _latency.take_report()


@events.worker_report.add_listener
def _receive_latency(client_id: str, data: dict[str, Any]) -> None:
    _latency.add_report(data.get(_LATENCY_REPORT, []))


@dataclass(frozen=True)
class Snapshot:
    time: float
    requests: int
    failures: int
    total_ms: float
    response_times: dict[float, int] = field(repr=False)

    @classmethod
    def of(cls, entry: Any) -> Snapshot:
        """Locust's totals, with this process's finer histogram (``_latency``) beside them."""
        return cls(
            time.time(),
            entry.num_requests,
            entry.num_failures,
            entry.total_response_time,
            dict(_latency.counts),
        )


def window(start: Snapshot, end: Snapshot) -> dict[str, Any]:
    """Requests completed between two snapshots: count, rate and latency percentiles (ms)."""
    requests = end.requests - start.requests
    histogram = {
        ms: count - start.response_times.get(ms, 0)
        for ms, count in end.response_times.items()
        if count > start.response_times.get(ms, 0)
    }
    seconds = max(end.time - start.time, 1e-9)

    return {
        "seconds": round(seconds, 3),
        "requests": requests,
        "failures": end.failures - start.failures,
        "throughput": round(requests / seconds, 3),
        "p50_ms": _latency.percentile(histogram, 0.50),
        "p95_ms": _latency.percentile(histogram, 0.95),
        "p99_ms": _latency.percentile(histogram, 0.99),
        "avg_ms": round((end.total_ms - start.total_ms) / requests, 3) if requests else None,
    }


class StepLoadShape(LoadTestShape):
    """Rises through ``--step-users`` and returns None after the last step, ending the run."""

    def __init__(self) -> None:
        super().__init__()
        self.steps: list[dict[str, Any]] = []
        self.timeline: list[dict[str, Any]] = []
        self._index = -1
        self._step_start: Snapshot | None = None
        self._measure_start: Snapshot | None = None
        self._last: Snapshot | None = None
        self._began = time.time()
        self._finished = False

    def reset_time(self) -> None:
        super().reset_time()
        self._began = time.time()

    def tick(self) -> tuple[int, float] | None:
        runner: Any = self.runner
        options: Any = runner.environment.parsed_options
        steps = parse_users(options.step_users)
        hold = max(float(options.step_duration), 1.0)
        now = Snapshot.of(runner.stats.total)
        index = int(self.get_run_time() // hold)
        target = steps[min(index, len(steps) - 1)]
        if self._last is not None:
            point = {"t": round(now.time - self._began, 3), "users": runner.user_count}
            self.timeline.append({**point, "target": target, **window(self._last, now)})
        self._last = now
        if index != self._index:
            self._close_step(steps, now)
            self._index, self._step_start, self._measure_start = index, now, None
        if index >= len(steps):
            self._finish(options)
            return None
        users = steps[index]
        if self._measure_start is None and runner.user_count >= users:
            self._measure_start = now
        return users, float(options.step_spawn_rate) or float(users)

    def _close_step(self, steps: list[int], now: Snapshot) -> None:
        if not 0 <= self._index < len(steps) or self._step_start is None:
            return
        start = self._measure_start or self._step_start
        result = {
            "users": steps[self._index],
            "ramp_complete": self._measure_start is not None,
            "started": round(start.time - self._began, 3),
            **window(start, now),
        }
        self.steps.append(result)
        log.info("step: %s", result)

    def _finish(self, options: Any) -> None:
        if self._finished:
            return
        self._finished = True
        if options.step_report:
            path = Path(options.step_report)
            path.parent.mkdir(parents=True, exist_ok=True)
            report = {"steps": self.steps, "timeline": self.timeline}
            path.write_text(json.dumps(report, indent=1))
        for step in self.steps:
            log.info(
                "users %4d  %8.1f req/s  p50 %s  p95 %s  p99 %s ms  failures %d",
                step["users"],
                step["throughput"],
                format_ms(step["p50_ms"]),
                format_ms(step["p95_ms"]),
                format_ms(step["p99_ms"]),
                step["failures"],
            )
