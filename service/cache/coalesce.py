"""Request coalescing: identical requests in flight at once share one execution.

The work runs in its own task that every caller (the first included) awaits through
``asyncio.shield``; a caller that goes away only withdraws itself, so a cancelled first caller
never strands the others. The task is cancelled only when nobody is waiting any more.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(slots=True)
class _Flight(Generic[T]):
    task: asyncio.Task[T]
    waiters: int = 0


class Coalescer(Generic[T]):
    """``key -> in-flight task``; errors reach every waiter and are not remembered."""

    def __init__(self) -> None:
        self._flights: dict[str, _Flight[T]] = {}

    def __len__(self) -> int:
        return len(self._flights)

    async def run(self, key: str, work: Callable[[], Awaitable[T]]) -> tuple[T, bool]:
        """Return ``(result, joined)``; ``joined`` is True when another caller's work was reused."""
        flight = self._flights.get(key)
        joined = flight is not None and not flight.task.done()
        if flight is None or not joined:
            task = asyncio.ensure_future(work())
            flight = _Flight(task)
            self._flights[key] = flight
            task.add_done_callback(partial(self._forget, key, flight))
        flight.waiters += 1
        try:
            result = await asyncio.shield(flight.task)
        except asyncio.CancelledError:
            if flight.task.cancelled() or flight.task.done():
                raise
            flight.waiters -= 1
            if flight.waiters == 0:
                flight.task.cancel()
            raise
        return result, joined

    def _forget(self, key: str, flight: _Flight[T], _task: object = None) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]
        if not flight.task.cancelled():
            flight.task.exception()  # mark retrieved: the waiters already saw it
