"""Per-key token buckets: in-process with a manual clock, and shared through a real Redis."""

from __future__ import annotations

import pytest

from service.errors import RateLimited, Unavailable
from service.security.policy import Principal
from service.security.ratelimit import LIMITER_FALLBACKS, RATE_LIMITED, RateLimiter, TokenBucket
from service.settings import Settings
from tests.helpers import ManualClock
from tests.redis_server import RedisServer, redis_server, redis_server_factory

__all__ = ["redis_server", "redis_server_factory"]


def principal(key_id: str, requests_per_s: float = 0.0, rows_per_s: float = 0.0) -> Principal:
    return Principal(key_id, frozenset({"infer"}), frozenset(), requests_per_s, rows_per_s)


def limiter(clock: ManualClock | None = None, **settings: object) -> RateLimiter:
    values: dict[str, object] = {"grpc_port": 0, "rate_limit_redis_timeout_ms": 5000, **settings}
    config = Settings(**values)  # type: ignore[arg-type]
    return RateLimiter(config, clock or ManualClock())


def test_token_bucket_refills_at_its_rate_up_to_capacity() -> None:
    clock = ManualClock()
    bucket = TokenBucket(rate=2.0, capacity=4.0, clock=clock)
    assert bucket.shortfall_s(4) == 0
    bucket.tokens -= 4
    assert bucket.shortfall_s(1) == pytest.approx(0.5)
    clock.advance(1.0)
    assert bucket.shortfall_s(2) == 0
    clock.advance(100.0)
    bucket.shortfall_s(0)
    assert bucket.tokens == 4.0


async def test_local_request_limit_answers_429_with_retry_after() -> None:
    clock = ManualClock()
    limits = limiter(clock)
    caller = principal("alice", requests_per_s=2)
    before = RATE_LIMITED.labels(caller.label)._value.get()
    await limits.check(caller, 1)
    await limits.check(caller, 1)
    with pytest.raises(RateLimited) as refused:
        await limits.check(caller, 1)
    assert refused.value.http_status == 429 and refused.value.retry_after_s == 1
    assert RATE_LIMITED.labels(caller.label)._value.get() == before + 1
    clock.advance(0.5)
    await limits.check(caller, 1)
    # other keys and unlimited keys have budgets of their own
    await limits.check(principal("bob", requests_per_s=2), 1)
    for _ in range(100):
        await limits.check(principal("unlimited"), 1000)


async def test_local_row_limit_counts_rows_and_takes_nothing_when_refused() -> None:
    clock = ManualClock()
    limits = limiter(clock)
    caller = principal("rows", requests_per_s=100, rows_per_s=10)
    await limits.check(caller, 8)
    with pytest.raises(RateLimited) as refused:
        await limits.check(caller, 8)
    assert refused.value.retry_after_s == 1
    await limits.check(caller, 2)  # the refused request took no rows and no request token
    with pytest.raises(RateLimited):
        await limits.check(caller, 1)
    clock.advance(3.0)
    await limits.check(caller, 3)


async def test_replicas_share_one_budget_through_redis(redis_server: RedisServer) -> None:
    first, second = limiter(redis_url=redis_server.url), limiter(redis_url=redis_server.url)
    # one request per 1000 s with a bucket of one: the second replica sees the first's request
    caller = principal("shared", requests_per_s=0.001)
    try:
        await first.check(caller, 1)
        with pytest.raises(RateLimited) as refused:
            await second.check(caller, 1)
        assert refused.value.retry_after_s is not None and refused.value.retry_after_s > 900
        with pytest.raises(RateLimited):
            await first.check(caller, 1)
        await second.check(principal("other", requests_per_s=0.001), 1)
        assert first.breaker.state == "closed" and second.breaker.state == "closed"
    finally:
        await first.close()
        await second.close()


async def test_shared_row_budget_through_redis(redis_server: RedisServer) -> None:
    first, second = limiter(redis_url=redis_server.url), limiter(redis_url=redis_server.url)
    caller = principal("rows-shared", rows_per_s=0.01)  # a bucket of one row
    try:
        await first.check(caller, 1)
        with pytest.raises(RateLimited):
            await second.check(caller, 1)
    finally:
        await first.close()
        await second.close()


async def test_redis_down_fails_open_to_local_buckets(redis_server: RedisServer) -> None:
    clock = ManualClock()
    limits = limiter(clock, redis_url=redis_server.url)
    caller = principal("fallback", requests_per_s=1)
    try:
        await limits.check(caller, 1)
        redis_server.kill()
        before = LIMITER_FALLBACKS._value.get()
        await limits.check(caller, 1)  # Redis fails: the local bucket (full) admits
        with pytest.raises(RateLimited):
            await limits.check(caller, 1)  # and limits like the shared one would
        assert LIMITER_FALLBACKS._value.get() == before + 2
        redis_server.start()
        clock.advance(60.0)  # past the breaker's back-off: Redis is asked again
        await limits.check(caller, 1)
        assert limits.breaker.state == "closed"
    finally:
        await limits.close()


async def test_redis_down_fails_closed_when_configured(redis_server: RedisServer) -> None:
    limits = limiter(redis_url=redis_server.url, rate_limit_fail_open=False)
    try:
        redis_server.kill()
        with pytest.raises(Unavailable, match="rate limiter unavailable") as refused:
            await limits.check(principal("closed", requests_per_s=100), 1)
        assert refused.value.http_status == 503 and refused.value.retry_after_s == 1
        await limits.check(principal("unlimited"), 1)  # keys without limits need no Redis
    finally:
        await limits.close()
