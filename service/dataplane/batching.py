"""Dynamic batcher: one per model version, the only code that touches its queue.

A request enqueues itself with a future; one task drains the queue into a batch when the backend
has a free slot: up to ``max_batch_size`` rows, a preferred batch size, or once the oldest request
has waited ``max_queue_delay_microseconds``. An idle backend gets work at once, so batching costs
no latency when there is nothing to batch with. Only requests with identical non-batch shapes share
a batch, except inputs the config marks paddable, which are zero-padded to the longest.

With ``infergate.max_batch_tokens`` set, a batch also stays within that many padded tokens (rows x
longest sequence): after the oldest request come the queued ones of the nearest lengths, so
short texts do not pay for a long one's padding.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque

from service.dataplane.batches import Outputs, Pending, Sink, merge, split
from service.dataplane.shedding import Figures, QueuePolicy, Shedder, priority_levels
from service.errors import BadRequest, InferenceError, Internal, Overloaded, Timeout, Unavailable
from service.models.version import ModelVersion, Submission
from service.observability import requestlog
from service.observability.statistics import ModelStats
from service.observability.timing import watch_batch
from service.settings import Settings

log = logging.getLogger(__name__)

#: a batch expected to take less than this runs on the event loop's thread: handing it to a
#: thread costs more (a queue, a wake-up, the GIL changing hands twice) than running it
INLINE_BELOW_S = 0.001


class DynamicBatcher:
    """Forms batches for one model version and runs up to ``backend.concurrency`` at once."""

    def __init__(self, model: ModelVersion, stats: ModelStats, settings: Settings) -> None:
        self.model = model
        self.stats = stats
        self.retry_after_s = settings.retry_after_s
        config = model.config.dynamic_batching
        batching = settings.batching and model.batches and model.config.HasField("dynamic_batching")
        #: rows per execution; a non-batching model runs one request at a time
        self.max_rows = model.max_batch_size if batching else 0
        preferred = [size for size in config.preferred_batch_size if 0 < size <= self.max_rows]
        self.target_rows = max(preferred) if preferred else self.max_rows
        self.delay_ns = config.max_queue_delay_microseconds * 1000 if batching else 0
        self.max_tokens = model.max_batch_tokens if batching else 0
        self.default_level, self.policies = priority_levels(config, settings)
        self.queues: list[deque[Pending]] = [deque() for _ in self.policies]
        self.queued = 0
        self.queued_rows = 0
        self.queued_tokens = 0
        self.slots = max(model.backend.concurrency, 1)
        self.in_flight = 0  # batches running
        self.running_requests = 0
        self.running_rows = 0
        self.running_tokens = 0
        #: work is counted in rows x tokens for a model that pads token sequences, else rows
        self.token_units = bool(model.pad_inputs)
        self.shedder = Shedder(
            model.name, self.slots, 2 * max(self.max_rows, 1) * self.slots, settings
        )
        self.wait = self.shedder.wait
        calibration = model.backend.calibration
        #: seconds a batch takes (average), what decides whether it runs inline
        self.batch_s = calibration.seconds if calibration is not None else 1.0
        if calibration is not None:  # the warm-up batch: an estimate from the first request on
            self.wait.seed(calibration.units, calibration.seconds)
        self.closed = False
        self._wakeup = asyncio.Event()
        self._settled = asyncio.Event()  # set whenever requests leave the queue or a batch ends
        self._running: set[asyncio.Task[None]] = set()
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"batcher-{model.name}"
        )

    # -- called by the data plane ---------------------------------------------------------------
    def submit(self, submission: Submission) -> asyncio.Future[Outputs]:
        """Enqueue a validated request; the future resolves to its own rows of the outputs.
        Unless the request was ``admitted`` as a whole already (:meth:`admit`), it is refused
        here when its predicted stay exceeds its budget. Its ``key`` matters only to a remote
        scheduler: in-process, the response cache already coalesced identical requests."""
        future: asyncio.Future[Outputs] = asyncio.get_running_loop().create_future()
        self.enqueue(submission, future)
        return future

    def enqueue(self, submission: Submission, sink: Sink) -> None:
        """:meth:`submit` with the answer going to ``sink`` (the executor's to a worker)."""
        if self.closed:
            raise Unavailable(
                f"model '{self.model.name}' version {self.model.version} is unloading"
            )
        level, policy = self._level(submission.priority)
        queue = self.queues[level - 1]
        if len(queue) >= policy.max_size:
            self.stats.metrics.rejected("queue_full")
            raise Overloaded(
                f"model '{self.model.name}' queue is full ({policy.max_size} requests waiting)",
                retry_after_s=self.retry_after_s,
            )
        rows, tokens = submission.rows, submission.tokens
        if not submission.admitted:
            refused = self.refusal(
                rows,
                self.units(rows, tokens),
                submission.priority,
                submission.timeout_us,
                submission.arrival_ns,
            )
            if refused is not None:
                raise refused
        now = time.perf_counter_ns()
        timeout = policy.timeout(submission.timeout_us)
        deadline = now + timeout * 1000 if timeout else 0
        pending = Pending(
            submission.inputs,
            rows,
            submission.signature,
            sink,
            now,
            deadline,
            submission.client_gone,
            tokens,
            submission.timing,
        )
        queue.append(pending)
        self.queued += 1
        self.queued_rows += rows
        self.queued_tokens += rows * tokens
        self.stats.metrics.queue_depth.set(self.queued)
        if not self._wakeup.is_set():
            self._wakeup.set()

    def units(self, rows: int, tokens: int) -> int:
        """The work of ``rows`` rows of ``tokens`` tokens, as the estimator counts it."""
        return rows * tokens if self.token_units and tokens else rows

    def refusal(
        self, rows: int, units: int, priority: int = 0, timeout_us: int = 0, arrival_ns: int = 0
    ) -> Overloaded | None:
        """The 503 (counted) for a request of ``rows`` rows and ``units`` units that would stay
        past its budget; None when it may wait. ``rows`` 0: only the work already ahead counts
        (a front end asking before it has read the body)."""
        _, policy = self._level(priority)
        ahead = (self.queued_rows + self.running_rows, self._units_ahead())
        budget_us = self.shedder.budget_us(policy, timeout_us)
        refused = self.shedder.refusal(ahead, (rows, units), budget_us, arrival_ns)
        if refused is None:
            return None
        reason, error = refused
        self.stats.metrics.rejected(reason)
        return error

    async def admit(
        self, rows: int, units: int, priority: int = 0, timeout_us: int = 0, arrival_ns: int = 0
    ) -> None:
        """Admit a request of many parts as a whole (counted once); its parts are then
        submitted ``admitted``."""
        refused = self.refusal(rows, units, priority, timeout_us, arrival_ns)
        if refused is not None:
            raise refused

    def figures(self) -> Figures:
        """This queue's state for a front-end worker, which refuses by it before reading."""
        return self.shedder.figures((self.queued_rows + self.running_rows, self._units_ahead()))

    def _units_ahead(self) -> int:
        if self.token_units:
            return self.queued_tokens + self.running_tokens
        return self.queued_rows + self.running_rows

    def _level(self, priority: int) -> tuple[int, QueuePolicy]:
        level = priority or self.default_level
        if not 1 <= level <= len(self.queues):
            raise BadRequest(f"priority {priority} is outside 1..{len(self.queues)}")
        return level, self.policies[level - 1]

    @property
    def pending(self) -> int:
        """Requests queued or running: Triton's nv_inference_pending_request_count."""
        return self.queued + self.running_requests

    async def close(self) -> None:
        """Stop taking requests, finish the queued and running ones, then stop the loop."""
        self.closed = True
        while self.queued or self.in_flight:
            self._settled.clear()
            await self._settled.wait()
        self._task.cancel()

    # -- the loop -------------------------------------------------------------------------------
    async def _run(self) -> None:
        wakeup = self._wakeup
        while True:
            while not self.queued or self.in_flight >= self.slots:
                wakeup.clear()
                await wakeup.wait()
            if self.in_flight and self.delay_ns and self.queued_rows < self.target_rows:
                await self._wait_for_rows()
            batch = self._take()
            self._settled.set()  # what was taken (or dropped) left the queue
            if batch:
                self.in_flight += 1
                self.running_requests += len(batch)
                self.running_rows += sum(pending.rows for pending in batch)
                self.running_tokens += sum(pending.rows * pending.tokens for pending in batch)
                if self._runs_inline():  # on this task: no task, no loop pass of its own
                    await self._execute(batch)
                    continue
                task = asyncio.get_running_loop().create_task(self._execute(batch))
                self._running.add(task)
                task.add_done_callback(self._running.discard)

    def _runs_inline(self) -> bool:
        """The next batch runs on the event loop's thread: its backend can, its batches take
        under :data:`INLINE_BELOW_S`, and it is not traced (a traced one is watched)."""
        backend = self.model.backend
        return not requestlog.ACTIVE and backend.runs_inline and self.batch_s < INLINE_BELOW_S

    async def _wait_for_rows(self) -> None:
        """The backend is busy: let the batch fill up to the target or the oldest's deadline."""
        oldest = min(queue[0].enqueued_ns for queue in self.queues if queue)
        deadline = oldest + self.delay_ns
        while self.queued_rows < self.target_rows and not (
            self.max_tokens and self.queued_tokens >= self.max_tokens
        ):
            remaining = deadline - time.perf_counter_ns()
            if remaining <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining / 1e9)
            except TimeoutError:
                return

    def _take(self) -> list[Pending]:
        """Pop the oldest live request of the highest priority and every compatible one after it."""
        if self.max_tokens and self.max_rows:
            return self._take_by_tokens()
        now = time.perf_counter_ns()
        batch: list[Pending] = []
        rows = 0
        signature: tuple[object, ...] | None = None
        for queue in self.queues:
            skipped: list[Pending] = []
            while queue:
                pending = queue.popleft()
                if not self._live(pending, now):
                    continue
                if signature is None:
                    signature = pending.signature
                elif pending.signature != signature or rows + pending.rows > self.max_rows:
                    skipped.append(pending)
                    if rows >= self.max_rows:
                        break
                    continue
                self._dequeued(pending)
                batch.append(pending)
                rows += pending.rows
                if rows >= self.max_rows:
                    break
            queue.extendleft(reversed(skipped))
            if rows >= self.max_rows and batch:
                break
        self.stats.metrics.queue_depth.set(self.queued)
        return batch

    def _take_by_tokens(self) -> list[Pending]:
        """The oldest live request of the highest priority, then compatible ones of the nearest
        lengths while the rows fit ``max_rows`` and the padded tokens fit ``max_tokens``."""
        now = time.perf_counter_ns()
        batch: list[Pending] = []
        for queue in self.queues:
            live = [pending for pending in queue if self._live(pending, now)]
            queue.clear()
            if not live:
                continue
            first = live[0]
            rows, longest = first.rows, first.tokens
            batch.append(first)
            nearest = sorted(
                (p for p in live[1:] if p.signature == first.signature),
                key=lambda p: abs(p.tokens - first.tokens),
            )
            for pending in nearest:
                widest = max(longest, pending.tokens)
                if rows + pending.rows > self.max_rows:
                    continue
                if (rows + pending.rows) * widest > self.max_tokens:
                    continue
                batch.append(pending)
                rows, longest = rows + pending.rows, widest
            chosen = {id(pending) for pending in batch}
            queue.extend(pending for pending in live if id(pending) not in chosen)
            break
        for pending in batch:
            self._dequeued(pending)
        self.stats.metrics.queue_depth.set(self.queued)
        return batch

    def _live(self, pending: Pending, now: int) -> bool:
        """False (after failing its future and dequeuing it) for a request that must not run."""
        if pending.future.done() or (pending.client_gone and pending.client_gone()):
            # the client hung up (or its task was cancelled): run nothing for it
            self._dequeued(pending)
            self.stats.metrics.rejected("cancelled")
            if not pending.future.done():
                pending.future.set_exception(
                    BadRequest("client disconnected before its request ran")
                )
            return False
        if pending.deadline_ns and now > pending.deadline_ns:
            self._dequeued(pending)
            self.stats.metrics.rejected("timeout")
            pending.future.set_exception(Timeout("request timed out in the queue"))
            return False
        return True

    def _dequeued(self, pending: Pending) -> None:
        self.queued -= 1
        self.queued_rows -= pending.rows
        self.queued_tokens -= pending.rows * pending.tokens

    async def _execute(self, batch: list[Pending]) -> None:
        try:
            await self._run_batch(batch)
        except Exception as exc:
            if len(batch) > 1 and not isinstance(exc, Unavailable | Timeout):
                # One bad request must not fail the others: run each alone to find it.
                log.warning("batch of %d failed (%s); running its requests alone", len(batch), exc)
                for pending in batch:
                    if pending.future.done():
                        continue
                    try:
                        await self._run_batch([pending])
                    except Exception as alone:
                        pending.future.set_exception(self._client_error(alone))
            else:
                error = self._client_error(exc)
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(error)
        finally:
            self.in_flight -= 1
            self.running_requests -= len(batch)
            self.running_rows -= sum(pending.rows for pending in batch)
            self.running_tokens -= sum(pending.rows * pending.tokens for pending in batch)
            self.wait.publish(self._units_ahead())
            self._wakeup.set()
            self._settled.set()

    def _client_error(self, exc: Exception) -> InferenceError:
        if isinstance(exc, InferenceError):
            return exc
        log.error("model %s version %s failed: %s", self.model.name, self.model.version, exc)
        return Internal(f"model execution failed: {exc}")

    async def _run_batch(self, batch: list[Pending]) -> None:
        model = self.model
        started = time.perf_counter_ns()
        watch = watch_batch(model, batch, started) if requestlog.ACTIVE else None
        mark = self.wait.started()
        inputs = merge(batch, self.model.pad_inputs, self.model.pad_values)
        merged = time.perf_counter_ns()
        backend = model.backend
        if self._runs_inline():  # never traced (watched) then
            outputs = backend.run(inputs, model.output_names)
        else:
            execution = backend.execute(inputs, model.output_names)
            outputs = await (execution if watch is None else watch.run(execution))
        executed = time.perf_counter_ns()
        self.batch_s += 0.2 * ((executed - merged) / 1e9 - self.batch_s)
        if watch is not None:  # its requests' times are noted before they are answered
            watch.finish(executed)
        split(batch, outputs)
        finished = time.perf_counter_ns()
        rows = sum(p.rows for p in batch) if model.batches else 1
        units = sum(self.units(p.rows, p.tokens) for p in batch) if model.batches else 1
        self.wait.finished(mark, units)
        input_ns, infer_ns, output_ns = merged - started, executed - merged, finished - executed
        self.stats.record_execution(rows, input_ns, infer_ns, output_ns)
        queue_ns = sum(started - p.enqueued_ns for p in batch) // len(batch)
        self.stats.record_request(queue_ns, input_ns, infer_ns, output_ns, len(batch))
