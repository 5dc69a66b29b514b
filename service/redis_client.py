"""Redis for the processes that share it (result cache, rate limits): a client for any URL
kind, and a circuit breaker that stops asking a Redis that keeps failing.

``build_client`` takes plain, TLS (``rediss://``), Cluster (``redis+cluster://`` or
``?cluster=true``) and Sentinel (``redis+sentinel://h:p[,h:p]/name``) URLs with short timeouts
and no retries: a slow Redis must cost a request little. Without the breaker every request would
pay the full timeout while Redis is down.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff


class CircuitBreaker:
    """closed -> (``threshold`` consecutive failures) -> open -> (back-off) -> one probe.

    A successful probe closes the breaker; a failed one reopens it with the back-off doubled up
    to ``max_reset_s``.
    """

    def __init__(
        self,
        threshold: int = 5,
        reset_s: float = 2.0,
        max_reset_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threshold = max(1, threshold)
        self.reset_s = reset_s
        self.max_reset_s = max_reset_s if max_reset_s is not None else reset_s * 8
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._backoff = reset_s
        self._probing = False
        self.opened_count = 0

    @property
    def state(self) -> str:
        if self._opened_at is None:
            return "closed"
        if self._probing or self._clock() - self._opened_at >= self._backoff:
            return "half-open"
        return "open"

    @property
    def backoff_s(self) -> float:
        return self._backoff

    def allow(self) -> bool:
        """May a call go to Redis now? In half-open state only one probe at a time does."""
        if self._opened_at is None:
            return True
        if self._probing or self._clock() - self._opened_at < self._backoff:
            return False
        self._probing = True
        return True

    def success(self) -> None:
        self._failures = 0
        self._opened_at = None
        self._probing = False
        self._backoff = self.reset_s

    def failure(self) -> bool:
        """Record a failure; return True if this call opened (or re-opened) the breaker."""
        self._failures += 1
        if self._opened_at is not None:
            if self._probing:
                self._probing = False
                self._opened_at = self._clock()
                self._backoff = min(self._backoff * 2, self.max_reset_s)
                return True
            return False
        if self._failures >= self.threshold:
            self.trip()
            return True
        return False

    def trip(self) -> None:
        """Open now (e.g. Redis unreachable at start-up)."""
        self._opened_at = self._clock()
        self._probing = False
        self.opened_count += 1

    def release_probe(self) -> None:
        """A probe ended without a verdict (cancelled): let the next call probe instead."""
        self._probing = False


_TRUE = {"1", "true", "yes", "on"}


def redact(url: str) -> str:
    """The URL without its password, for logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def build_client(url: str, timeout_s: float, max_connections: int = 256) -> Any:
    """A ``redis.asyncio`` client for a plain, TLS, Cluster or Sentinel URL.

    ``redis+cluster://`` or ``?cluster=true`` -> RedisCluster; ``redis+sentinel://h:p[,h:p]/name``
    -> the Sentinel-tracked master ``name``; ``rediss://`` -> TLS; ``redis://:pw@host`` -> AUTH.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    query = parse_qsl(parts.query, keep_blank_values=True)
    cluster = scheme.endswith("+cluster") or any(
        k == "cluster" and v.lower() in _TRUE for k, v in query
    )
    query = [(k, v) for k, v in query if k != "cluster"]
    base_scheme = scheme.split("+", 1)[0]
    if base_scheme not in {"redis", "rediss", "unix"}:
        raise ValueError(f"unsupported Redis URL scheme {parts.scheme!r} in {redact(url)}")
    common: dict[str, Any] = {
        "socket_timeout": timeout_s,
        "socket_connect_timeout": timeout_s,
        "retry": Retry(NoBackoff(), 0),
    }
    if scheme.endswith("+sentinel"):
        return _sentinel_client(parts, base_scheme, query, common)
    plain = urlunsplit(parts._replace(scheme=base_scheme, query=urlencode(query)))
    if cluster:
        return RedisCluster.from_url(plain, **common)
    pool = aioredis.BlockingConnectionPool.from_url(
        plain, max_connections=max_connections, timeout=timeout_s, **common
    )
    return aioredis.Redis.from_pool(pool)


def _sentinel_client(
    parts: Any, base_scheme: str, query: list[tuple[str, str]], common: dict[str, Any]
) -> Any:
    hosts = parts.netloc.rsplit("@", 1)[-1]
    sentinels: list[tuple[str, int]] = []
    for item in hosts.split(","):
        host, _, port = item.rpartition(":")
        sentinels.append((host or item, int(port) if host else 26379))
    service = parts.path.strip("/").split("/", 1)[0]
    if not service:
        raise ValueError("redis+sentinel:// URL needs the service name as its path")
    kwargs: dict[str, Any] = dict(common)
    if parts.password is not None:
        kwargs["password"] = unquote(parts.password)
    if parts.username:
        kwargs["username"] = unquote(parts.username)
    if base_scheme == "rediss":
        kwargs["ssl"] = True
    for key, value in query:
        if key == "db":
            kwargs["db"] = int(value)
    sentinel_kwargs = {"socket_timeout": common["socket_timeout"], "retry": common["retry"]}
    sentinel = Sentinel(sentinels, sentinel_kwargs=sentinel_kwargs, **kwargs)  # type: ignore[no-untyped-call]
    return sentinel.master_for(service)
