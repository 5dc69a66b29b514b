"""A front-end worker's connection to the executor: requests out in frames, answers back in frames.

What the worker's event loop gathers for the executor in one pass (every request its clients
sent, over every model) leaves as one ``requests`` frame at the end of that pass: the worker
never waits for more when the executor is idle, and a frame is sent at once when it reaches
:data:`FRAME_REQUESTS` requests or :data:`FRAME_BYTES` bytes of tensors. The executor answers in
one ``answers`` frame per pass of its own (every batch that ended, for this worker), with the
queue figures of the models it answered for (the worker refuses by them before reading a body).
Hang-ups and requests cancelled here go back as ``cancel`` frames, so their rows never run.

The link is re-established whenever the executor restarts; while it is away every request
fails at once with 503 + Retry-After, never hangs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from functools import partial
from typing import Protocol, cast

from service.cache.response_cache import SharedOutputs
from service.dataplane.batches import Outputs
from service.dataplane.shedding import Figures
from service.errors import InferenceError, Unavailable
from service.processes.ipc import Channel, Handler, connect, rebuild_error
from service.processes.wire import Answers, Snapshot

log = logging.getLogger("infergate.frontend")

#: how often a worker asks its waiting requests' clients whether they are still there
CLIENT_SWEEP_S = 0.1
#: a frame leaves at once when it holds this many requests, or this many bytes of tensors
FRAME_REQUESTS = 256
FRAME_BYTES = 4 << 20
RESTARTING = "the executor process is restarting"


def down_error() -> InferenceError:
    return Unavailable(f"{RESTARTING}; retry", retry_after_s=1)


class Mirror(Protocol):
    """What the link tells the worker's view of the executor's models."""

    def apply(self, snapshot: Snapshot) -> None: ...

    def executor_lost(self) -> None: ...


class ExecutorLink:
    """A worker's connection to the executor, re-established whenever the executor restarts.
    ``handler`` answers what the executor asks of the worker; ``mirror`` gets the snapshots."""

    def __init__(self, socket_path: str, handler: Handler, mirror: Mirror | None = None) -> None:
        self.socket_path = socket_path
        self.handler = handler
        self.mirror = mirror
        self.channel: Channel | None = None
        #: the executor's latest queue figures per (model, version)
        self.figures: dict[tuple[str, str], Figures] = {}
        self._answers: dict[int, asyncio.Future[Outputs]] = {}
        self._watched: dict[int, Callable[[], bool]] = {}
        self._outbox: list[tuple[object, ...]] = []
        self._outbox_bytes = 0
        self._cancels: list[int] = []
        self._flush_due = False
        self._next_id = 1
        self._tasks: list[asyncio.Task[None]] = []
        self._first_snapshot = asyncio.Event()

    @property
    def connected(self) -> bool:
        return self.channel is not None and self.channel.transport is not None

    async def start(self) -> None:
        """Connect, and return once the first snapshot is in (a worker listens only then)."""
        self._tasks = [
            asyncio.create_task(self._keep_connected()),
            asyncio.create_task(self._sweep()),
        ]
        await self._first_snapshot.wait()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self.channel is not None:
            self.channel.close()

    def call(self, kind: str, payload: object) -> asyncio.Future[object]:
        if self.channel is None:
            failed: asyncio.Future[object] = asyncio.get_running_loop().create_future()
            failed.set_exception(down_error())
            return failed
        return self.channel.call(kind, payload)

    # -- requests out ---------------------------------------------------------------------
    def submit(
        self, entry: tuple[object, ...], nbytes: int, client_gone: Callable[[], bool] | None
    ) -> asyncio.Future[Outputs]:
        """Queue one request (a :class:`~service.processes.wire.RequestEntry` without its id)
        for this pass's frame; the future resolves to its answer."""
        future: asyncio.Future[Outputs] = asyncio.get_running_loop().create_future()
        if self.channel is None:
            future.set_exception(down_error())
            return future
        request_id = self._next_id
        self._next_id += 1
        self._answers[request_id] = future
        if client_gone is not None:
            self._watched[request_id] = client_gone
        future.add_done_callback(partial(self._settled, request_id))
        self._outbox.append((request_id, *entry))
        self._outbox_bytes += nbytes
        if len(self._outbox) >= FRAME_REQUESTS or self._outbox_bytes >= FRAME_BYTES:
            self._flush()
        elif not self._flush_due:
            self._flush_due = True
            asyncio.get_running_loop().call_soon(self._flush)
        return future

    def _settled(self, request_id: int, future: asyncio.Future[Outputs]) -> None:
        """Answered, or cancelled here (its request failed as a whole): a cancelled one need
        not run in the executor."""
        self._watched.pop(request_id, None)
        if future.cancelled() and self._answers.pop(request_id, None) is not None:
            self._cancel(request_id)

    def _cancel(self, request_id: int) -> None:
        self._cancels.append(request_id)
        if not self._flush_due:
            self._flush_due = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_due = False
        channel = self.channel
        if channel is None:
            return
        if self._outbox:
            channel.notify("requests", self._outbox)
            self._outbox, self._outbox_bytes = [], 0
        if self._cancels:
            channel.notify("cancel", self._cancels)
            self._cancels = []
        channel.flush()

    # -- answers in -----------------------------------------------------------------------
    def _handle(self, kind: str, payload: object, channel: Channel, call_id: int) -> object:
        if kind == "answers":
            self.answered(cast(Answers, payload))
            return None
        return self.handler(kind, payload, channel, call_id)

    def answered(self, payload: Answers) -> None:
        """One ``answers`` frame: outputs and errors by request id, and queue figures."""
        answers, failures, figures = payload
        pending = self._answers
        for request_id, outputs, shared in answers:
            future = pending.pop(request_id, None)
            if future is not None and not future.done():
                future.set_result(SharedOutputs(outputs) if shared else outputs)
        for request_id, error in failures:
            future = pending.pop(request_id, None)
            if future is not None and not future.done():
                future.set_exception(rebuild_error(error))
        self.figures.update(figures)

    def _lost(self) -> None:
        """The executor is gone: every request waiting on it fails now (503)."""
        pending, self._answers = self._answers, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(down_error())
        self._watched.clear()
        self._outbox, self._outbox_bytes, self._cancels = [], 0, []
        self.figures.clear()

    async def _keep_connected(self) -> None:
        while True:
            try:
                channel = await connect(self.socket_path, self._handle, lambda _: None)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            self.channel = channel
            try:
                snapshot = await channel.call("snapshot", None)
                assert self.mirror is not None
                self.mirror.apply(cast(Snapshot, snapshot))
                self._first_snapshot.set()
                log.info("connected to the executor")
            except InferenceError:
                pass  # lost again at once: wait for the close below
            await channel.closed
            self.channel = None
            self._lost()
            assert self.mirror is not None
            self.mirror.executor_lost()
            log.warning("lost the executor; answering 503 until it is back")

    async def _sweep(self) -> None:
        """Tell the executor about clients that hung up, so their requests never run."""
        while True:
            await asyncio.sleep(CLIENT_SWEEP_S)
            if self.channel is None or not self._watched:
                continue
            for request_id, gone in list(self._watched.items()):
                if gone():
                    del self._watched[request_id]
                    self._cancel(request_id)
