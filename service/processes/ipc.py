"""The channel between front-end workers and the executor: one Unix stream socket per worker.

A message is any picklable object. NumPy buffers travel out of band (pickle protocol 5): the
frame is a small header, the pickle without the tensor bytes, then each buffer, written with one
vectored write, so tensor bytes are never copied into a pickle, and the reader builds its arrays
on the received frame without another copy. ``bench/ipc_bench.py`` measured this against ZeroMQ
and shared-memory rings (see bench/README.md): for the sizes one request carries, a plain socket
with out-of-band buffers costs the least per round trip.

Both ends are symmetric: ``call`` (a reply comes back by call id), ``notify`` (one way), and a
handler for what the other end calls. A handler may answer with a value, an awaitable, or a
future it resolves later (the executor's batch futures), so a request costs no extra task.
"""

from __future__ import annotations

import asyncio
import copyreg
import io
import logging
import pickle
import struct
from collections.abc import Awaitable, Callable
from itertools import count
from typing import cast

import numpy as np

from service import errors
from service.errors import InferenceError, Internal, Unavailable
from service.messages import Array

log = logging.getLogger(__name__)

#: frame length (after these 4 bytes), pickle length, number of out-of-band buffers
_HEADER = struct.Struct("<IIH")
_LENGTH = struct.Struct("<I")
_CALL, _OK, _ERROR, _NOTE = range(4)

#: (kind, payload) -> a reply value, an awaitable of one, or a future resolved later
Handler = Callable[[str, object, "Channel", int], object]


def _reduce_array(array: Array) -> str | tuple[object, ...]:
    if array.dtype.kind != "O" and array.flags.c_contiguous:
        data = pickle.PickleBuffer(array)  # type: ignore[arg-type]
        return _array, (array.dtype.str, array.shape, data)
    return array.__reduce_ex__(5)  # BYTES (object) tensors: pickled in band


class _Pickler(pickle.Pickler):
    """Plain arrays as (dtype, shape, out-of-band buffer): numpy's own reduction costs several
    times more per array (7.6 vs ~2 µs for a 64-float tensor), and a request is mostly arrays.
    A dispatch table entry, unlike ``reducer_override``, is consulted for arrays only."""

    dispatch_table = {**copyreg.dispatch_table, np.ndarray: _reduce_array}  # type: ignore[dict-item]


def _array(dtype: str, shape: tuple[int, ...], buffer: memoryview) -> Array:
    return np.frombuffer(buffer, dtype=dtype).reshape(shape)


def encode(message: object) -> list[bytes | memoryview]:
    """A frame as the pieces one vectored write sends."""
    buffers: list[pickle.PickleBuffer] = []
    stream = io.BytesIO()
    _Pickler(stream, protocol=5, buffer_callback=buffers.append).dump(message)
    body = stream.getbuffer()
    raws = [buffer.raw() for buffer in buffers]
    lengths = b"".join(_LENGTH.pack(raw.nbytes) for raw in raws)
    total = _HEADER.size - 4 + len(lengths) + body.nbytes + sum(raw.nbytes for raw in raws)
    return [_HEADER.pack(total, body.nbytes, len(raws)), lengths, body, *raws]


def decode(frame: bytearray) -> object:
    """A frame (without its 4-byte length) back into the message; arrays share ``frame``."""
    body_size, buffer_count = struct.unpack_from("<IH", frame, 0)
    offset = 6
    sizes = struct.unpack_from(f"<{buffer_count}I", frame, offset)
    offset += 4 * buffer_count
    view = memoryview(frame)
    body = view[offset : offset + body_size]
    offset += body_size
    buffers = []
    for size in sizes:
        buffers.append(view[offset : offset + size])
        offset += size
    return pickle.loads(body, buffers=buffers)


def error_payload(exc: BaseException) -> tuple[str, str, int | None]:
    """An error as the other process rebuilds it (class name in ``service.errors``)."""
    if not isinstance(exc, InferenceError):
        log.error("unexpected error answering a call", exc_info=exc)
        exc = Internal(f"internal error: {exc}")
    return type(exc).__name__, exc.message, exc.retry_after_s


def rebuild_error(payload: tuple[str, str, int | None]) -> InferenceError:
    name, message, retry_after_s = payload
    kind = getattr(errors, name, Internal)
    if not (isinstance(kind, type) and issubclass(kind, InferenceError)):
        kind = Internal
    return kind(message, retry_after_s=retry_after_s)


