"""Redis store: short timeouts, a circuit breaker and fire-and-forget writes.

A slow, dead or confused Redis costs at most ``timeout`` per request until the breaker opens, and
nothing after that; it never costs a failed prediction.
"""

from __future__ import annotations

import asyncio
import logging
from functools import partial
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.cache.metrics import CACHE_BREAKER_OPEN
from service.cache.stores import RateLimitedLog
from service.redis_client import CircuitBreaker, build_client, redact

log = logging.getLogger("infergate.cache")


def _kind(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError | RedisTimeoutError):
        return "timeout"
    if isinstance(exc, RedisConnectionError | OSError):
        return "connection"
    if isinstance(exc, ResponseError):
        return "response"
    if isinstance(exc, RedisError):
        return "protocol"
    return "other"


class RedisStore:
    """GET/SET with short timeouts behind a circuit breaker; SETs run in the background.

    ``asyncio.timeout`` bounds each call (socket timeouts alone miss a server that accepts and
    trickles); unlike ``wait_for`` it does not cost a task per call on the hit path.
    """

    name = "redis"

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 0.05,
        breaker_reset_s: float = 2.0,
        breaker_threshold: int = 5,
        max_pending_writes: int = 1024,
        client: Any | None = None,
    ) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self.client = client if client is not None else build_client(url, timeout_s)
        self.breaker = CircuitBreaker(breaker_threshold, breaker_reset_s)
        self.max_pending_writes = max_pending_writes
        self._pending: set[asyncio.Task[None]] = set()
        # Values whose SET is still on its way: a lookup in that window must not miss.
        self._writing: dict[str, bytes] = {}
        self._report = RateLimitedLog()

    @property
    def pending_writes(self) -> int:
        return len(self._pending)

    async def start(self) -> None:
        """Ping once; if Redis is not there, open the breaker and carry on without it."""
        try:
            await asyncio.wait_for(self.client.ping(), max(self.timeout_s, 1.0))
        except Exception as exc:  # any failure means "not now"
            self.breaker.trip()
            CACHE_BREAKER_OPEN.set(1)
            self._report(
                self.name, _kind(exc), f"{redact(self.url)} unreachable at start ({exc!r})"
            )
            return
        self.breaker.success()
        CACHE_BREAKER_OPEN.set(0)
        log.info("cache: connected to Redis at %s", redact(self.url))

    async def _call(self, op: str, coro_factory: Any) -> Any:
        if not self.breaker.allow():
            return None
        try:
            async with asyncio.timeout(self.timeout_s):
                result = await coro_factory()
        except asyncio.CancelledError:
            self.breaker.release_probe()
            raise
        except Exception as exc:  # a store problem is a miss, never an error
            self._failed(op, _kind(exc), repr(exc))
            return None
        self._succeeded()
        return result

    def _failed(self, op: str, kind: str, message: str) -> None:
        was_closed = self.breaker.state == "closed"
        if self.breaker.failure():
            CACHE_BREAKER_OPEN.set(1)
            if was_closed:  # re-opens after failed probes are expected while Redis stays down
                log.warning(
                    "cache: circuit open after %d consecutive Redis failures (%s); "
                    "skipping Redis, retrying every %.1fs+",
                    self.breaker.threshold,
                    message,
                    self.breaker.backoff_s,
                )
        self._report(self.name, kind, f"{op}: {message}")

    def _succeeded(self) -> None:
        if self.breaker.state != "closed":
            log.info("cache: Redis at %s answers again; circuit closed", redact(self.url))
        self.breaker.success()
        CACHE_BREAKER_OPEN.set(0)

    async def get(self, key: str) -> bytes | None:
        writing = self._writing.get(key)
        if writing is not None:
            return writing
        value = await self._call("get", lambda: self.client.get(key))
        if value is None or isinstance(value, bytes):
            return value
        self._failed("get", "protocol", f"unexpected reply type {type(value).__name__}")
        return None

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        px = max(1, int(ttl_s * 1000))
        await self._call("set", lambda: self.client.set(key, value, px=px))

    def put(self, key: str, value: bytes, ttl_s: float) -> None:
        self.set_background(key, value, ttl_s)

    def set_background(self, key: str, value: bytes, ttl_s: float) -> bool:
        """Write without holding up the response; drop the write if too many are queued."""
        if self.breaker.state != "closed":
            return False
        if len(self._pending) >= self.max_pending_writes:
            self._report(self.name, "write_dropped", f"{len(self._pending)} writes pending")
            return False
        task = asyncio.get_running_loop().create_task(self.set(key, value, ttl_s))
        self._pending.add(task)
        self._writing[key] = value
        task.add_done_callback(partial(self._written, key, value))
        return True

    def _written(self, key: str, value: bytes, task: asyncio.Task[None]) -> None:
        self._pending.discard(task)
        if self._writing.get(key) is value:
            del self._writing[key]

    async def flush(self, timeout_s: float = 1.0) -> None:
        """Wait (bounded) for queued writes, e.g. before shutdown or in tests."""
        if self._pending:
            await asyncio.wait(set(self._pending), timeout=timeout_s)

    async def close(self) -> None:
        await self.flush()
        for task in list(self._pending):
            task.cancel()
        try:
            await self.client.aclose()
        except Exception as exc:  # closing a dead connection may fail; harmless
            log.debug("cache: closing Redis client: %r", exc)
