"""ResponseCache: the one object the data plane asks before it runs a model.

Lookup, coalescing, policy and accounting live here; stores only move bytes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from service.cache import codec
from service.cache.coalesce import Coalescer
from service.cache.keys import request_key
from service.cache.metrics import CACHE_COALESCED, CACHE_SKIPPED
from service.cache.redis_store import RedisStore
from service.cache.stores import LocalStore, RateLimitedLog, Store, TieredStore
from service.messages import Array, InferRequest, Tensors
from service.observability import requestlog, tracing
from service.settings import Settings

if TYPE_CHECKING:
    from tritonclient.grpc import model_config_pb2

log = logging.getLogger("infergate.cache")

Outputs = Tensors


class SharedOutputs(dict[str, Array]):
    """Outputs of an identical request's execution, joined in flight elsewhere (the executor of
    ``--workers N``): for this request a hit, and already stored where it ran."""


@dataclass(slots=True)
class CacheStats:
    """Triton's ``cache_hit`` / ``cache_miss`` statistics for one model version."""

    hit_count: int = 0
    hit_ns: int = 0
    miss_count: int = 0
    miss_ns: int = 0

    def figures(self) -> tuple[int, int, int, int]:
        return self.hit_count, self.hit_ns, self.miss_count, self.miss_ns

    def add(self, figures: tuple[int, int, int, int]) -> None:
        self.hit_count += figures[0]
        self.hit_ns += figures[1]
        self.miss_count += figures[2]
        self.miss_ns += figures[3]

    def as_dict(self) -> dict[str, int]:
        return {
            "hit_count": self.hit_count,
            "hit_ns": self.hit_ns,
            "miss_count": self.miss_count,
            "miss_ns": self.miss_ns,
        }


def build_store(settings: Settings, local_tier: bool) -> Store | None:
    """Redis when configured (optionally behind a local L1), else the in-process LRU."""
    local = LocalStore(settings.cache_local_bytes) if settings.cache_local_bytes > 0 else None
    if not settings.redis_url:
        return local
    redis = RedisStore(
        settings.redis_url,
        timeout_s=settings.cache_redis_timeout_ms / 1000.0,
        breaker_reset_s=settings.cache_breaker_reset_s,
    )
    if local_tier and local is not None:
        return TieredStore(local, redis, l1_ttl_s=settings.cache_ttl_s)
    return redis


