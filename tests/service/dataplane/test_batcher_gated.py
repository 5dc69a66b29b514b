"""The real DynamicBatcher over a gated backend: queue behaviour decided by order, not by speed.

Each test holds the backend's gate, enqueues, checks the queue, then releases.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
from prometheus_client import REGISTRY
from tritonclient.grpc import model_config_pb2

from service.cache import ResponseCache
from service.errors import BadRequest, Timeout, Unavailable
from service.settings import Settings
from tests.helpers import wait_until_async
from tests.service.gated_backend import GatedBackend, gated_batcher, submit


def _rejected(reason: str) -> float:
    labels = {"model": "gated", "reason": reason}
    return REGISTRY.get_sample_value("infergate_rejected_requests_total", labels) or 0.0


async def _busy(backend: GatedBackend) -> None:
    """Until the first batch holds the only slot."""
    await backend.until_received(1)
    assert backend.held == 1


async def test_batches_take_up_to_max_rows_and_each_request_gets_its_own_rows() -> None:
    backend = GatedBackend()
    batcher = gated_batcher(backend)  # max_batch_size 8
    first = submit(batcher, rows=1, value=-1)
    await _busy(backend)
    queued = [submit(batcher, rows=3, value=float(i)) for i in range(5)]
    assert (batcher.queued, batcher.queued_rows) == (5, 15)
    await backend.drain(batcher)
    assert backend.batch_rows == [1, 6, 6, 3]  # 3+3 fit in 8, a third 3 would not
    assert first.result()["y"].tolist() == [[-2.0] * 4]
    for i, future in enumerate(queued):
        np.testing.assert_array_equal(future.result()["y"], np.full((3, 4), 2.0 * i))
    assert batcher.model.stats.execution_count == 4
    assert batcher.model.stats.inference_count == 16


async def test_only_requests_with_one_signature_share_a_batch() -> None:
    backend = GatedBackend()
    batcher = gated_batcher(backend)
    submit(batcher, width=4)
    await _busy(backend)
    futures = [submit(batcher, width=width) for width in (4, 5, 4, 5, 5)]
    await backend.drain(batcher)
    widths = [batch["x"].shape for batch in backend.received]
    assert widths == [(1, 4), (2, 4), (3, 5)]
    for future, width in zip(futures, (4, 5, 4, 5, 5)):
        assert future.result()["y"].shape == (1, width)


async def test_a_busy_backend_waits_for_the_preferred_batch_size() -> None:
    def preferred_four(config: model_config_pb2.ModelConfig) -> None:
        config.dynamic_batching.preferred_batch_size[:] = [4]
        config.dynamic_batching.max_queue_delay_microseconds = 3_600_000_000  # an hour

    backend = GatedBackend(concurrency=2)
    batcher = gated_batcher(backend, preferred_four)
    submit(batcher)  # an idle backend gets work at once, whatever the delay
    await _busy(backend)
    for _ in range(3):
        submit(batcher)
    # the batcher consumed the wake-up of those submits: it looked, and kept the free slot
    await wait_until_async(lambda: not batcher._wakeup.is_set(), what="the batcher to look")
    assert len(backend.received) == 1 and batcher.queued == 3
    submit(batcher)  # the fourth row: the preferred size is there
    await backend.until_received(2)
    assert backend.batch_rows == [1, 4]
    await backend.drain(batcher)


async def test_higher_priority_runs_first_and_unknown_levels_are_refused() -> None:
    def two_levels(config: model_config_pb2.ModelConfig) -> None:
        config.max_batch_size = 1
        config.dynamic_batching.priority_levels = 2
        config.dynamic_batching.default_priority_level = 2

    backend = GatedBackend()
    batcher = gated_batcher(backend, two_levels)
    submit(batcher, value=0)  # "first": runs at once
    await _busy(backend)
    for value in (1, 2, 3):
        submit(batcher, value=value)  # default level 2
    submit(batcher, value=9, priority=1)
    await backend.drain(batcher)
    order = [float(batch["x"][0, 0]) for batch in backend.received]
    assert order == [0, 9, 1, 2, 3]
    with pytest.raises(BadRequest, match="priority 3 is outside 1..2"):
        submit(batcher, priority=3)


async def test_queue_timeout_from_the_config_policy() -> None:
    def one_ms_policy(config: model_config_pb2.ModelConfig) -> None:
        # level 1 has no timeout, so the request that keeps the backend busy cannot expire
        # however slow the machine; level 2's policy gives 1 ms and allows no override
        config.dynamic_batching.priority_levels = 2
        config.dynamic_batching.default_priority_level = 1
        policy = config.dynamic_batching.priority_queue_policy[2]
        policy.default_timeout_microseconds = 1000
        policy.allow_timeout_override = False

    backend = GatedBackend()
    batcher = gated_batcher(backend, one_ms_policy)
    first = submit(batcher)
    await _busy(backend)
    late = submit(batcher, priority=2, timeout_us=10**9)  # no override: 1 ms still applies
    deadline = batcher.queues[1][0].deadline_ns
    assert deadline
    before = _rejected("timeout")
    await wait_until_async(
        lambda: time.perf_counter_ns() > deadline, what="the queued request's deadline to pass"
    )
    await backend.drain(batcher)
    assert first.result()["y"].shape == (1, 4)
    with pytest.raises(Timeout, match="timed out in the queue"):
        late.result()
    assert _rejected("timeout") - before == 1
    assert len(backend.received) == 1


async def test_a_client_that_hung_up_is_dropped_before_it_runs() -> None:
    backend = GatedBackend()
    batcher = gated_batcher(backend)
    submit(batcher)
    await _busy(backend)
    gone = [False]
    hung_up = submit(batcher, value=7, client_gone=lambda: gone[0])
    stays = submit(batcher, value=3)
    gone[0] = True
    before = _rejected("cancelled")
    await backend.drain(batcher)
    with pytest.raises(BadRequest, match="client disconnected before its request ran"):
        hung_up.result()
    assert stays.result()["y"].tolist() == [[6.0] * 4]
    assert [float(b["x"][0, 0]) for b in backend.received] == [1, 3]
    assert _rejected("cancelled") - before == 1


async def test_cancelled_requests_are_dropped_from_the_queue() -> None:
    backend = GatedBackend()
    batcher = gated_batcher(backend)

    async def answer() -> dict[str, np.ndarray]:
        return await submit(batcher)

    running = asyncio.create_task(answer())
    await _busy(backend)
    tasks = [asyncio.create_task(answer()) for _ in range(9)]
    await wait_until_async(lambda: batcher.queued == 9, what="nine requests to queue")
    for task in tasks[4:]:
        task.cancel()
    await backend.drain(batcher)
    done = await asyncio.gather(running, *tasks, return_exceptions=True)
    assert all(isinstance(d, asyncio.CancelledError) for d in done[5:])
    assert all(isinstance(d, dict) for d in done[:5])
    assert batcher.model.stats.inference_count == 5


async def test_close_finishes_queued_requests_and_refuses_new_ones() -> None:
    backend = GatedBackend()
    batcher = gated_batcher(backend)
    futures = [submit(batcher)]
    await _busy(backend)
    futures += [submit(batcher) for _ in range(29)]
    closing = asyncio.ensure_future(batcher.close())
    await wait_until_async(lambda: batcher.closed, what="close() to start")
    with pytest.raises(Unavailable, match="unloading"):
        submit(batcher)
    assert not closing.done() and batcher.queued == 29  # close waits for the queue
    backend.release()
    await backend.drain(batcher)
    await closing
    assert len([f.result() for f in futures]) == 30
    assert sum(backend.batch_rows) == 30


async def test_identical_requests_in_flight_run_once() -> None:
    """The response cache in front of the batcher: 50 identical requests, one execution."""
    backend = GatedBackend()
    batcher = gated_batcher(backend)
    cache = ResponseCache(Settings())
    await cache.start()

    async def ask() -> tuple[dict[str, np.ndarray], bool]:
        return await cache.get_or_compute("same-key", "gated", "1", lambda: submit(batcher))

    tasks = [asyncio.ensure_future(ask()) for _ in range(50)]
    await backend.until_received(1)
    assert batcher.queued == 0 and backend.held == 1
    backend.release()
    results = await asyncio.gather(*tasks)
    assert backend.batch_rows == [1]
    assert sum(not hit for _, hit in results) == 1
    assert all(outputs["y"].tolist() == [[2.0] * 4] for outputs, _ in results)
    await cache.close()
