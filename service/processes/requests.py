"""The executor's side of request frames (``--workers N``): enqueue, coalesce, answer.

A ``requests`` frame from a worker is enqueued in one pass: each request goes straight into its
model's batcher with an :class:`Answer` as its sink (no future, no task, no reply of its own).
Identical requests (equal cache keys) from any worker share one execution: the first one's sink
becomes a :class:`Flight` the others join, each answered as a cache hit. Everything answered in
one pass of the executor's loop (every batch that ended) leaves as one ``answers`` frame per
worker, with the queue figures of the models it answered for. A worker's ``cancel`` frame marks
its requests gone, so the batcher drops them before they run; a lost worker's requests are all
gone. Without Redis the executor keeps the one result cache of every worker, written the moment
an execution ends, so an identical request arriving right after is a hit.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import cast

from service.cache import codec
from service.cache.stores import LocalStore
from service.dataplane.batches import Outputs
from service.dataplane.batching import DynamicBatcher
from service.dataplane.shedding import Figures
from service.errors import as_inference_error
from service.models.repository import RepositoryView
from service.models.version import Submission
from service.observability.metrics import FRAME_REQUESTS
from service.observability.timing import TimedOutputs, Timing
from service.processes.ipc import Channel, error_payload
from service.processes.wire import RequestEntry
from service.settings import Settings


@dataclass(slots=True, eq=False)
class Worker:
    """What the executor keeps of one worker's connection."""

    channel: Channel
    outstanding: set[int] = field(default_factory=set)  # request ids not answered yet
    cancelled: set[int] = field(default_factory=set)
    lost: bool = False
    answers: list[tuple[int, Outputs, bool]] = field(default_factory=list)
    failures: list[tuple[int, tuple[str, str, int | None]]] = field(default_factory=list)
    models: set[DynamicBatcher] = field(default_factory=set)


class Answer:
    """One worker's request: the sink its batcher resolves, answered in the next frame."""

    __slots__ = ("desk", "worker", "request_id", "batcher", "shared", "answered", "timing")

    def __init__(
        self, desk: Desk, worker: Worker, request_id: int, batcher: DynamicBatcher | None
    ) -> None:
        self.desk = desk
        self.worker = worker
        self.request_id = request_id
        self.batcher = batcher
        self.shared = False  # joined another request's execution: a cache hit for its worker
        self.answered = False
        self.timing: Timing | None = None  # traced or logged: its times go back with it

    def done(self) -> bool:
        return self.answered

    def gone(self) -> bool:
        """Its client hung up or its worker cancelled it (or the worker is gone)."""
        return self.worker.lost or self.request_id in self.worker.cancelled

    def set_result(self, result: Outputs, /) -> None:
        self._settle()
        timing = self.timing
        if timing is not None:
            result = TimedOutputs(result, timing.queue_ns, timing.compute_ns)
        self.worker.answers.append((self.request_id, result, self.shared))

    def set_exception(self, exception: BaseException, /) -> None:
        self._settle()
        self.worker.failures.append((self.request_id, error_payload(exception)))

    def _settle(self) -> None:
        self.answered = True
        worker = self.worker
        worker.outstanding.discard(self.request_id)
        worker.cancelled.discard(self.request_id)
        if self.batcher is not None:
            worker.models.add(self.batcher)
        self.desk.due(worker)


class Flight:
    """Identical requests sharing one execution: the batcher's sink for all of them."""

    __slots__ = ("desk", "key", "members", "answered")

    def __init__(self, desk: Desk, key: str, first: Answer) -> None:
        self.desk = desk
        self.key = key
        self.members = [first]
        self.answered = False

    def done(self) -> bool:
        return self.answered

    def gone(self) -> bool:
        return all(member.gone() for member in self.members)

    def join(self, member: Answer) -> None:
        member.shared = True
        self.members.append(member)

    def set_result(self, result: Outputs, /) -> None:
        self.answered = True
        self.desk.landed(self, result)
        for member in self.members:
            member.set_result(result)

    def set_exception(self, exception: BaseException, /) -> None:
        self.answered = True
        self.desk.landed(self, None)
        for member in self.members:
            member.set_exception(exception)


