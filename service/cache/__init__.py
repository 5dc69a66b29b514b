"""Result cache: content-addressed keys, binary entries, Redis and/or in-process stores."""

from __future__ import annotations

from service.cache.response_cache import CacheStats, ResponseCache

__all__ = ["CacheStats", "ResponseCache"]
