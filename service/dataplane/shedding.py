"""Shedding by predicted stay: refuse at once what would only be answered after its budget.

A request's budget covers its whole stay: from its arrival at the front end (decoding included)
through the queue to the end of its own execution. Its predicted stay is the time already spent
plus the work ahead of it and its own (queued and running) divided by the model's measured
throughput. Work is counted in units: rows, or for a model that pads token sequences, rows x
tokens, since a batch of long texts costs more than one of short ones.

Throughput comes from the model's warm-up batch at load (so a freshly started gateway predicts
from its first request) and then from every execution: the first measured one replaces the
warm-up figure, later ones are averaged in. The estimate is exported per model as
``infergate_predicted_wait_seconds`` (an autoscaling signal). Durations come from an injectable
clock, so tests decide them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import Gauge
from tritonclient.grpc import model_config_pb2

from service.errors import Overloaded
from service.settings import Settings

#: a queue's state as another process last heard it: (time.monotonic_ns() when read, rows and
#: units queued or running, units per second of all its slots, or None while unmeasured)
Figures = tuple[int, int, int, float | None]
#: figures older than this are not acted on (the queue may have drained since)
FIGURES_FRESH_NS = 50_000_000

PREDICTED_WAIT = Gauge(
    "infergate_predicted_wait_seconds",
    "Predicted queue wait of a request arriving now (work ahead / measured throughput)",
    ("model",),
)


class WaitEstimator:
    """Throughput of one model version (units per second of one execution slot)."""

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
        #: units per second of one slot; None until the warm-up or an execution was measured
        self.units_per_s: float | None = None
        #: a real execution was measured (the warm-up figure only stands in until then)
        self.measured = False
        self.gauge = PREDICTED_WAIT.labels(model)

    def seed(self, units: int, seconds: float) -> None:
        """The warm-up batch's figure, used until a real execution is measured."""
        if units > 0 and seconds > 0 and not self.measured:
            self.units_per_s = units / seconds

    def started(self) -> float:
        """Mark an execution's start; hand the value back to :meth:`finished`."""
        return self.clock()

    def finished(self, started: float, units: int) -> None:
        """Fold one execution of ``units`` units into the throughput average."""
        elapsed = self.clock() - started
        if elapsed <= 0 or units <= 0:
            return
        rate = units / elapsed
        previous = self.units_per_s
        if previous is None or not self.measured:
            self.units_per_s, self.measured = rate, True
        else:
            self.units_per_s = previous + self.alpha * (rate - previous)

    def predict(self, units: int) -> float | None:
        """Seconds until ``units`` units are done; None while nothing was measured."""
        if self.units_per_s is None:
            return None
        return units / (self.units_per_s * self.slots)

    def publish(self, units_ahead: int) -> float | None:
        """Predict for a request arriving now and export it as the model's gauge."""
        wait = self.predict(units_ahead)
        self.gauge.set(wait or 0.0)
        return wait


def over_budget(model: str, stay_s: float, budget_s: float) -> Overloaded:
    """The refusal (503 + Retry-After) of a request whose predicted stay exceeds its budget."""
    return Overloaded(
        f"model '{model}' is overloaded: predicted stay {_seconds(stay_s)} s exceeds the "
        f"request's budget of {_seconds(budget_s)} s",
        retry_after_s=max(1, math.ceil(stay_s - budget_s)),
    )


def _seconds(value: float) -> str:
    return f"{value:.2f}" if value >= 1 else f"{value:.3g}"


@dataclass(slots=True)
class QueuePolicy:
    """Triton's ``ModelQueuePolicy`` of one priority level, with the settings' defaults."""

    max_size: int
    timeout_us: int
    allow_override: bool

    @classmethod
    def from_config(
        cls, policy: model_config_pb2.ModelQueuePolicy, settings: Settings
    ) -> QueuePolicy:
        return cls(
            max_size=policy.max_queue_size or settings.max_queue_size,
            timeout_us=policy.default_timeout_microseconds
            or int(settings.default_timeout_ms * 1000),
            allow_override=policy.allow_timeout_override or not policy.default_timeout_microseconds,
        )

    def timeout(self, asked_us: int) -> int:
        """The queue timeout of a request that asked for ``asked_us`` (0 = none asked)."""
        return asked_us if (asked_us and self.allow_override) else self.timeout_us


