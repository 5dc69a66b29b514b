"""A broken Redis is only ever a miss: killed, restarted, hung, garbage replies, corrupt entries."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import redis.asyncio as aioredis
from prometheus_client import REGISTRY

from service.cache import ResponseCache
from service.settings import Settings
from service.types import InferRequest
from tests.redis_server import RedisServer, free_port


class Model:
    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, x: np.ndarray) -> dict[str, np.ndarray]:
        self.calls += 1
        return {"y": x + 1}


def _cache(url: str, timeout_ms: float = 300, reset_s: float = 0.2) -> ResponseCache:
    settings = Settings(
        redis_url=url, cache_redis_timeout_ms=timeout_ms, cache_breaker_reset_s=reset_s
    )
    return ResponseCache(settings)


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
    cache = _cache(redis_server.url)
    await cache.start()
    model = Model()
    assert not (await _ask(cache, model, 1.0))[1]
    await cache.flush()
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
    deadline = time.monotonic() + 20
    hit = False
    while not hit and time.monotonic() < deadline:
        await asyncio.sleep(0.25)
        await _ask(cache, model, 99.0)
        await cache.flush()
        hit = (await _ask(cache, model, 99.0))[1]
    assert hit, "cache never reconnected to the restarted Redis"
    assert breaker.state == "closed"
    direct = aioredis.from_url(redis_server.url)
    assert len(await direct.keys("infergate:v1:m:*")) >= 1
    await direct.aclose()
    await cache.close()


async def test_unreachable_at_start_never_raises() -> None:
    cache = _cache(f"redis://127.0.0.1:{free_port()}/0")
    await cache.start()
    assert cache.redis.breaker.state != "closed"  # type: ignore[union-attr]
    model = Model()
    for i in range(5):
        assert not (await _ask(cache, model, float(i)))[1]
    assert model.calls == 5
    await cache.close()


async def test_redis_started_after_gateway_is_picked_up() -> None:
    server = RedisServer()
    cache = _cache(server.url)
    try:
        await cache.start()
        server.start()
        model = Model()
        deadline = time.monotonic() + 20
        hit = False
        while not hit and time.monotonic() < deadline:
            await asyncio.sleep(0.25)
            await _ask(cache, model, 5.0)
            await cache.flush()
            hit = (await _ask(cache, model, 5.0))[1]
        assert hit
    finally:
        await cache.close()
        server.cleanup()


async def test_garbage_answering_server_is_a_miss(junk_server: int) -> None:
    cache = _cache(f"redis://127.0.0.1:{junk_server}/0", reset_s=0.02)
    before = _errors("protocol")
    await cache.start()
    model = Model()
    for i in range(8):
        await asyncio.sleep(0.2)  # past the (capped) back-off: every request probes again
        assert not (await _ask(cache, model, float(i)))[1]
    await cache.flush()
    assert model.calls == 8
    assert _errors("protocol") - before >= 9  # the start-up ping and every probe
    await cache.close()


async def test_hung_server_times_out_and_opens_breaker(silent_server: int) -> None:
    cache = _cache(f"redis://127.0.0.1:{silent_server}/0", timeout_ms=100, reset_s=30)
    await cache.start()
    model = Model()
    for i in range(10):
        assert not (await _ask(cache, model, float(i)))[1]
    await cache.flush()
    assert cache.redis.breaker.state == "open"  # type: ignore[union-attr]
    assert model.calls == 10
    await cache.close()


async def test_corrupt_and_truncated_entries_are_misses_and_get_repaired(
    redis_server: RedisServer,
) -> None:
    cache = _cache(redis_server.url)
    await cache.start()
    model = Model()
    await _ask(cache, model, 7.0)
    await cache.flush()
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
        await cache.flush()
        assert await direct.get(key) == good  # the recomputed entry replaced the bad one
    after = REGISTRY.get_sample_value(
        "infergate_cache_errors_total", {"store": "codec", "kind": "corrupt"}
    )
    assert after - before == 4
    assert (await _ask(cache, model, 7.0))[1]
    await direct.aclose()
    await cache.close()


async def test_wrong_type_under_key_is_a_miss(redis_server: RedisServer) -> None:
    cache = _cache(redis_server.url)
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
