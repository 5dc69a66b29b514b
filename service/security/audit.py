"""Audit log: one line per admin action and per authentication failure, rate limited.

A flood of bad keys must not become a flood of log lines: at most ``max_lines_per_s`` lines are
written each second; the first line after a held-back second says how many were suppressed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

log = logging.getLogger("infergate.audit")


class AuditLog:
    """``record(event, key=..., action=..., model=..., client=...)`` writes ``audit event k=v``."""

    def __init__(
        self, max_lines_per_s: int = 20, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.max_lines_per_s = max_lines_per_s
        self._clock = clock
        self._second = float("-inf")
        self._written = 0
        self.suppressed = 0

    def record(self, event: str, **fields: str) -> bool:
        """Write one line unless this second's allowance is spent; True when written."""
        now = self._clock()
        if now - self._second >= 1.0:
            self._second = now
            self._written = 0
        if self._written >= self.max_lines_per_s:
            self.suppressed += 1
            return False
        self._written += 1
        details = " ".join(f"{name}={value or '-'}" for name, value in fields.items())
        if self.suppressed:
            details += f" (suppressed {self.suppressed} audit lines)"
            self.suppressed = 0
        log.warning("audit %s %s", event, details)
        return True
