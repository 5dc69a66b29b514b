"""Shedding by predicted wait, on the real batcher over the gated backend and a manual clock.

The clock decides how long each execution took (so the measured throughput), the gate decides
what is queued and running: nothing here depends on how fast the machine is.
"""

from __future__ import annotations

import asyncio

import pytest
from tritonclient.grpc import model_config_pb2

from service.dataplane.batching import DynamicBatcher
from service.dataplane.shedding import PREDICTED_WAIT, WaitEstimator
from service.errors import Overloaded
from service.observability.metrics import REJECTED
from tests.helpers import ManualClock
from tests.service.gated_backend import GatedBackend, gated_batcher, submit


def test_estimator_averages_rows_per_second_and_scales_by_slots() -> None:
    clock = ManualClock()
    estimator = WaitEstimator("unit", slots=2, alpha=0.5, clock=clock)
    assert estimator.predict(100) is None, "nothing measured yet: no prediction"
    mark = estimator.started()
    clock.advance(2.0)
    estimator.finished(mark, 8)  # 4 rows/s
    assert estimator.predict(16) == pytest.approx(2.0)  # two slots: 8 rows/s
    mark = estimator.started()
    clock.advance(1.0)
    estimator.finished(mark, 8)  # 8 rows/s: the average moves half way, to 6
    assert estimator.rows_per_s == pytest.approx(6.0)
    assert estimator.check("unit", 24, budget_us=2_000_000) is None
    shed = estimator.check("unit", 36, budget_us=2_000_000)
    assert shed is not None and shed.http_status == 503 and shed.retry_after_s == 1
    assert "predicted queue wait 3.00 s" in shed.message
    assert PREDICTED_WAIT.labels("unit")._value.get() == pytest.approx(3.0)
    assert estimator.check("unit", 10**6, budget_us=0) is None, "no budget: never shed"


async def measured(backend: GatedBackend, batcher: DynamicBatcher, clock: ManualClock) -> None:
    """One one-row execution that took 1 s on the manual clock: 1 row/s measured."""
    batcher.wait.clock = clock
    first = submit(batcher)
    await backend.until_received(len(backend.received) + 1)
    clock.advance(1.0)
    backend.release()
    await first
    assert batcher.wait.rows_per_s == pytest.approx(1.0)


async def test_nothing_is_shed_before_throughput_is_measured() -> None:
    backend = GatedBackend()
    batcher = gated_batcher(backend, max_queue_wait_ms=1)
    futures = [submit(batcher) for _ in range(20)]
    await backend.drain(batcher)
    assert all(future.result()["y"].shape == (1, 4) for future in futures)
    await batcher.close()


async def test_requests_over_the_default_budget_are_shed_at_once() -> None:
    backend, clock = GatedBackend(), ManualClock()
    batcher = gated_batcher(backend, max_queue_wait_ms=2500)
    await measured(backend, batcher, clock)
    running = submit(batcher)
    await backend.until_received(2)  # one row running
    queued = [submit(batcher), submit(batcher)]  # 1 s and 2 s ahead of them: admitted
    before = REJECTED.labels("gated", "predicted_wait")._value.get()
    with pytest.raises(Overloaded) as shed:
        submit(batcher)  # 3 rows ahead at 1 row/s: 3 s > 2.5 s
    assert shed.value.http_status == 503 and shed.value.retry_after_s == 1
    assert "predicted queue wait 3.00 s exceeds the request's budget of 2.50 s" in str(shed.value)
    assert REJECTED.labels("gated", "predicted_wait")._value.get() == before + 1
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
