"""uvicorn's httptools protocol with a request read timeout.

uvicorn times out idle keep-alive connections but not a request whose headers or body never
finish arriving: 2,000 such connections held 2,026 file descriptors for good. Here each request
must be read completely within ``read_timeout_s`` of its first byte (or of the connection, for
the first request); otherwise it is answered 408 in the v2 shape and the connection closes.
"""

from __future__ import annotations

import asyncio
import mmap
from collections.abc import Callable

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


def _timeout_response(seconds: float) -> bytes:
    body = orjson.dumps({"error": f"request not received within {seconds:g} s"})
    head = (
        "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
        f"connection: close\r\ncontent-length: {len(body)}\r\n\r\n"
    )
    return head.encode("latin-1") + body


class ConnectionTally:
    """Open HTTP connections of every front-end worker (``--workers N``), so the connection cap
    counts the server's connections, not one worker's: an anonymous shared mapping made before
    the workers fork, one 8-byte slot per worker, written by its owner on connect and disconnect
    and summed by the cap."""

    def __init__(self, workers: int) -> None:
        self._memory = mmap.mmap(-1, 8 * workers)
        self._slots = memoryview(self._memory).cast("q")

    def set(self, worker: int, connections: int) -> None:
        self._slots[worker] = connections

    def total(self) -> int:
        return sum(self._slots)


def with_read_timeout(
    read_timeout_s: float, on_connections: Callable[[], None] | None = None
) -> type[HttpToolsProtocol]:
    """The protocol class uvicorn should use (``uvicorn.Config(http=...)``); ``on_connections``
    runs after each connection opens or closes (to publish the count to a ConnectionTally)."""
    timeout_answer = _timeout_response(read_timeout_s)

    class ReadTimeoutProtocol(HttpToolsProtocol):
        _read_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()
            if on_connections is not None:
                on_connections()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm()

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._disarm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)
            if on_connections is not None:
                on_connections()

        def _arm(self) -> None:
            self._disarm()
            self._read_timer = self.loop.call_later(read_timeout_s, self._timed_out)

        def _disarm(self) -> None:
            if self._read_timer is not None:
                self._read_timer.cancel()
                self._read_timer = None

        def _timed_out(self) -> None:
            self._read_timer = None
            if self.transport.is_closing():
                return
            cycle = self.cycle  # the previous request's, while the next one's headers arrive
            if cycle is None or cycle.response_complete or not cycle.response_started:
                self.transport.write(timeout_answer)
            self.transport.close()  # an app still reading the body sees a disconnect

    return ReadTimeoutProtocol
