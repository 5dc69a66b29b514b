"""Cache stores: a bounded in-process LRU (by bytes) and a two-tier front for Redis.

Every store answers ``get`` with bytes or None and never raises for a store problem: a cache that
fails becomes a cache that misses.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

from service.cache.metrics import CACHE_BYTES, CACHE_ERRORS

log = logging.getLogger("infergate.cache")


class Store(Protocol):
    name: str

    async def start(self) -> None: ...

    async def get(self, key: str) -> bytes | None: ...

    def put(self, key: str, value: bytes, ttl_s: float) -> None:
        """Store without waiting: the response must not wait for the cache write."""

    async def close(self) -> None: ...


class RateLimitedLog:
    """One warning per ``(store, kind)`` per interval, with the count of those it held back."""

    def __init__(self, interval_s: float = 10.0) -> None:
        self.interval_s = interval_s
        self._last: dict[tuple[str, str], float] = {}
        self._held: dict[tuple[str, str], int] = {}

    def __call__(self, store: str, kind: str, message: str) -> None:
        CACHE_ERRORS.labels(store=store, kind=kind).inc()
        slot = (store, kind)
        now = time.monotonic()
        if now - self._last.get(slot, float("-inf")) < self.interval_s:
            self._held[slot] = self._held.get(slot, 0) + 1
            return
        held = self._held.pop(slot, 0)
        self._last[slot] = now
        suffix = f" ({held} similar errors suppressed)" if held else ""
        log.warning("cache %s %s: %s; serving without it%s", store, kind, message, suffix)


class LocalStore:
    """LRU bounded by the bytes of the stored values (keys counted too), with per-entry TTL.

    ``clock`` (seconds, monotonic) decides expiry; tests pass one they advance by hand.
    """

    name = "local"

    def __init__(self, max_bytes: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_bytes = max_bytes
        self._clock = clock
        self.bytes = 0
        self._entries: OrderedDict[str, tuple[bytes, float]] = OrderedDict()
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    @staticmethod
    def _size(key: str, value: bytes) -> int:
        return len(key) + len(value)

    async def start(self) -> None:
        CACHE_BYTES.set(self.bytes)

    def get_now(self, key: str) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        value, expires_at = entry
        if expires_at <= self._clock():
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return value

    def set_now(self, key: str, value: bytes, ttl_s: float) -> bool:
        size = self._size(key, value)
        if size > self.max_bytes or ttl_s <= 0:
            return False
        if key in self._entries:
            self._drop(key)
        self._entries[key] = (value, self._clock() + ttl_s)
        self.bytes += size
        while self.bytes > self.max_bytes:
            oldest = next(iter(self._entries))
            self._drop(oldest)
            self.evictions += 1
        CACHE_BYTES.set(self.bytes)
        return True

    def _drop(self, key: str) -> None:
        value, _ = self._entries.pop(key)
        self.bytes -= self._size(key, value)
        CACHE_BYTES.set(self.bytes)

    async def get(self, key: str) -> bytes | None:
        return self.get_now(key)

    def put(self, key: str, value: bytes, ttl_s: float) -> None:
        self.set_now(key, value, ttl_s)

    async def close(self) -> None:
        self._entries.clear()
        self.bytes = 0
        CACHE_BYTES.set(0)


class TieredStore:
    """Local L1 in front of a shared L2 (Redis): L2 hits are copied into L1."""

    name = "tiered"

    def __init__(self, l1: LocalStore, l2: Store, l1_ttl_s: float | None = None) -> None:
        self.l1 = l1
        self.l2 = l2
        self.l1_ttl_s = l1_ttl_s

    async def start(self) -> None:
        await self.l1.start()
        await self.l2.start()

    async def get(self, key: str) -> bytes | None:
        value = self.l1.get_now(key)
        if value is not None:
            return value
        value = await self.l2.get(key)
        if value is not None and self.l1_ttl_s:
            self.l1.set_now(key, value, self.l1_ttl_s)
        return value

    def put(self, key: str, value: bytes, ttl_s: float) -> None:
        self.l1.set_now(key, value, min(ttl_s, self.l1_ttl_s or ttl_s))
        self.l2.put(key, value, ttl_s)

    def forget_local(self, key: str) -> None:
        """Drop ``key`` from L1 (its value turned out corrupt)."""
        if key in self.l1:
            self.l1._drop(key)

    async def close(self) -> None:
        await self.l2.close()
        await self.l1.close()
