"""Shedding by predicted wait: refuse at once what would only be answered after its budget.

A request's wait is the work ahead of it (rows queued plus rows running) divided by the model's
measured throughput: an EWMA of rows / execution time per execution, times the executions that
run at once. Before anything was measured the estimate is unknown and every request is admitted.
The estimate is exported per model as ``infergate_predicted_wait_seconds`` (an autoscaling
signal). Durations come from an injectable clock, so tests decide them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from prometheus_client import Gauge

from service.errors import Overloaded

PREDICTED_WAIT = Gauge(
    "infergate_predicted_wait_seconds",
    "Predicted queue wait of a request arriving now (work ahead / measured throughput)",
    ("model",),
)


class WaitEstimator:
    """Throughput of one model version and the wait it predicts for queued work."""

    def __init__(
        self,
        model: str,
        slots: int,
        alpha: float = 0.2,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.slots = max(slots, 1)
        self.alpha = alpha
        self.clock = clock
        #: rows per second of one execution slot; None until the first execution is measured
        self.rows_per_s: float | None = None
        self.gauge = PREDICTED_WAIT.labels(model)

    def started(self) -> float:
        """Mark an execution's start; hand the value back to :meth:`finished`."""
        return self.clock()

    def finished(self, started: float, rows: int) -> None:
        """Fold one execution of ``rows`` rows into the throughput average."""
        elapsed = self.clock() - started
        if elapsed <= 0 or rows <= 0:
            return
        rate = rows / elapsed
        previous = self.rows_per_s
        self.rows_per_s = rate if previous is None else previous + self.alpha * (rate - previous)

    def predict(self, rows_ahead: int) -> float | None:
        """Seconds until ``rows_ahead`` rows are done; None while nothing was measured."""
        if self.rows_per_s is None:
            return None
        return rows_ahead / (self.rows_per_s * self.slots)

    def publish(self, rows_ahead: int) -> float | None:
        """Predict for a request arriving now and export it as the model's gauge."""
        wait = self.predict(rows_ahead)
        self.gauge.set(wait or 0.0)
        return wait

    def check(self, model: str, rows_ahead: int, budget_us: int) -> Overloaded | None:
        """The refusal (503 + Retry-After) when the predicted wait exceeds ``budget_us``."""
        wait = self.publish(rows_ahead)
        budget_s = budget_us / 1e6
        if wait is None or budget_s <= 0 or wait <= budget_s:
            return None
        return Overloaded(
            f"model '{model}' is overloaded: predicted queue wait {wait:.2f} s exceeds the "
            f"request's budget of {budget_s:.2f} s",
            retry_after_s=max(1, math.ceil(wait - budget_s)),
        )
