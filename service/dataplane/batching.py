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
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from tritonclient.grpc import model_config_pb2

from service.dataplane.shedding import WaitEstimator
from service.errors import BadRequest, InferenceError, Internal, Overloaded, Timeout, Unavailable
from service.messages import Array, Tensors
from service.models.version import ModelVersion, Submission
from service.observability import requestlog
from service.observability.statistics import ModelStats
from service.observability.timing import Timing, watch_batch
from service.settings import Settings

log = logging.getLogger(__name__)

Outputs = Tensors


@dataclass(slots=True)
class Pending:
    inputs: Tensors
    rows: int
    signature: tuple[object, ...]
    future: asyncio.Future[Outputs]
    enqueued_ns: int
    deadline_ns: int  # 0 = no deadline
    client_gone: Callable[[], bool] | None = None
    tokens: int = 0  # padded sequence length of each row (token budget; 0 = not counted)
    timing: Timing | None = None  # traced or logged: its times and trace context


@dataclass(slots=True)
class _QueuePolicy:
    max_size: int
    timeout_us: int
    allow_override: bool

    @classmethod
    def from_config(
        cls, policy: model_config_pb2.ModelQueuePolicy, settings: Settings
    ) -> _QueuePolicy:
        return cls(
            max_size=policy.max_queue_size or settings.max_queue_size,
            timeout_us=policy.default_timeout_microseconds
            or int(settings.default_timeout_ms * 1000),
            allow_override=policy.allow_timeout_override or not policy.default_timeout_microseconds,
        )


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
        levels = max(config.priority_levels, 1)
        self.default_level = config.default_priority_level or levels
        self.policies = [
            _QueuePolicy.from_config(
                config.priority_queue_policy.get(level, config.default_queue_policy), settings
            )
            for level in range(1, levels + 1)
        ]
        self.queues: list[deque[Pending]] = [deque() for _ in range(levels)]
        self.queued = 0
        self.queued_rows = 0
        self.queued_tokens = 0
        self.slots = max(model.backend.concurrency, 1)
        self.in_flight = 0  # batches running
        self.running_requests = 0
        self.running_rows = 0
        self.wait = WaitEstimator(model.name, self.slots)
        self.max_wait_us = int(settings.max_queue_wait_ms * 1000)
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
        Its ``key`` matters only to a remote scheduler: in-process, the response cache already
        coalesced identical requests."""
        priority, timeout_us, rows = submission.priority, submission.timeout_us, submission.rows
        if self.closed:
            raise Unavailable(
                f"model '{self.model.name}' version {self.model.version} is unloading"
            )
        level = priority or self.default_level
        if not 1 <= level <= len(self.queues):
            raise BadRequest(f"priority {priority} is outside 1..{len(self.queues)}")
        policy = self.policies[level - 1]
        queue = self.queues[level - 1]
        if len(queue) >= policy.max_size:
            self.stats.metrics.rejected("queue_full")
            raise Overloaded(
                f"model '{self.model.name}' queue is full ({policy.max_size} requests waiting)",
                retry_after_s=self.retry_after_s,
            )
        timeout = timeout_us if (timeout_us and policy.allow_override) else policy.timeout_us
        shed = self.wait.check(
            self.model.name,
            self.queued_rows + self.running_rows,
            timeout_us or timeout or self.max_wait_us,
        )
        if shed is not None:
            self.stats.metrics.rejected("predicted_wait")
            raise shed
        now = time.perf_counter_ns()
        future: asyncio.Future[Outputs] = asyncio.get_running_loop().create_future()
        deadline = now + timeout * 1000 if timeout else 0
        queue.append(
            Pending(
                submission.inputs,
                rows,
                submission.signature,
                future,
                now,
                deadline,
                submission.client_gone,
                submission.tokens,
                submission.timing,
            )
        )
        self.queued += 1
        self.queued_rows += rows
        self.queued_tokens += rows * submission.tokens
        self.stats.metrics.queue_depth.set(self.queued)
        if not self._wakeup.is_set():
            self._wakeup.set()
        return future

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
                task = asyncio.get_running_loop().create_task(self._execute(batch))
                self._running.add(task)
                task.add_done_callback(self._running.discard)

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
            self.wait.publish(self.queued_rows + self.running_rows)
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
        inputs = self._merge(batch)
        merged = time.perf_counter_ns()
        execution = model.backend.execute(inputs, model.output_names)
        outputs = await (execution if watch is None else watch.run(execution))
        executed = time.perf_counter_ns()
        self._split(batch, outputs)
        finished = time.perf_counter_ns()
        if watch is not None:
            watch.finish(finished)
        rows = sum(p.rows for p in batch) if model.batches else 1
        self.wait.finished(mark, rows)
        input_ns, infer_ns, output_ns = merged - started, executed - merged, finished - executed
        self.stats.record_execution(rows, input_ns, infer_ns, output_ns)
        queue_ns = sum(started - p.enqueued_ns for p in batch) // len(batch)
        self.stats.record_request(queue_ns, input_ns, infer_ns, output_ns, len(batch))

    def _merge(self, batch: list[Pending]) -> Tensors:
        if len(batch) == 1:
            return batch[0].inputs
        merged: Tensors = {}
        for name in batch[0].inputs:
            arrays = [pending.inputs[name] for pending in batch]
            if name in self.model.pad_inputs:
                arrays = _pad_to_longest(arrays, self.model.pad_values.get(name, 0))
            merged[name] = np.concatenate(arrays, axis=0)
        return merged

    def _split(self, batch: list[Pending], outputs: Outputs) -> None:
        if len(batch) == 1:
            if not batch[0].future.done():
                batch[0].future.set_result(outputs)
            return
        total = sum(p.rows for p in batch)
        for name, array in outputs.items():
            if array.ndim == 0 or array.shape[0] != total:
                raise Internal(
                    f"output '{name}' has shape {list(array.shape)}; expected {total} rows"
                )
        offset = 0
        for pending in batch:
            end = offset + pending.rows
            if not pending.future.done():
                pending.future.set_result(
                    {name: array[offset:end] for name, array in outputs.items()}
                )
            offset = end


def _pad_to_longest(arrays: list[Array], value: int = 0) -> list[Array]:
    """Pad every non-batch axis to the longest in the batch with ``value`` (token ids with the
    tokenizer's pad id, attention masks with 0)."""
    longest = tuple(max(sizes) for sizes in zip(*(a.shape[1:] for a in arrays)))
    padded = []
    for array in arrays:
        if array.shape[1:] == longest:
            padded.append(array)
            continue
        widths = [(0, 0)] + [(0, want - have) for have, want in zip(array.shape[1:], longest)]
        padded.append(np.pad(array, widths, constant_values=value))
    return padded
