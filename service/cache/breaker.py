"""Circuit breaker: after a run of Redis failures stop asking for a while, then probe once.

Without it every request would pay the full Redis timeout while Redis is down.
"""

from __future__ import annotations

import time
from collections.abc import Callable


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
