"""ResponseCache: hits, misses, coalescing, policy and stats with the local and Redis stores."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import numpy as np
import pytest
import redis.asyncio as aioredis
from prometheus_client import REGISTRY
from tritonclient.grpc import model_config_pb2

from service.cache import ResponseCache
from service.cache.redis_store import RedisStore
from service.cache.stores import LocalStore, TieredStore
from service.messages import InferRequest
from service.settings import Settings
from tests.helpers import wait_until_async
from tests.redis_server import SLOW_REDIS_S, RedisServer

T = TypeVar("T")


class Model:
    """A stand-in computation that counts executions, can fail, and with ``gated=True`` answers
    only once the test calls ``release()``: "still running" is a state, not a duration."""

    def __init__(self, gated: bool = False, fail: bool = False) -> None:
        self.calls = 0
        self.fail = fail
        self._gate = asyncio.Event()
        if not gated:
            self._gate.set()

    async def __call__(self, x: np.ndarray) -> dict[str, np.ndarray]:
        self.calls += 1
        await self._gate.wait()
        if self.fail:
            raise RuntimeError("model exploded")
        return {"y": (x * 2).astype(np.float32), "label": np.array([b"even"], dtype=np.object_)}

    def release(self) -> None:
        self._gate.set()

    async def until_called(self) -> None:
        await wait_until_async(lambda: self.calls, what="the model to be called")


def _settings(**kw: object) -> Settings:
    timeout_ms = SLOW_REDIS_S * 1000
    return Settings(cache_redis_timeout_ms=timeout_ms, cache_breaker_reset_s=0.2, **kw)  # type: ignore[arg-type]


def _start(count: int, run: Callable[[], Awaitable[T]]) -> list[asyncio.Task[T]]:
    """``count`` callers in one go: each joins the flight (or starts it) in its first step."""
    return [asyncio.ensure_future(run()) for _ in range(count)]


def _key(cache: ResponseCache, x: np.ndarray, version: str = "1") -> str:
    request = InferRequest("m", version, {"x": x}, {"x": "FP32"})
    return cache.key("m", version, request, ["y", "label"])


X = np.arange(8, dtype=np.float32)


async def _run(cache: ResponseCache, model: Model, x: np.ndarray = X, version: str = "1"):
    return await cache.get_or_compute(_key(cache, x, version), "m", version, lambda: model(x))


async def test_local_store_is_the_default_and_hits() -> None:
    cache = ResponseCache(_settings())
    assert isinstance(cache.store, LocalStore)
    await cache.start()
    model = Model()
    first, hit1 = await _run(cache, model)
    second, hit2 = await _run(cache, model)
    assert (hit1, hit2, model.calls) == (False, True, 1)
    np.testing.assert_array_equal(second["y"], X * 2)
    assert second["label"].tolist() == [b"even"]
    stats = cache.stats("m", "1")
    assert stats["hit_count"] == 1 and stats["miss_count"] == 1
    assert stats["hit_ns"] > 0 and stats["miss_ns"] > 0
    assert cache.stats("m", "2") == {"hit_count": 0, "hit_ns": 0, "miss_count": 0, "miss_ns": 0}
    await cache.close()


async def test_version_isolation_and_different_inputs_miss() -> None:
    cache = ResponseCache(_settings())
    model = Model()
    await _run(cache, model, version="1")
    _, hit = await _run(cache, model, version="2")
    assert not hit
    _, hit = await _run(cache, model, x=X + 1)
    assert not hit and model.calls == 3


async def test_redis_store_hits_across_replicas(redis_server: RedisServer) -> None:
    a = ResponseCache(_settings(redis_url=redis_server.url))
    b = ResponseCache(_settings(redis_url=redis_server.url))
    await a.start()
    await b.start()
    model = Model()
    _, hit_a = await _run(a, model)
    await a.flush(SLOW_REDIS_S)
    out_b, hit_b = await _run(b, model)
    assert (hit_a, hit_b, model.calls) == (False, True, 1)
    np.testing.assert_array_equal(out_b["y"], X * 2)
    direct = aioredis.from_url(redis_server.url)
    keys = await direct.keys("infergate:v1:m:*")
    assert len(keys) == 1
    ttl = await direct.ttl(keys[0])
    assert 0 < ttl <= 3600
    await direct.aclose()
    await a.close()
    await b.close()


async def test_fifty_concurrent_identical_requests_compute_once(redis_server: RedisServer) -> None:
    cache = ResponseCache(_settings(redis_url=redis_server.url))
    await cache.start()
    model = Model(gated=True)  # still "in the batch queue" while the others arrive
    before = REGISTRY.get_sample_value(
        "infergate_cache_coalesced_total", {"model": "m", "version": "1"}
    )
    tasks = _start(50, lambda: _run(cache, model))
    await model.until_called()  # after the Redis lookup: every caller joined before it
    model.release()
    results = await asyncio.gather(*tasks)
    assert model.calls == 1
    assert sum(not hit for _, hit in results) == 1  # the one that ran; the rest joined it
    for outputs, _ in results:
        np.testing.assert_array_equal(outputs["y"], X * 2)
    after = REGISTRY.get_sample_value(
        "infergate_cache_coalesced_total", {"model": "m", "version": "1"}
    )
    assert after - (before or 0) == 49
    assert cache.stats("m", "1")["hit_count"] == 49
    await cache.close()


async def test_errors_reach_every_waiter_and_are_not_cached() -> None:
    cache = ResponseCache(_settings())
    failing = Model(gated=True, fail=True)
    tasks = _start(5, lambda: _run(cache, failing))
    await failing.until_called()
    failing.release()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert failing.calls == 1
    assert all(isinstance(r, RuntimeError) for r in results)
    healthy = Model()
    _, hit = await _run(cache, healthy)
    assert not hit and healthy.calls == 1


async def test_cancelled_first_caller_does_not_strand_followers() -> None:
    cache = ResponseCache(_settings())
    model = Model(gated=True)
    leader = asyncio.create_task(_run(cache, model))
    await model.until_called()
    joined = [0]

    async def follow() -> tuple[dict[str, np.ndarray], bool]:
        joined[0] += 1  # the same step goes on to join the flight: no await in between
        return await _run(cache, model)

    followers = _start(3, follow)
    await wait_until_async(lambda: joined[0] == 3, what="three followers to join")
    leader.cancel()
    await asyncio.gather(leader, return_exceptions=True)
    model.release()
    results = await asyncio.gather(*followers)
    assert leader.cancelled()
    assert model.calls == 1
    for outputs, hit in results:
        assert hit
        np.testing.assert_array_equal(outputs["y"], X * 2)
    _, hit = await _run(cache, model)
    assert hit and model.calls == 1  # the shared result was still stored


async def test_work_is_cancelled_when_every_waiter_leaves() -> None:
    cache = ResponseCache(_settings())
    model = Model(gated=True)  # never released
    tasks = _start(3, lambda: _run(cache, model))
    await model.until_called()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await wait_until_async(lambda: len(cache._coalescer) == 0, what="the flight to be dropped")
    fresh = Model()
    _, hit = await _run(cache, fresh)
    assert not hit and fresh.calls == 1


async def test_entries_over_max_entry_bytes_are_not_stored() -> None:
    cache = ResponseCache(_settings(cache_max_entry_bytes=256))
    model = Model()
    big = np.zeros(1000, dtype=np.float32)
    await _run(cache, model, x=big)
    _, hit = await _run(cache, model, x=big)
    assert not hit and model.calls == 2
    _, hit = await _run(cache, model, x=np.zeros(2, dtype=np.float32))
    _, hit = await _run(cache, model, x=np.zeros(2, dtype=np.float32))
    assert hit


async def test_tiered_store_serves_from_l1(redis_server: RedisServer) -> None:
    cache = ResponseCache(_settings(redis_url=redis_server.url), local_tier=True)
    assert isinstance(cache.store, TieredStore)
    await cache.start()
    model = Model()
    await _run(cache, model)
    await cache.flush(SLOW_REDIS_S)
    redis_server.kill()
    _, hit = await _run(cache, model)
    assert hit and model.calls == 1
    await cache.close()


@pytest.mark.parametrize(
    ("forced", "in_config", "expected"),
    [(None, True, True), (None, False, False), (True, False, True), (False, True, False)],
)
def test_enabled_for_follows_config_unless_forced(
    forced: bool | None, in_config: bool, expected: bool
) -> None:
    config = model_config_pb2.ModelConfig(name="m")
    if in_config:
        config.response_cache.enable = True
    cache = ResponseCache(_settings(cache_enabled=forced))
    assert cache.enabled_for(config) is expected


def test_store_selection() -> None:
    assert isinstance(ResponseCache(_settings()).store, LocalStore)
    assert ResponseCache(_settings(cache_local_bytes=0)).store is None
    assert isinstance(ResponseCache(_settings(redis_url="redis://127.0.0.1:1")).store, RedisStore)


async def test_no_store_still_coalesces() -> None:
    cache = ResponseCache(_settings(cache_local_bytes=0))
    model = Model(gated=True)
    tasks = _start(10, lambda: _run(cache, model))
    await model.until_called()
    model.release()
    results = await asyncio.gather(*tasks)
    assert model.calls == 1 and sum(hit for _, hit in results) == 9
    _, hit = await _run(cache, model)
    assert not hit and model.calls == 2


async def test_gateway_metrics_are_registered() -> None:
    cache = ResponseCache(_settings())
    model = Model(gated=True)
    tasks = _start(2, lambda: _run(cache, model))
    await model.until_called()
    model.release()
    await asyncio.gather(*tasks)
    assert REGISTRY.get_sample_value("infergate_cache_bytes") > 0
    coalesced = {"model": "m", "version": "1"}
    assert REGISTRY.get_sample_value("infergate_cache_coalesced_total", coalesced) >= 1