class ResponseCache:
    """Content-addressed result cache with coalescing; a cache fault is only ever a miss."""

    def __init__(
        self, settings: Settings, *, local_tier: bool | None = None, store: Store | None = None
    ) -> None:
        self.settings = settings
        self.namespace = settings.cache_namespace
        self.ttl_s = settings.cache_ttl_s
        self.max_entry_bytes = settings.cache_max_entry_bytes
        if local_tier is None:
            local_tier = settings.cache_local_tier
        self.store = store if store is not None else build_store(settings, local_tier)
        self._coalescer: Coalescer[tuple[Outputs, bool]] = Coalescer()
        self._stats: dict[tuple[str, str], CacheStats] = {}
        self._shipped: dict[tuple[str, str], tuple[int, int, int, int]] = {}
        self._report = RateLimitedLog()

    # --- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        """Connect; a missing Redis is logged and the breaker opened, never raised."""
        if self.store is not None:
            try:
                await self.store.start()
            except Exception as exc:  # a broken store must not stop the gateway
                self._report(self.store.name, "start", repr(exc))

    async def close(self) -> None:
        if self.store is not None:
            await self.store.close()

    async def flush(self, timeout_s: float = 1.0) -> None:
        """Wait (bounded) for background writes to reach Redis."""
        redis = self.redis
        if redis is not None:
            await redis.flush(timeout_s)

    @property
    def redis(self) -> RedisStore | None:
        store = self.store
        if isinstance(store, TieredStore):
            store = store.l2
        return store if isinstance(store, RedisStore) else None

    # --- policy ----------------------------------------------------------------------------
    def enabled_for(self, config: model_config_pb2.ModelConfig) -> bool:
        """``Settings.cache_enabled`` wins; None follows ``response_cache { enable }``."""
        if self.settings.cache_enabled is not None:
            return self.settings.cache_enabled
        return bool(config.HasField("response_cache") and config.response_cache.enable)

    def key(self, model: str, version: str, request: InferRequest, output_names: list[str]) -> str:
        return request_key(self.namespace, model, version, request, output_names)

    def stats(self, model: str, version: str) -> dict[str, int]:
        """Counts and cumulative nanoseconds for ``/v2/models/{m}/stats``."""
        return self._slot(model, version).as_dict()

    def take_counts(self) -> dict[tuple[str, str], tuple[int, int, int, int]]:
        """Hit and miss counts (and nanoseconds) since the last take, by version, for the
        process that holds the counts; this process's own stay as they are."""
        taken: dict[tuple[str, str], tuple[int, int, int, int]] = {}
        for key, slot in self._stats.items():
            now = slot.figures()
            shipped = self._shipped.get(key, (0, 0, 0, 0))
            if now != shipped:
                taken[key] = (now[0] - shipped[0], now[1] - shipped[1], now[2] - shipped[2],
                              now[3] - shipped[3])  # fmt: skip
                self._shipped[key] = now
        return taken

    def _slot(self, model: str, version: str) -> CacheStats:
        slot = self._stats.get((model, version))
        if slot is None:
            slot = self._stats[(model, version)] = CacheStats()
        return slot

    # --- the hot path ----------------------------------------------------------------------
    async def get_or_compute(
        self,
        key: str,
        model: str,
        version: str,
        compute: Callable[[], Awaitable[Outputs]],
    ) -> tuple[Outputs, bool]:
        """``(outputs, was_hit)``: a stored result, one already in flight, or ``compute()``.

        A request that joined an identical one in flight counts as a hit (the model did not run
        for it). Errors from ``compute`` reach every waiter and are not cached.
        """
        start = time.perf_counter_ns()
        (outputs, hit), joined = await self._coalescer.run(
            key, lambda: self._resolve(key, model, version, compute)
        )
        if requestlog.ACTIVE:
            requestlog.cached(hit or joined)
        if joined:
            self._record_hit(model, version, time.perf_counter_ns() - start)
            CACHE_COALESCED.labels(model=model, version=version).inc()
            return dict(outputs), True
        return outputs, hit

    async def _resolve(
        self, key: str, model: str, version: str, compute: Callable[[], Awaitable[Outputs]]
    ) -> tuple[Outputs, bool]:
        start = time.perf_counter_ns()
        raw = await self._lookup(key)
        if requestlog.ACTIVE:
            requestlog.step("cache lookup", start, {tracing.CACHE_HIT: raw is not None})
        if raw is not None:
            try:
                outputs = codec.decode(raw)
            except codec.CorruptEntry as exc:
                self._report("codec", "corrupt", f"{key}: {exc}")
                if isinstance(self.store, TieredStore):
                    self.store.forget_local(key)
            else:
                self._record_hit(model, version, time.perf_counter_ns() - start)
                return outputs, True
        lookup_ns = time.perf_counter_ns() - start
        slot = self._slot(model, version)
        slot.miss_count += 1
        slot.miss_ns += lookup_ns
        outputs = await compute()
        if isinstance(outputs, SharedOutputs):
            slot.miss_count -= 1
            slot.miss_ns -= lookup_ns
            self._record_hit(model, version, time.perf_counter_ns() - start)
            CACHE_COALESCED.labels(model=model, version=version).inc()
            return dict(outputs), True
        insert_start = time.perf_counter_ns()
        self._insert(key, outputs)
        insert_ns = time.perf_counter_ns() - insert_start
        slot.miss_ns += insert_ns
        return outputs, False

    async def _lookup(self, key: str) -> bytes | None:
        if self.store is None:
            return None
        try:
            return await self.store.get(key)
        except Exception as exc:  # stores should not raise; if one does, it is a miss
            self._report(self.store.name, "other", repr(exc))
            return None

    def _insert(self, key: str, outputs: Outputs) -> None:
        if self.store is None:
            return
        try:
            value = codec.encode(outputs)
        except codec.Unencodable as exc:
            CACHE_SKIPPED.labels(reason="unencodable").inc()
            log.debug("cache: not storing %s: %s", key, exc)
            return
        if len(value) > self.max_entry_bytes:
            CACHE_SKIPPED.labels(reason="too_large").inc()
            return
        try:
            self.store.put(key, value, self.ttl_s)
        except Exception as exc:  # e.g. no running loop for a background write
            self._report(self.store.name, "other", repr(exc))

    def _record_hit(self, model: str, version: str, elapsed_ns: int) -> None:
        slot = self._slot(model, version)
        slot.hit_count += 1
        slot.hit_ns += elapsed_ns
