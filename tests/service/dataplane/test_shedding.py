"""Shedding by predicted stay, on the real batcher over the gated backend and a manual clock.

The clock decides how long each execution took (so the measured throughput), the gate decides
what is queued and running: nothing here depends on how fast the machine is.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from tritonclient.grpc import model_config_pb2

from service.backends.base import Calibration
from service.dataplane.batching import DynamicBatcher
from service.dataplane.shedding import PREDICTED_WAIT, WaitEstimator
from service.errors import Overloaded
from service.observability.metrics import REJECTED
from tests.helpers import ManualClock
from tests.service.gated_backend import GatedBackend, gated_batcher, submit


def rejected(reason: str) -> float:
    return REJECTED.labels("gated", reason)._value.get()


def test_estimator_seeds_from_warmup_then_measures_and_averages() -> None:
    clock = ManualClock()
    estimator = WaitEstimator("unit", slots=2, alpha=0.5, clock=clock)
    assert estimator.predict(100) is None, "nothing measured yet: no prediction"
    estimator.seed(units=2, seconds=1.0)  # the warm-up batch: 2 units/s per slot
    assert estimator.predict(8) == pytest.approx(2.0) and not estimator.measured
    mark = estimator.started()
    clock.advance(2.0)
    estimator.finished(mark, 8)  # 4 units/s: the first real execution replaces the seed
    assert estimator.measured and estimator.units_per_s == pytest.approx(4.0)
    assert estimator.predict(16) == pytest.approx(2.0)  # two slots: 8 units/s
    mark = estimator.started()
    clock.advance(1.0)
    estimator.finished(mark, 8)  # 8 units/s: the average moves half way, to 6
    assert estimator.units_per_s == pytest.approx(6.0)
    estimator.seed(units=1000, seconds=1.0)
    assert estimator.units_per_s == pytest.approx(6.0), "a seed never undoes a measurement"
    assert estimator.publish(36) == pytest.approx(3.0)
    assert PREDICTED_WAIT.labels("unit")._value.get() == pytest.approx(3.0)


async def measured(backend: GatedBackend, batcher: DynamicBatcher, clock: ManualClock) -> None:
    """One one-row execution that took 1 s on the manual clock: 1 row/s measured."""
    batcher.wait.clock = clock
    first = submit(batcher)
    await backend.until_received(len(backend.received) + 1)
    clock.advance(1.0)
    backend.release()
    await first
    assert batcher.wait.units_per_s == pytest.approx(1.0)


async def test_a_cold_model_without_warmup_bounds_its_first_burst() -> None:
    backend, clock = GatedBackend(), ManualClock()
    batcher = gated_batcher(backend, max_queue_wait_ms=5000)  # 2 x 8 rows x 1 instance
    batcher.wait.clock = clock
    running = submit(batcher, rows=8)
    await backend.until_received(1)
    queued = [submit(batcher, rows=4), submit(batcher, rows=4)]  # 16 rows in all: admitted
    before = rejected("cold_queue")
    with pytest.raises(Overloaded) as refused:
        submit(batcher)
    assert refused.value.http_status == 503 and refused.value.retry_after_s == 1
    assert "no throughput measured yet: 16 rows are queued or running" in str(refused.value)
    assert rejected("cold_queue") == before + 1
    clock.advance(1.0)  # the first batch took 1 s: 8 rows/s, predictions from here on
    backend.release()
    await running
    assert batcher.wait.measured
    more = [submit(batcher) for _ in range(20)]  # 8 + 20 rows ahead at 8 rows/s: 3.6 s < 5 s
    await backend.drain(batcher)
    for future in (*queued, *more):
        assert (await future)["y"].shape[1] == 4
    await batcher.close()


async def test_a_warmup_figure_bounds_the_first_burst_by_predicted_stay() -> None:
    backend = GatedBackend()
    backend.calibration = Calibration(units=8, seconds=1.0)  # 8 rows/s before anything ran
    batcher = gated_batcher(backend, max_queue_wait_ms=1000)
    running = submit(batcher)
    await backend.until_received(1)
    queued = [submit(batcher) for _ in range(7)]  # the 7th: 1 + 6 ahead + itself = 1 s
    before = rejected("predicted_wait")
    with pytest.raises(Overloaded) as refused:
        submit(batcher)
    assert "predicted stay 1.12 s exceeds the request's budget of 1.00 s" in str(refused.value)
    assert rejected("predicted_wait") == before + 1
    await backend.drain(batcher)
    for future in (running, *queued):
        assert (await future)["y"].shape == (1, 4)
    await batcher.close()


async def test_requests_over_the_default_budget_are_shed_at_once() -> None:
    backend, clock = GatedBackend(), ManualClock()
    batcher = gated_batcher(backend, max_queue_wait_ms=3500)
    await measured(backend, batcher, clock)
    running = submit(batcher)
    await backend.until_received(2)  # one row running
    queued = [submit(batcher), submit(batcher)]  # stays of 2 s and 3 s: admitted
    before = rejected("predicted_wait")
    with pytest.raises(Overloaded) as shed:
        submit(batcher)  # 3 rows ahead and its own at 1 row/s: 4 s > 3.5 s
    assert shed.value.http_status == 503 and shed.value.retry_after_s == 1
    assert "predicted stay 4.00 s exceeds the request's budget of 3.50 s" in str(shed.value)
    assert rejected("predicted_wait") == before + 1
    assert PREDICTED_WAIT.labels("gated")._value.get() == pytest.approx(3.0)
    # a client that grants itself more time is admitted; a bigger request is not
    patient = submit(batcher, timeout_us=600_000_000)
    with pytest.raises(Overloaded):
        submit(batcher, rows=1, timeout_us=1_000_000)
    await backend.drain(batcher)
    for future in (running, *queued, patient):
        assert (await future)["y"].shape == (1, 4)
    assert PREDICTED_WAIT.labels("gated")._value.get() == 0.0, "the gauge follows the queue"
    await batcher.close()


async def test_the_budget_counts_the_time_a_request_already_spent() -> None:
    backend, clock = GatedBackend(), ManualClock()
    batcher = gated_batcher(backend, max_queue_wait_ms=50_000)
    await measured(backend, batcher, clock)
    running = submit(batcher)
    await backend.until_received(2)
    now = time.monotonic_ns()
    fresh = submit(batcher, arrival_ns=now)  # 2 s of stay ahead: admitted
    with pytest.raises(Overloaded) as late:  # decoded for 100 s already: past the 50 s budget
        submit(batcher, arrival_ns=now - 100_000_000_000)
    assert "exceeds the request's budget of 50.00 s" in str(late.value)
    await backend.drain(batcher)
    for future in (running, fresh):
        assert (await future)["y"].shape == (1, 4)
    await batcher.close()


async def test_a_request_of_many_parts_is_admitted_or_refused_once() -> None:
    backend, clock = GatedBackend(), ManualClock()
    batcher = gated_batcher(backend, max_queue_wait_ms=3500)
    await measured(backend, batcher, clock)
    running = submit(batcher)
    await backend.until_received(2)
    before = rejected("predicted_wait")
    with pytest.raises(Overloaded):
        await batcher.admit(rows=4, units=4)  # 1 ahead + 4 of its own: 5 s > 3.5 s
    assert rejected("predicted_wait") == before + 1, "one refusal for the whole request"
    await batcher.admit(rows=2, units=2)  # 3 s: admitted; its parts then skip the check
    parts = [submit(batcher, admitted=True) for _ in range(2)]
    extra = [submit(batcher, admitted=True) for _ in range(3)]  # admitted: never refused here
    await backend.drain(batcher)
    for future in (running, *parts, *extra):
        assert (await future)["y"].shape == (1, 4)
    await batcher.close()


async def test_an_idle_model_runs_what_comes_whatever_its_budget() -> None:
    backend, clock = GatedBackend(), ManualClock()
    batcher = gated_batcher(backend, max_queue_wait_ms=1)
    await measured(backend, batcher, clock)  # 1 row/s: any request takes far over 1 ms
    alone = submit(batcher, rows=8)
    await backend.drain(batcher)
    assert (await alone)["y"].shape == (8, 4)
    await batcher.close()


async def test_the_queue_policy_timeout_is_the_budget() -> None:
    def policy(config: model_config_pb2.ModelConfig) -> None:
        config.dynamic_batching.default_queue_policy.default_timeout_microseconds = 600_000_000
        config.dynamic_batching.default_queue_policy.allow_timeout_override = True

    backend, clock = GatedBackend(), ManualClock()
    batcher = gated_batcher(backend, policy, max_queue_wait_ms=1)
    await measured(backend, batcher, clock)
    futures = [submit(batcher) for _ in range(30)]  # 600 s of budget: 30 rows fit
    with pytest.raises(Overloaded):
        submit(batcher, timeout_us=2_000_000)
    await backend.drain(batcher)
    await asyncio.gather(*futures)
    await batcher.close()


async def test_zero_max_queue_wait_never_sheds() -> None:
    backend, clock = GatedBackend(), ManualClock()
    batcher = gated_batcher(backend, max_queue_wait_ms=0)
    await measured(backend, batcher, clock)
    futures = [submit(batcher) for _ in range(50)]
    await backend.drain(batcher)
    await asyncio.gather(*futures)
    await batcher.close()


async def test_tritons_max_queue_size_holds_per_priority_level() -> None:
    def policy(config: model_config_pb2.ModelConfig) -> None:
        config.dynamic_batching.priority_levels = 2
        config.dynamic_batching.default_priority_level = 2
        config.dynamic_batching.default_queue_policy.max_queue_size = 2
        config.dynamic_batching.priority_queue_policy[1].max_queue_size = 1

    backend = GatedBackend()
    batcher = gated_batcher(backend, policy)
    running = submit(batcher)
    await backend.until_received(1)
    queued = [submit(batcher), submit(batcher), submit(batcher, priority=1)]
    before = rejected("queue_full")
    for priority, limit in ((2, 2), (1, 1)):
        with pytest.raises(Overloaded) as full:
            submit(batcher, priority=priority)
        assert full.value.retry_after_s == 1
        assert f"queue is full ({limit} requests waiting)" in str(full.value)
    assert rejected("queue_full") == before + 2
    await backend.drain(batcher)
    for future in (running, *queued):
        assert (await future)["y"].shape == (1, 4)
    await batcher.close()