def priority_levels(
    config: model_config_pb2.ModelDynamicBatching, settings: Settings
) -> tuple[int, list[QueuePolicy]]:
    """A ``dynamic_batching`` config's default priority level and the policy of each level."""
    levels = max(config.priority_levels, 1)
    policies = [
        QueuePolicy.from_config(
            config.priority_queue_policy.get(level, config.default_queue_policy), settings
        )
        for level in range(1, levels + 1)
    ]
    return config.default_priority_level or levels, policies


def budget_us(policy: QueuePolicy, timeout_us: int, max_wait_us: int) -> int:
    """A request's budget: its own timeout, else its queue policy's, else the settings'
    ``max_queue_wait_ms`` (0 = never shed)."""
    return timeout_us or policy.timeout(timeout_us) or max_wait_us


class Shedder:
    """Admission by predicted stay for one model version's queue.

    A model without a warm-up figure (warm-up off or failed, or run by remote Triton servers)
    has no estimate until its first batch ends; until then its queue holds at most ``cold_rows``
    rows, queued and running, so a cold burst stays bounded there too."""

    def __init__(self, model: str, slots: int, cold_rows: int, settings: Settings) -> None:
        self.model = model
        self.wait = WaitEstimator(model, slots)
        self.cold_rows = cold_rows
        self.max_wait_us = int(settings.max_queue_wait_ms * 1000)

    def budget_us(self, policy: QueuePolicy, timeout_us: int) -> int:
        return budget_us(policy, timeout_us, self.max_wait_us)

    def refusal(
        self, ahead: tuple[int, int], own: tuple[int, int], budget_us: int, arrival_ns: int
    ) -> tuple[str, Overloaded] | None:
        """(reason, error) when a request of ``own`` (rows, units) behind ``ahead`` (the rows
        and units queued and running) must be refused, else None. An idle model refuses
        nothing. ``arrival_ns`` (``time.monotonic_ns`` at the front end; 0 = unknown) counts
        the time the request already spent against its budget."""
        self.wait.publish(ahead[1])
        if budget_us <= 0 or not ahead[0]:
            return None
        wait = self.wait.predict(ahead[1] + own[1])
        if wait is None:  # no warm-up figure and nothing measured yet: bound the rows instead
            if ahead[0] + own[0] <= self.cold_rows:
                return None
            return "cold_queue", Overloaded(
                f"model '{self.model}' has no throughput measured yet: {ahead[0]} rows are "
                f"queued or running, at most {self.cold_rows} until its first batch ends",
                retry_after_s=1,
            )
        spent_s = (time.monotonic_ns() - arrival_ns) / 1e9 if arrival_ns else 0.0
        budget_s = budget_us / 1e6
        stay = spent_s + wait
        if stay <= budget_s:
            return None
        return "predicted_wait", over_budget(self.model, stay, budget_s)

    def figures(self, ahead: tuple[int, int]) -> Figures:
        """This queue's state, for a process that refuses on its behalf (a worker's front end
        before it reads a body)."""
        rate = self.wait.units_per_s
        return time.monotonic_ns(), ahead[0], ahead[1], rate * self.wait.slots if rate else None


def refusal_from_figures(
    model: str, figures: Figures | None, own_units: int, budget_us: int, arrival_ns: int
) -> Overloaded | None:
    """The refusal a worker can decide alone, from the executor's fresh figures: the same rule
    as :meth:`Shedder.refusal` for a measured queue; nothing when the figures are old or the
    queue was idle or unmeasured (the executor decides those when the request reaches it)."""
    if figures is None or budget_us <= 0:
        return None
    read_ns, rows, units, rate = figures
    now = time.monotonic_ns()
    if not rows or rate is None or now - read_ns > FIGURES_FRESH_NS:
        return None
    spent_s = (now - arrival_ns) / 1e9 if arrival_ns else 0.0
    stay = spent_s + (units + own_units) / rate
    budget_s = budget_us / 1e6
    return over_budget(model, stay, budget_s) if stay > budget_s else None
