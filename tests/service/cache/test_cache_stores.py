"""Stores against a real redis-server: TTL, LRU by bytes, breaker, URL handling."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis
from prometheus_client import REGISTRY

from service.cache.redis_store import RedisStore
from service.cache.stores import LocalStore, TieredStore
from service.redis_client import CircuitBreaker, build_client, redact
from tests.helpers import wait_until_async
from tests.redis_server import SLOW_REDIS_S, RedisServer


def test_local_lru_evicts_least_recently_used_by_bytes() -> None:
    store = LocalStore(max_bytes=3 * (1 + 100))  # keys "a".."d" of 1 byte + 100-byte values
    for name in "abc":
        assert store.set_now(name, bytes(100), ttl_s=60)
    assert store.bytes == 303 and len(store) == 3
    assert store.get_now("a") is not None  # "a" is now most recent; "b" is the oldest
    store.set_now("d", bytes(100), ttl_s=60)
    assert [k for k in "abcd" if k in store] == ["a", "c", "d"]
    assert store.evictions == 1 and store.bytes == 303
    assert REGISTRY.get_sample_value("infergate_cache_bytes") == 303
    store.set_now("big", bytes(250), ttl_s=60)  # 253 bytes: evicts oldest-first until it fits
    assert [k for k in ("a", "c", "d", "big") if k in store] == ["big"]
    assert store.evictions == 4 and store.bytes == 253


def test_local_refuses_values_larger_than_capacity_and_replaces_in_place() -> None:
    store = LocalStore(max_bytes=50)
    assert not store.set_now("k", bytes(60), ttl_s=60)
    assert store.bytes == 0
    store.set_now("k", bytes(10), ttl_s=60)
    store.set_now("k", bytes(20), ttl_s=60)
    assert store.bytes == 21 and store.get_now("k") == bytes(20)


async def test_local_ttl_expires() -> None:
    now = [100.0]
    store = LocalStore(max_bytes=1000, clock=lambda: now[0])
    store.put("k", b"v", ttl_s=0.05)
    assert await store.get("k") == b"v"
    now[0] += 0.049
    assert await store.get("k") == b"v"
    now[0] += 0.001  # exactly the TTL: expired
    assert await store.get("k") is None
    assert store.bytes == 0


async def test_redis_set_get_and_ttl_expiry(redis_server: RedisServer) -> None:
    store = RedisStore(redis_server.url, timeout_s=SLOW_REDIS_S)
    await store.start()
    assert store.breaker.state == "closed"
    await store.set("t:k", b"\x00value", ttl_s=1.0)
    assert await store.get("t:k") == b"\x00value"
    direct = aioredis.from_url(redis_server.url)
    ttl_ms = await direct.pttl("t:k")
    assert 0 < ttl_ms <= 1000

    async def expired() -> bool:  # Redis's own clock: wait for it, never sleep a guess
        return await direct.exists("t:k") == 0

    await wait_until_async(expired, what="Redis to expire t:k")
    assert await store.get("t:k") is None
    await direct.aclose()
    await store.close()


async def test_redis_background_writes_land(redis_server: RedisServer) -> None:
    store = RedisStore(redis_server.url, timeout_s=SLOW_REDIS_S)
    await store.start()
    for i in range(20):
        assert store.set_background(f"bg:{i}", bytes([i]) * 10, ttl_s=30)
    await store.flush(SLOW_REDIS_S)
    assert store.pending_writes == 0
    direct = aioredis.from_url(redis_server.url)
    assert await direct.mget([f"bg:{i}" for i in range(20)]) == [bytes([i]) * 10 for i in range(20)]
    await direct.aclose()
    await store.close()


async def test_redis_password_url(redis_server_factory) -> None:
    server = redis_server_factory(password="s3cret")
    good = RedisStore(server.url, timeout_s=SLOW_REDIS_S)
    await good.start()
    await good.set("p", b"1", ttl_s=10)
    assert await good.get("p") == b"1"
    await good.close()
    wrong = RedisStore(f"redis://:nope@127.0.0.1:{server.port}/0", timeout_s=SLOW_REDIS_S)
    await wrong.start()  # auth failure is logged and the breaker opened, not raised
    assert wrong.breaker.state != "closed"
    assert await wrong.get("p") is None
    await wrong.close()


def test_tiered_l2_hit_fills_l1_synchronously_readable() -> None:
    l1 = LocalStore(1000)
    l2 = LocalStore(1000)
    tiered = TieredStore(l1, l2, l1_ttl_s=10)
    l2.set_now("k", b"v", 10)
    assert asyncio.run(tiered.get("k")) == b"v"
    assert l1.get_now("k") == b"v"
    tiered.forget_local("k")
    assert "k" not in l1


def test_breaker_opens_after_threshold_and_probes_once() -> None:
    now = [0.0]
    breaker = CircuitBreaker(threshold=3, reset_s=1.0, max_reset_s=4.0, clock=lambda: now[0])
    assert breaker.allow()
    assert not breaker.failure() and not breaker.failure()
    assert breaker.failure() and breaker.state == "open"
    assert not breaker.allow()
    now[0] = 1.0
    assert breaker.allow()  # the probe
    assert not breaker.allow()  # only one at a time
    assert breaker.failure()  # probe failed: reopen with doubled back-off
    assert breaker.backoff_s == 2.0
    now[0] = 2.5
    assert not breaker.allow()
    now[0] = 3.0
    assert breaker.allow()
    breaker.success()
    assert breaker.state == "closed" and breaker.backoff_s == 1.0 and breaker.allow()


def test_breaker_backoff_is_capped_and_cancelled_probe_is_released() -> None:
    now = [0.0]
    breaker = CircuitBreaker(threshold=1, reset_s=1.0, max_reset_s=3.0, clock=lambda: now[0])
    breaker.failure()
    for _ in range(5):
        now[0] += breaker.backoff_s
        assert breaker.allow()
        breaker.failure()
    assert breaker.backoff_s == 3.0
    now[0] += 3.0
    assert breaker.allow()
    breaker.release_probe()
    assert breaker.allow()


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("redis://127.0.0.1:1/0", "Redis"),
        ("rediss://:pw@127.0.0.1:1/0", "Redis"),
        ("redis://127.0.0.1:1/0?cluster=true", "RedisCluster"),
        ("redis+cluster://127.0.0.1:1", "RedisCluster"),
        ("redis+sentinel://127.0.0.1:1,127.0.0.2:2/mymaster", "Redis"),
    ],
)
def test_build_client_kinds(url: str, kind: str) -> None:
    client = build_client(url, timeout_s=0.1)
    assert type(client).__name__ == kind


def test_build_client_rejects_bad_urls() -> None:
    with pytest.raises(ValueError, match="scheme"):
        build_client("http://127.0.0.1:6379", timeout_s=0.1)
    with pytest.raises(ValueError, match="service name"):
        build_client("redis+sentinel://127.0.0.1:26379", timeout_s=0.1)


def test_redact_hides_password() -> None:
    assert redact("redis://user:hunter2@h:1/0") == "redis://user:***@h:1/0"
    assert "hunter2" not in redact("rediss://:hunter2@h:1")
    assert redact("redis://h:1") == "redis://h:1"


def test_errors_counter_is_registered() -> None:
    assert REGISTRY.get_sample_value("infergate_cache_bytes") is not None
