"""Per-key rate limits: token buckets of infer requests/s and rows/s.

With Redis (``INFERGATE_REDIS_URL``) the buckets live there and one Lua script checks and takes
from both buckets of a key atomically, on Redis's own clock, so every replica draws from the same
budget with one round trip per request. When Redis is unreachable (a circuit breaker stops asking
for a while) each process falls back to in-process buckets (``rate_limit_fail_open``, the
default) or refuses limited keys with 503 (fail closed). Without Redis the in-process buckets are
all there is. Keys without limits cost nothing here.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import Counter

from service.errors import RateLimited, Unavailable
from service.redis_client import CircuitBreaker, build_client, redact
from service.security.policy import Principal
from service.settings import Settings

log = logging.getLogger("infergate.limits")

RATE_LIMITED = Counter(
    "infergate_rate_limited_total", "Requests refused by a key's rate limit", ("key",)
)
LIMITER_FALLBACKS = Counter(
    "infergate_rate_limiter_fallback_total",
    "Rate-limit decisions taken without Redis (in-process buckets, or refused when closed)",
)

#: KEYS: request bucket, row bucket. ARGV: per bucket rate/s, capacity, cost; then ttl ms.
#: Returns {allowed 0/1, ms until the short bucket holds enough}. Nothing is taken unless both
#: buckets hold enough. A rate of 0 means that bucket is not limited.
TAKE_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local levels = {}
local wait = 0
for i = 1, 2 do
  local rate = tonumber(ARGV[i * 3 - 2])
  local cap = tonumber(ARGV[i * 3 - 1])
  local cost = tonumber(ARGV[i * 3])
  if rate > 0 then
    local v = redis.call('HMGET', KEYS[i], 'tokens', 'ts')
    local tokens = tonumber(v[1]) or cap
    local ts = tonumber(v[2]) or now
    tokens = math.min(cap, tokens + math.max(0, now - ts) * rate / 1000)
    levels[i] = tokens - cost
    if tokens < cost then
      wait = math.max(wait, math.ceil((cost - tokens) * 1000 / rate))
    end
  end
end
if wait > 0 then
  return {0, wait}
end
for i = 1, 2 do
  if levels[i] then
    redis.call('HSET', KEYS[i], 'tokens', tostring(levels[i]), 'ts', now)
    redis.call('PEXPIRE', KEYS[i], ARGV[7])
  end
end
return {1, 0}
"""


class TokenBucket:
    """An in-process bucket: ``rate`` tokens/s up to ``capacity``; ``clock`` is injectable."""

    def __init__(self, rate: float, capacity: float, clock: Callable[[], float]) -> None:
        self.rate = rate
        self.capacity = capacity
        self._clock = clock
        self.tokens = capacity
        self._updated = clock()

    def shortfall_s(self, cost: float) -> float:
        """Seconds until ``cost`` tokens are there (0 = now); refills first, takes nothing."""
        now = self._clock()
        self.tokens = min(self.capacity, self.tokens + (now - self._updated) * self.rate)
        self._updated = now
        return 0.0 if self.tokens >= cost else (cost - self.tokens) / self.rate


class RateLimiter:
    """``await check(principal, rows)`` passes, or raises RateLimited (429) / Unavailable."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.monotonic) -> None:
        self.burst_s = settings.rate_limit_burst_s
        self.fail_open = settings.rate_limit_fail_open
        self.timeout_s = settings.rate_limit_redis_timeout_ms / 1000
        self.namespace = settings.cache_namespace
        self._clock = clock
        self._local: dict[tuple[str, str], TokenBucket] = {}
        self.breaker = CircuitBreaker(
            threshold=3, reset_s=settings.cache_breaker_reset_s, clock=clock
        )
        #: front-end workers decide in-process buckets in the executor, so a key's budget is
        #: one budget however many workers its connections reach (None: here)
        self.remote_buckets: Callable[[Principal, int], Awaitable[float]] | None = None
        self.redis: Any = None
        self._script: Any = None
        if settings.redis_url:
            self.redis = build_client(settings.redis_url, self.timeout_s, max_connections=64)
            self._script = self.redis.register_script(TAKE_SCRIPT)
            log.info("rate limits shared through %s", redact(settings.redis_url))

    async def close(self) -> None:
        if self.redis is not None:
            await self.redis.aclose()

    def _capacity(self, rate: float) -> float:
        return max(rate * self.burst_s, 1.0) if rate > 0 else 0.0

    async def check(self, principal: Principal, rows: int) -> None:
        if principal.requests_per_s <= 0 and principal.rows_per_s <= 0:
            return
        wait_s = await self._shared(principal, rows)
        if wait_s is None:
            LIMITER_FALLBACKS.inc()
            if not self.fail_open:
                raise Unavailable("rate limiter unavailable (Redis unreachable)", retry_after_s=1)
            if self.remote_buckets is not None:
                wait_s = await self.remote_buckets(principal, rows)
            else:
                wait_s = self.take_local(principal, rows)
        if wait_s > 0:
            RATE_LIMITED.labels(principal.label).inc()
            raise RateLimited(
                f"rate limit of key '{principal.key_id}' exceeded; retry in {wait_s:.2f} s",
                retry_after_s=max(1, math.ceil(wait_s)),
            )

    def _costs(self, principal: Principal, rows: int) -> list[float]:
        """rate, capacity, cost of the request bucket, then of the row bucket."""
        values: list[float] = []
        for rate, cost in ((principal.requests_per_s, 1), (principal.rows_per_s, rows)):
            capacity = self._capacity(rate)
            values += [rate, capacity, min(float(cost), capacity)]
        return values

    async def _shared(self, principal: Principal, rows: int) -> float | None:
        """Seconds to wait per Redis (0 = taken), or None when Redis cannot answer."""
        if self._script is None or not self.breaker.allow():
            return None
        base = f"{self.namespace}:ratelimit:{{{principal.label}}}"
        ttl_ms = int(max(self.burst_s, 1.0) * 2000) + 1000
        try:
            async with asyncio.timeout(self.timeout_s):
                allowed, wait_ms = await self._script(
                    keys=[f"{base}:requests", f"{base}:rows"],
                    args=[*self._costs(principal, rows), ttl_ms],
                )
        except asyncio.CancelledError:
            self.breaker.release_probe()
            raise
        except Exception as exc:  # any Redis trouble: decide without it
            if self.breaker.failure():
                log.warning("rate limiter: Redis unreachable (%s); using local buckets", exc)
            return None
        self.breaker.success()
        return 0.0 if int(allowed) else int(wait_ms) / 1000

    def take_local(self, principal: Principal, rows: int) -> float:
        """Take from this process's buckets; seconds to wait instead (0 = taken)."""
        rate_req, cap_req, cost_req, rate_rows, cap_rows, cost_rows = self._costs(principal, rows)
        wanted = [
            (self._bucket(principal.key_id, "requests", rate_req, cap_req), cost_req),
            (self._bucket(principal.key_id, "rows", rate_rows, cap_rows), cost_rows),
        ]
        live = [(bucket, cost) for bucket, cost in wanted if bucket is not None]
        wait_s = max((bucket.shortfall_s(cost) for bucket, cost in live), default=0.0)
        if wait_s == 0:
            for bucket, cost in live:
                bucket.tokens -= cost
        return wait_s

    def _bucket(self, key_id: str, kind: str, rate: float, capacity: float) -> TokenBucket | None:
        if rate <= 0:
            return None
        bucket = self._local.get((key_id, kind))
        if bucket is None or bucket.rate != rate:
            bucket = self._local[(key_id, kind)] = TokenBucket(rate, capacity, self._clock)
        return bucket