class Channel(asyncio.Protocol):
    """One connection's framing, calls and replies."""

    def __init__(self, handler: Handler, on_lost: Callable[[Channel], None] | None = None) -> None:
        self.handler = handler
        self.on_lost = on_lost
        self.transport: asyncio.Transport | None = None
        self.closed = asyncio.get_running_loop().create_future()
        self._buffer = bytearray()
        self._ids = count(1)
        self._calls: dict[int, asyncio.Future[object]] = {}
        self._outgoing: list[bytes | memoryview] = []
        self._flushing = False

    # -- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        while len(buffer) >= 4:
            (size,) = _LENGTH.unpack_from(buffer, 0)
            if len(buffer) < 4 + size:
                return
            frame = buffer[4 : 4 + size]
            del buffer[: 4 + size]
            self._dispatch(decode(frame))

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        lost = Unavailable("the executor process is restarting; retry", retry_after_s=1)
        calls, self._calls = self._calls, {}
        for future in calls.values():
            if not future.done():
                future.set_exception(lost)
        if not self.closed.done():
            self.closed.set_result(None)
        if self.on_lost is not None:
            self.on_lost(self)

    # -- sending ---------------------------------------------------------------------------
    def call(self, kind: str, payload: object) -> asyncio.Future[object]:
        """Send a call; the future resolves to the reply (or the error the other end raised)."""
        return self.call_with_id(kind, payload)[1]

    def call_with_id(self, kind: str, payload: object) -> tuple[int, asyncio.Future[object]]:
        """``call``, also returning the id the other end sees (to refer to the call later)."""
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        if self.transport is None:
            future.set_exception(
                Unavailable("the executor process is restarting; retry", retry_after_s=1)
            )
            return 0, future
        call_id = next(self._ids)
        self._calls[call_id] = future
        self._send((_CALL, call_id, kind, payload))
        return call_id, future

    def notify(self, kind: str, payload: object) -> None:
        if self.transport is not None:
            self._send((_NOTE, 0, kind, payload))

    def _send(self, message: object) -> None:
        """Queue a frame; every frame of this loop iteration leaves in one vectored write."""
        self._outgoing += encode(message)
        if not self._flushing:
            self._flushing = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        """Write what is queued now (else at the end of this loop iteration)."""
        self._flushing = False
        pieces, self._outgoing = self._outgoing, []
        if self.transport is not None and pieces:
            self.transport.writelines(pieces)

    def close(self) -> None:
        if self.transport is not None:
            self.flush()
            self.transport.close()

    # -- receiving -------------------------------------------------------------------------
    def _dispatch(self, message: object) -> None:
        tag, call_id, kind, payload = cast("tuple[int, int, str, object]", message)
        if tag in (_OK, _ERROR):
            future = self._calls.pop(call_id, None)
            if future is None or future.done():
                return
            if tag == _OK:
                future.set_result(payload)
            else:
                future.set_exception(rebuild_error(cast("tuple[str, str, int | None]", payload)))
            return
        try:
            answer = self.handler(kind, payload, self, call_id)
        except Exception as exc:
            if tag == _CALL:
                self._reply_error(call_id, exc)
            else:
                log.exception("notice %s failed", kind)
            return
        if tag != _CALL:
            return
        if isinstance(answer, asyncio.Future):
            answer.add_done_callback(lambda done: self._reply_future(call_id, done))
        elif isinstance(answer, Awaitable):
            task = asyncio.ensure_future(answer)
            task.add_done_callback(lambda done: self._reply_future(call_id, done))
        else:
            self._reply(call_id, answer)

    def _reply_future(self, call_id: int, done: asyncio.Future[object]) -> None:
        if done.cancelled():
            self._reply_error(call_id, Unavailable("the call was cancelled", retry_after_s=1))
        elif done.exception() is not None:
            self._reply_error(call_id, done.exception())  # type: ignore[arg-type]
        else:
            self._reply(call_id, done.result())

    def _reply(self, call_id: int, value: object) -> None:
        if self.transport is not None:
            self._send((_OK, call_id, "", value))

    def _reply_error(self, call_id: int, exc: BaseException) -> None:
        if self.transport is not None:
            self._send((_ERROR, call_id, "", error_payload(exc)))


async def connect(path: str, handler: Handler, on_lost: Callable[[Channel], None]) -> Channel:
    loop = asyncio.get_running_loop()
    _, channel = await loop.create_unix_connection(lambda: Channel(handler, on_lost), path)
    return channel


async def listen(
    path: str,
    handler: Handler,
    on_connect: Callable[[Channel], None],
    on_lost: Callable[[Channel], None],
) -> asyncio.AbstractServer:
    def made() -> Channel:
        channel = Channel(handler, on_lost)
        on_connect(channel)
        return channel

    return await asyncio.get_running_loop().create_unix_server(made, path)
