"""uvicorn's httptools protocol with a request read timeout.

uvicorn times out idle keep-alive connections but not a request whose headers or body never
finish arriving: 2,000 such connections held 2,026 file descriptors for good. Here each request
must be read completely within ``read_timeout_s`` of its first byte (or of the connection, for
the first request); otherwise it is answered 408 in the v2 shape and the connection closes. A
request the app answered before reading its body (a refusal) keeps its connection: the rest of
the body is discarded as it comes, and if it never comes the connection closes without a second
answer.
"""

from __future__ import annotations

import asyncio
import mmap
from collections.abc import Callable, MutableMapping

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle


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


class _Deferred:
    """A request cycle's transport that, once armed by the response's start, holds the status
    line and headers until the first piece of body, and writes both in one vectored write: one
    syscall per response where uvicorn makes two. Other writes (100 Continue) pass through."""

    __slots__ = ("transport", "head", "armed")

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.head: bytes | None = None
        self.armed = False

    def write(self, data: bytes) -> None:
        if self.armed:
            self.armed = False
            self.head = data
        elif self.head is not None:
            head, self.head = self.head, None
            self.transport.writelines([head, data])
        else:
            self.transport.write(data)

    def close(self) -> None:
        if self.head is not None:
            head, self.head = self.head, None
            self.transport.write(head)
        self.transport.close()

    def is_closing(self) -> bool:
        return self.transport.is_closing()


class LeanCycle(RequestResponseCycle):
    """uvicorn's request cycle, writing each response's head with its body (see _Deferred)."""

    async def send(self, message: MutableMapping[str, object]) -> None:  # type: ignore[override]
        deferred = self.transport
        if message["type"] == "http.response.start" and isinstance(deferred, _Deferred):
            deferred.armed = not self.response_started
        await super().send(message)  # type: ignore[arg-type]


class ReadTimeoutProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the read timeout; :func:`with_read_timeout` makes the
    subclass that carries the settings."""

    read_timeout_s: float = 10.0
    timeout_answer: bytes = b""
    on_connections: Callable[[], None] | None = None  # after a connection opens or closes
    _read_timer: asyncio.TimerHandle | None = None
    _headers_read = False  # the current request's headers are in (its body may not be)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()
        self._published()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._headers_read = False
        self._unset_keepalive_if_required()  # a request again: not idle (see below)
        self._arm()

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self._headers_read = True
        cycle = self.cycle
        if type(cycle) is RequestResponseCycle:  # its ASGI task has not started yet
            cycle.__class__ = LeanCycle
            cycle.transport = _Deferred(self.transport)  # type: ignore[assignment]

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._disarm()
        cycle = self.cycle
        if cycle is not None and cycle.response_complete and not self.pipeline:
            # Answered before its body was read (a refusal): uvicorn discarded the rest of the
            # body, and its keep-alive timer went with the first chunk of it. The connection is
            # idle again: time it out like any idle one.
            self._unset_keepalive_if_required()
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self.timeout_keep_alive_handler
            )

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)
        self._published()

    def _published(self) -> None:
        if self.on_connections is not None:
            self.on_connections()

    def _arm(self) -> None:
        self._disarm()
        self._read_timer = self.loop.call_later(self.read_timeout_s, self._timed_out)

    def _disarm(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def _timed_out(self) -> None:
        self._read_timer = None
        if self.transport.is_closing():
            return
        cycle = self.cycle  # the previous request's, while the next one's headers arrive
        answered_early = self._headers_read and cycle is not None and cycle.response_complete
        if not answered_early and (
            cycle is None or cycle.response_complete or not cycle.response_started
        ):
            self.transport.write(self.timeout_answer)
        # An app still reading the body sees a disconnect; a request answered before its body
        # came (and the body never did) gets no second answer.
        self.transport.close()


def with_read_timeout(
    read_timeout_s: float, on_connections: Callable[[], None] | None = None
) -> type[HttpToolsProtocol]:
    """The protocol class uvicorn should use (``uvicorn.Config(http=...)``); ``on_connections``
    runs after each connection opens or closes (to publish the count to a ConnectionTally)."""
    settings = {
        "read_timeout_s": read_timeout_s,
        "timeout_answer": _timeout_response(read_timeout_s),
        "on_connections": staticmethod(on_connections) if on_connections else None,
    }
    return type("ConfiguredReadTimeoutProtocol", (ReadTimeoutProtocol,), settings)
