"""Prometheus metrics of the result cache that Triton has no name for.

Triton's per-model families (``nv_cache_num_hits_per_model``, ``..._misses_...``,
``nv_cache_hit_duration_per_model``, ``..._miss_duration_...``) are rendered by
``service/observability/metrics.py`` from :meth:`ResponseCache.stats`, the same numbers
``/v2/models/{m}/stats`` reports, so the two views never disagree.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

CACHE_ERRORS = Counter(
    "infergate_cache_errors",
    "Cache store failures that were served without the cache",
    ["store", "kind"],
)
CACHE_SKIPPED = Counter(
    "infergate_cache_skipped",
    "Results not stored by policy (too large, unencodable)",
    ["reason"],
)
CACHE_COALESCED = Counter(
    "infergate_cache_coalesced",
    "Requests answered by an identical request already in flight",
    ["model", "version"],
)
CACHE_BYTES = Gauge("infergate_cache_bytes", "Bytes held by the in-process cache store")
CACHE_BREAKER_OPEN = Gauge(
    "infergate_cache_breaker_open", "1 while the Redis circuit breaker skips Redis"
)
