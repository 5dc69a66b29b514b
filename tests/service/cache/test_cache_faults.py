"""A broken Redis is only ever a miss: killed, restarted, hung, garbage replies, corrupt entries."""

from __future__ import annotations

import socket

import numpy as np
import redis.asyncio as aioredis
from prometheus_client import REGISTRY

from service.cache import ResponseCache
from service.messages import InferRequest
from service.redis_client import CircuitBreaker
from service.settings import Settings
from tests.helpers import ManualClock, wait_until_async
from tests.redis_server import SLOW_REDIS_S, RedisServer


class Model:
    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, x: np.ndarray) -> dict[str, np.ndarray]:
        self.calls += 1
        return {"y": x + 1}


def _cache(
    url: str, clock: ManualClock, timeout_ms: float = SLOW_REDIS_S * 1000, reset_s: float = 0.2
) -> ResponseCache:
    """A Redis-backed cache whose breaker reads ``clock``: back-offs pass when the test says."""
    settings = Settings(
        redis_url=url, cache_redis_timeout_ms=timeout_ms, cache_breaker_reset_s=reset_s
    )
    cache = ResponseCache(settings)
    store = cache.redis
    assert store is not None
    store.breaker = CircuitBreaker(store.breaker.threshold, reset_s, clock=clock)
    return cache


async def _picked_up(cache: ResponseCache, model: Model, clock: ManualClock, value: float) -> bool:
    """Past any back-off, ask twice: True once the second answer is a Redis hit."""
    clock.advance(3600)
    await _ask(cache, model, value)
    await cache.flush(SLOW_REDIS_S)
    return (await _ask(cache, model, value))[1]


async def _ask(cache: ResponseCache, model: Model, value: float) -> tuple[np.ndarray, bool]:
    x = np.full(4, value, dtype=np.float32)
    key = cache.key("m", "1", InferRequest("m", "1", {"x": x}, {"x": "FP32"}), ["y"])
    outputs, hit = await cache.get_or_compute(key, "m", "1", lambda: model(x))
    np.testing.assert_array_equal(outputs["y"], x + 1)  # always the right answer
    return outputs["y"], hit


def _errors(kind: str) -> float:
    return (
        REGISTRY.get_sample_value("infergate_cache_errors_total", {"store": "redis", "kind": kind})
        or 0.0
    )


async def test_redis_killed_then_restarted_on_same_port(redis_server: RedisServer) -> None:
    clock = ManualClock()
    cache = _cache(redis_server.url, clock)
    await cache.start()
    model = Model()
    assert not (await _ask(cache, model, 1.0))[1]
    await cache.flush(SLOW_REDIS_S)
    assert (await _ask(cache, model, 1.0))[1]

    redis_server.kill()
    before = _errors("connection") + _errors("timeout")
    calls_before = model.calls
    results = [await _ask(cache, model, float(i)) for i in range(20)]
    assert not any(hit for _, hit in results)
    assert model.calls == calls_before + 20
    breaker = cache.redis.breaker  # type: ignore[union-attr]
    assert breaker.state in {"open", "half-open"} and breaker.opened_count >= 1
    assert _errors("connection") + _errors("timeout") > before
    # While open, requests skip Redis entirely: far fewer errors than requests.
    assert _errors("connection") + _errors("timeout") - before < 20

    redis_server.start()  # same port, empty (no persistence)
    await wait_until_async(
        lambda: _picked_up(cache, model, clock, 99.0),
        what="the cache to reconnect to the restarted Redis",
    )
    assert breaker.state == "closed"
    direct = aioredis.from_url(redis_server.url)
    assert len(await direct.keys("infergate:v1:m:*")) >= 1
    await direct.aclose()
    await cache.close()


