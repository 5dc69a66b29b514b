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
    """uvicorn's httptools protocol with the read timeout, and deadlines in place of timers:
    a request stores when it must be read by, an idle connection when it expires, and one
    sweep per server (:func:`sweep`) acts on them, where uvicorn arms and cancels a timer per
    request and per response. :func:`with_read_timeout` makes the subclass with the settings."""

    read_timeout_s: float = 10.0
    timeout_answer: bytes = b""
    on_connections: Callable[[], None] | None = None  # after a connection opens or closes
    read_by = 0.0  # loop time the current request must be read by (0: nothing being read)
    idle_until = 0.0  # loop time an idle keep-alive connection closes (0: not idle)
    _headers_read = False  # the current request's headers are in (its body may not be)
    _requests = 0  # requests begun on this connection

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.read_by = self.loop.time() + self.read_timeout_s
        self._published()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._headers_read = False
        self.idle_until = 0.0
        self.read_by = self.loop.time() + self.read_timeout_s
        self._requests += 1
        if self._requests == 1:  # the connection cap is judged on a connection's first request
            self.scope[FIRST_REQUEST] = True  # type: ignore[literal-required]

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self._headers_read = True
        cycle = self.cycle
        if type(cycle) is RequestResponseCycle:  # its ASGI task has not started yet
            cycle.__class__ = LeanCycle
            cycle.transport = _Deferred(self.transport)  # type: ignore[assignment]

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self.read_by = 0.0
        cycle = self.cycle
        if cycle is not None and cycle.response_complete and not self.pipeline:
            # Answered before its body was read (a refusal): uvicorn discarded the rest of the
            # body. The connection is idle again: it expires like any idle one.
            self.idle_until = self.loop.time() + self.timeout_keep_alive

    def on_response_complete(self) -> None:
        """uvicorn's, with a deadline where it arms a keep-alive timer."""
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
        else:
            self.idle_until = self.loop.time() + self.timeout_keep_alive

    def _unset_keepalive_if_required(self) -> None:
        """Data came: not idle (uvicorn calls this for every chunk it reads)."""
        self.idle_until = 0.0
        if self.timeout_keep_alive_task is not None:
            self.timeout_keep_alive_task.cancel()
            self.timeout_keep_alive_task = None

    def connection_lost(self, exc: Exception | None) -> None:
        self.read_by = self.idle_until = 0.0
        super().connection_lost(exc)
        self._published()

    def _published(self) -> None:
        if self.on_connections is not None:
            self.on_connections()

    def expire(self, now: float) -> None:
        """What the sweep does at ``now``: time out a request not read in time, close a
        connection idle past its keep-alive."""
        if self.read_by and now >= self.read_by:
            self.read_by = 0.0
            self._timed_out()
        elif self.idle_until and now >= self.idle_until:
            self.idle_until = 0.0
            self.timeout_keep_alive_handler()

    def _timed_out(self) -> None:
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


#: the scope key a connection's first request carries (where the connection cap is judged)
FIRST_REQUEST = "first_request"
#: how often the deadlines of a server's connections are looked at
SWEEP_S = 0.25


async def sweep(connections: set[HttpToolsProtocol], interval_s: float = SWEEP_S) -> None:
    """Act on the read and keep-alive deadlines of a server's connections, until cancelled."""
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(interval_s)
        now = loop.time()
        for protocol in list(connections):
            if isinstance(protocol, ReadTimeoutProtocol):
                protocol.expire(now)


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
