"""The times and trace context of a request's scheduled parts, and the spans of the batches
they run in.

A part of a traced or logged request reaches its model's batcher with a :class:`Timing`
(``Submission.timing``; across ``--workers`` its ``traceparent`` travels in ``SubmitCall.trace``
and the executor answers with :class:`TimedOutputs`). A batch with such parts gets a
:class:`BatchWatch` (:func:`watch_batch`): one ``compute`` span per batch, in the trace of its first
traced request and linked to every other one, current while the backend runs (Triton gets its
``traceparent``); each traced part's ``queue wait`` span, linked to it; every part's queue and
compute times.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Sequence
from typing import TYPE_CHECKING, Protocol, TypeVar

from service.messages import Array, Tensors
from service.observability import tracing

if TYPE_CHECKING:
    from opentelemetry.trace import SpanContext

T = TypeVar("T")


class Timing:
    """One scheduled part of a request as its batcher sees it: the trace context to continue
    (``traceparent``; "" when only the times are wanted, for the request log) and, once its
    batch ran, how long it queued and how long the batch computed (-1 = not known)."""

    __slots__ = ("traceparent", "parent", "queue_ns", "compute_ns")

    def __init__(self, traceparent: str, parent: SpanContext | None = None) -> None:
        self.traceparent = traceparent
        self.parent = parent
        self.queue_ns = -1
        self.compute_ns = -1

    def context(self) -> SpanContext | None:
        """The parent of its spans: in-process the server span's, else parsed once."""
        if self.parent is None and self.traceparent:
            self.parent = tracing.parse_traceparent(self.traceparent)
        return self.parent

    def received(self, future: asyncio.Future[Tensors]) -> None:
        """Take the times an executor's answer carries (:class:`TimedOutputs`)."""
        if future.cancelled() or future.exception() is not None:
            return
        answer = future.result()
        if isinstance(answer, TimedOutputs):
            self.queue_ns, self.compute_ns = answer.queue_ns, answer.compute_ns


class TimedOutputs(dict[str, Array]):
    """A request's outputs with its queue and compute times: what the executor answers a
    worker that sent a trace (``SubmitCall.trace`` not None)."""

    __slots__ = ("queue_ns", "compute_ns")

    def __init__(self, outputs: Tensors, queue_ns: int, compute_ns: int) -> None:
        super().__init__(outputs)
        self.queue_ns = queue_ns
        self.compute_ns = compute_ns


def timed(future: asyncio.Future[Tensors], timing: Timing) -> asyncio.Future[Tensors]:
    """``future``'s outcome, its outputs as :class:`TimedOutputs` with ``timing``'s times."""
    answer: asyncio.Future[Tensors] = asyncio.get_running_loop().create_future()

    def done(ran: asyncio.Future[Tensors]) -> None:
        if ran.cancelled():
            answer.cancel()
        elif (error := ran.exception()) is not None:
            answer.set_exception(error)
        else:
            answer.set_result(TimedOutputs(ran.result(), timing.queue_ns, timing.compute_ns))

    future.add_done_callback(done)
    return answer


class Queued(Protocol):
    """A request in a batch, as the batcher holds it."""

    timing: Timing | None
    enqueued_ns: int
    rows: int


class Versioned(Protocol):
    """The model version a batch runs (``ModelVersion``)."""

    name: str
    version: str


def watch_batch(model: Versioned, batch: Sequence[Queued], started: int) -> BatchWatch | None:
    """What the batch about to run notes for its observed requests (traced or logged); None
    when it has none."""
    timings = [(pending.timing, pending.enqueued_ns) for pending in batch if pending.timing]
    if not timings:
        return None
    rows = sum(pending.rows for pending in batch)
    return BatchWatch(model.name, model.version, rows, len(batch), timings, started)


class BatchWatch:
    """One batch: its compute span (when a request in it is traced) and every observed
    request's queue and compute times."""

    def __init__(
        self,
        model: str,
        version: str,
        rows: int,
        requests: int,
        timings: list[tuple[Timing, int]],
        started: int,
    ) -> None:
        self.timings = timings
        self.started = started
        self.start_ns = tracing.epoch_ns(started)
        self.span: SpanContext | None = None
        # one parent per traced request (a text request's items share theirs)
        parents = {part.traceparent: part.context() for part, _ in timings if part.traceparent}
        self.parents = [parent for parent in parents.values() if parent is not None]
        if self.parents and tracing.ENABLED:
            self.span = tracing.child_of(self.parents[0])
            self.attributes: tracing.Attributes = {
                tracing.MODEL: model,
                tracing.MODEL_VERSION: version,
                tracing.BATCH_ROWS: rows,
                tracing.BATCH_REQUESTS: requests,
            }

    async def run(self, work: Awaitable[T]) -> T:
        """Await the backend with the compute span current (its context goes on to Triton)."""
        if self.span is None:
            return await work
        token = tracing.use(self.span)
        try:
            return await work
        except Exception as exc:
            self.finish(time.perf_counter_ns(), f"{type(exc).__name__}: {exc}")
            raise
        finally:
            tracing.release(token)

    def finish(self, finished: int, error: str | None = None) -> None:
        """The batch ended at ``finished`` (perf ns): note the times, record the spans."""
        compute_ns = finished - self.started
        for part, enqueued in self.timings:
            part.queue_ns, part.compute_ns = max(self.started - enqueued, 0), compute_ns
        span, self.span = self.span, None
        if span is None:
            return
        start_ns = self.start_ns
        for part, _ in self.timings:
            parent = part.context()
            if parent is not None:
                queued = start_ns - part.queue_ns
                wait = tracing.child_of(parent)
                tracing.record("queue wait", wait, parent, queued, start_ns, links=[span])
        attributes = self.attributes
        if error is not None:
            attributes = {**attributes, "error.type": error.split(":")[0]}
        end_ns = start_ns + compute_ns
        parents = self.parents
        tracing.record(
            "compute", span, parents[0], start_ns, end_ns, attributes, parents[1:], error=error
        )