async def test_unreachable_at_start_never_raises() -> None:
    with socket.socket() as bound_not_listening:  # connections to it are refused
        bound_not_listening.bind(("127.0.0.1", 0))
        port = bound_not_listening.getsockname()[1]
        cache = _cache(f"redis://127.0.0.1:{port}/0", ManualClock())
        await cache.start()
        assert cache.redis.breaker.state != "closed"  # type: ignore[union-attr]
        model = Model()
        for i in range(5):
            assert not (await _ask(cache, model, float(i)))[1]
        assert model.calls == 5
        await cache.close()


async def test_redis_started_after_gateway_is_picked_up() -> None:
    server = RedisServer()
    clock = ManualClock()
    cache = _cache(server.url, clock)
    try:
        await cache.start()
        server.start()
        model = Model()
        await wait_until_async(
            lambda: _picked_up(cache, model, clock, 5.0),
            what="the cache to pick up the Redis started after it",
        )
    finally:
        await cache.close()
        server.cleanup()


async def test_garbage_answering_server_is_a_miss(junk_server: int) -> None:
    clock = ManualClock()
    cache = _cache(f"redis://127.0.0.1:{junk_server}/0", clock, reset_s=0.02)
    before = _errors("protocol")
    await cache.start()
    model = Model()
    for i in range(8):
        clock.advance(3600)  # past the (capped) back-off: every request probes again
        assert not (await _ask(cache, model, float(i)))[1]
    await cache.flush(SLOW_REDIS_S)
    assert model.calls == 8
    assert _errors("protocol") - before >= 9  # the start-up ping and every probe
    await cache.close()


async def test_hung_server_times_out_and_opens_breaker(silent_server: int) -> None:
    cache = _cache(f"redis://127.0.0.1:{silent_server}/0", ManualClock(), timeout_ms=100)
    await cache.start()
    model = Model()
    for i in range(10):
        assert not (await _ask(cache, model, float(i)))[1]
    await cache.flush(SLOW_REDIS_S)
    assert cache.redis.breaker.state == "open"  # type: ignore[union-attr]
    assert model.calls == 10
    await cache.close()


async def test_corrupt_and_truncated_entries_are_misses_and_get_repaired(
    redis_server: RedisServer,
) -> None:
    cache = _cache(redis_server.url, ManualClock())
    await cache.start()
    model = Model()
    await _ask(cache, model, 7.0)
    await cache.flush(SLOW_REDIS_S)
    direct = aioredis.from_url(redis_server.url)
    (key,) = await direct.keys("infergate:v1:m:*")
    good = await direct.get(key)
    before = (
        REGISTRY.get_sample_value(
            "infergate_cache_errors_total", {"store": "codec", "kind": "corrupt"}
        )
        or 0.0
    )
    for damaged in (b"garbage", good[: len(good) // 2], good[:-1] + b"\x00", b""):
        await direct.set(key, damaged)
        calls = model.calls
        assert not (await _ask(cache, model, 7.0))[1]
        assert model.calls == calls + 1
        await cache.flush(SLOW_REDIS_S)
        assert await direct.get(key) == good  # the recomputed entry replaced the bad one
    after = REGISTRY.get_sample_value(
        "infergate_cache_errors_total", {"store": "codec", "kind": "corrupt"}
    )
    assert after - before == 4
    assert (await _ask(cache, model, 7.0))[1]
    await direct.aclose()
    await cache.close()


async def test_wrong_type_under_key_is_a_miss(redis_server: RedisServer) -> None:
    cache = _cache(redis_server.url, ManualClock())
    await cache.start()
    model = Model()
    x = np.full(4, 3.0, dtype=np.float32)
    key = cache.key("m", "1", InferRequest("m", "1", {"x": x}, {"x": "FP32"}), ["y"])
    direct = aioredis.from_url(redis_server.url)
    await direct.rpush(key, b"a list, not a string")  # GET answers WRONGTYPE
    outputs, hit = await cache.get_or_compute(key, "m", "1", lambda: model(x))
    assert not hit and model.calls == 1
    np.testing.assert_array_equal(outputs["y"], x + 1)
    await direct.aclose()
    await cache.close()