class Desk:
    """Request frames in, answer frames out, for every worker of one executor."""

    def __init__(
        self, repository: RepositoryView, settings: Settings, results: LocalStore | None
    ) -> None:
        self.repository = repository
        self.settings = settings
        self.results = results
        self.workers: dict[Channel, Worker] = {}
        self.flights: dict[str, Flight] = {}
        self._due: set[Worker] = set()
        self._flush_due = False

    def connected(self, channel: Channel) -> None:
        self.workers[channel] = Worker(channel)

    def lost(self, channel: Channel) -> None:
        worker = self.workers.pop(channel, None)
        if worker is not None:
            worker.lost = True
            self._due.discard(worker)

    def cancel(self, channel: Channel, request_ids: list[int]) -> None:
        worker = self.workers.get(channel)
        if worker is not None:
            worker.cancelled.update(worker.outstanding.intersection(request_ids))

    def requests(self, channel: Channel, entries: list[tuple[object, ...]]) -> None:
        """Enqueue a frame's requests; refusals are answered in the next frame."""
        worker = self.workers.get(channel)
        if worker is None:
            return
        FRAME_REQUESTS.observe(len(entries))
        use = self.repository.use  # marks the model used (on_demand evicts the least recent)
        for raw in entries:
            entry = RequestEntry._make(raw)
            answer = Answer(self, worker, entry.request_id, None)
            worker.outstanding.add(entry.request_id)
            try:
                batcher = cast(DynamicBatcher, use(entry.model, entry.version).scheduler)
                answer.batcher = batcher
                self._enqueue(batcher, entry, answer)
            except Exception as exc:  # answered, whatever it was: no request of the frame hangs
                answer.set_exception(as_inference_error(exc))

    def _enqueue(self, batcher: DynamicBatcher, entry: RequestEntry, answer: Answer) -> None:
        key = entry.key
        sink: Answer | Flight = answer
        if key is not None:
            flight = self.flights.get(key)
            if flight is not None and not flight.answered:
                flight.join(answer)
                return
            sink = Flight(self, key, answer)
        timing = None if entry.trace is None else Timing(entry.trace)
        answer.timing = timing
        submission = Submission(
            entry.inputs,
            entry.rows,
            entry.signature,
            entry.priority,
            entry.timeout_us,
            sink.gone,
            entry.tokens,
            None,
            entry.arrival_ns,
            entry.admitted,
            timing,
        )
        batcher.enqueue(submission, sink)
        if isinstance(sink, Flight):
            self.flights[sink.key] = sink

    def landed(self, flight: Flight, result: Outputs | None) -> None:
        """A shared execution ended: forget the flight; keep its result for every worker."""
        if self.flights.get(flight.key) is flight:
            del self.flights[flight.key]
        if self.results is None or result is None:
            return
        try:
            value = codec.encode(result)
        except codec.Unencodable:
            return
        if len(value) <= self.settings.cache_max_entry_bytes:
            self.results.set_now(flight.key, value, self.settings.cache_ttl_s)

    # -- answers out ------------------------------------------------------------------------
    def due(self, worker: Worker) -> None:
        if worker.lost:
            return
        self._due.add(worker)
        if not self._flush_due:
            self._flush_due = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        """One ``answers`` frame per worker with anything answered in this pass."""
        self._flush_due = False
        due, self._due = self._due, set()
        for worker in due:
            figures: dict[tuple[str, str], Figures] = {
                (b.model.name, b.model.version): b.figures() for b in worker.models
            }
            payload = (worker.answers, worker.failures, figures)
            worker.answers, worker.failures, worker.models = [], [], set()
            worker.channel.notify("answers", payload)
            worker.channel.flush()
