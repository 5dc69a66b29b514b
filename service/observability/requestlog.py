"""Tracing and the request log as the request path sees them: one record per inference request.

With neither an OTLP endpoint nor ``--request-log``, :data:`ACTIVE` is False and nothing here
runs: every hook on the request path sits behind ``if requestlog.ACTIVE``, so a request makes no
record, span or context. Otherwise a front end opens a :class:`RequestRecord` for each inference
request (:func:`begin`; None for one that is neither traced nor logged) and keeps it in
:data:`CURRENT` while the request runs; the data plane, the tokenizer, the cache and the batcher
note their steps on it through the hooks below; the front end closes it
(:meth:`RequestRecord.finish`): its spans end and its request-log line is written.

The spans of one request, children of its server span (``POST /v2/models/{model}/infer``,
``inference.GRPCInferenceService/ModelInfer``, ...): ``decode`` (reading and decoding the
request, until the data plane takes it), ``tokenize`` (models with a tokenizer), ``cache lookup``
(one per cached part), ``queue wait`` and the batch's ``compute`` (``service.observability.timing``;
with ``--workers`` both come from the executor, which continues the trace it was sent), and
``encode`` (from the data plane's answer to the response).
"""

from __future__ import annotations

import contextlib
import os
import random
import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import grpc
import orjson

from service.observability import tracing
from service.observability.timing import Timing
from service.settings import Settings

if TYPE_CHECKING:
    from opentelemetry.trace import SpanContext

#: tracing or the request log is on in this process (set by :func:`configure`)
ACTIVE = False
#: the record of the request being served (set by the front end, read by the hooks)
CURRENT: ContextVar[RequestRecord | None] = ContextVar("infergate_request", default=None)
_log: RequestLog | None = None


def configure(settings: Settings, role: str = "") -> None:
    """Tracing and the request log of this process (at its start; after the fork)."""
    global ACTIVE, _log
    tracing.configure(settings, role)
    _log = RequestLog(settings.request_log_rate) if settings.request_log else None
    ACTIVE = tracing.ENABLED or _log is not None


def shutdown() -> None:
    """Export the spans still queued; both features are off afterwards."""
    global ACTIVE, _log
    ACTIVE, _log = False, None
    tracing.shutdown()


class RequestLog:
    """JSON lines on a file descriptor (stdout), each one ``write``, so the lines of several
    processes never interleave. ``draw``: the sampling's random numbers (a test's own)."""

    def __init__(self, rate: float, fd: int = 1, draw: Callable[[], float] = random.random) -> None:
        self.rate = rate
        self.fd = fd
        self.draw = draw

    def sampled(self) -> bool:
        return self.rate >= 1.0 or self.draw() < self.rate

    def write(self, entry: dict[str, object]) -> None:
        with contextlib.suppress(OSError):  # a closed stdout loses the log, never the request
            os.write(self.fd, orjson.dumps(entry) + b"\n")


@dataclass(slots=True, eq=False)
class RequestRecord:
    """What is known of one inference request while it is served (clocks: ``start_ns`` epoch,
    the rest ``time.perf_counter_ns()``, as the gateway times everything)."""

    protocol: str  # "http" | "grpc"
    name: str  # its server span's
    route: str  # the HTTP route or gRPC method
    start_ns: int
    started: int
    span: SpanContext | None  # its server span's context, when the request is traced
    parent: SpanContext | None  # the caller's span, from its traceparent
    logged: bool  # the request log writes its line
    trace_id: str | None
    attributes: dict[str, str | bool | int | float] = field(default_factory=dict)
    traceparent: str = ""  # the server span's, handed to the batcher ("" when not traced)
    model: str = ""
    version: str = ""
    key_id: str | None = None
    rows: int | None = None
    entered: int = 0  # the data plane took the request: decoding ended
    left: int = 0  # the data plane answered: encoding began
    answered: int = 0  # the response went out
    hits: int = 0
    misses: int = 0
    parts: list[Timing] = field(default_factory=list)
    status: int = 0  # HTTP status (for gRPC: the HTTP status of its error, 200 when OK)
    grpc_code: grpc.StatusCode | None = None
    error: str | None = None

    def __post_init__(self) -> None:
        if self.span is not None:
            self.traceparent = tracing.traceparent_of(self.span)

    def epoch(self, perf_ns: int) -> int:
        return self.start_ns + (perf_ns - self.started)

    def served(self, rows: int) -> None:
        """The data plane's pass ended with outputs for ``rows`` rows."""
        self.rows, self.left = rows, time.perf_counter_ns()

    def answer(
        self, status: int, grpc_code: grpc.StatusCode | None = None, error: str | None = None
    ) -> None:
        """The outcome, as the response starts (the first call wins)."""
        if not self.answered:
            self.status, self.grpc_code, self.error = status, grpc_code, error
            self.answered = time.perf_counter_ns()

    @property
    def cache(self) -> str | None:
        if self.hits and self.misses:
            return "partial"
        return "hit" if self.hits else "miss" if self.misses else None

    def finish(self) -> None:
        """End the spans and write the log line."""
        answered = self.answered or time.perf_counter_ns()
        if self.span is not None:
            self._end_spans(answered)
        if self.logged and _log is not None:
            _log.write(self.entry(answered))

    def _end_spans(self, answered: int) -> None:
        span = self.span
        assert span is not None
        if self.entered:
            decoded = self.epoch(self.entered)
            tracing.record("decode", tracing.child_of(span), span, self.start_ns, decoded)
        if self.left:
            encoding, sent = self.epoch(self.left), self.epoch(answered)
            tracing.record("encode", tracing.child_of(span), span, encoding, sent)
        attributes = self.attributes
        if self.model:
            attributes[tracing.MODEL] = self.model
        if self.version:
            attributes[tracing.MODEL_VERSION] = self.version
        if self.rows is not None:
            attributes[tracing.ROWS] = self.rows
        if self.cache is not None:
            attributes[tracing.CACHE] = self.cache
        if self.grpc_code is None:
            attributes["http.response.status_code"] = self.status
        else:
            attributes["rpc.grpc.status_code"] = int(self.grpc_code.value[0])
        if self.error is not None:
            attributes[tracing.ERROR] = self.error
        failed = None
        if self.status >= 500:  # the server's fault (a 4xx is the client's)
            code = self.grpc_code.name if self.grpc_code is not None else str(self.status)
            attributes["error.type"] = code
            failed = self.error or code
        end = self.epoch(answered)
        tracing.record(
            self.name,
            span,
            self.parent,
            self.start_ns,
            end,
            attributes,
            kind=tracing.SERVER,
            error=failed,
        )

    def entry(self, answered: int) -> dict[str, object]:
        """The request-log line: what happened, never what was sent."""
        queue = compute = -1
        for part in self.parts:  # a text request's items: the longest
            queue, compute = max(queue, part.queue_ns), max(compute, part.compute_ns)
        entry: dict[str, object] = {
            "time": _iso_time(self.start_ns),
            "trace_id": self.trace_id,
            "key_id": self.key_id,
            "protocol": self.protocol,
            "route": self.route,
            "model": self.model or None,
            "version": self.version or None,
            "status": self.status,
            "rows": self.rows,
            "queue_us": queue // 1000 if queue >= 0 else None,
            "compute_us": compute // 1000 if compute >= 0 else None,
            "cache": self.cache,
            "duration_us": (answered - self.started) // 1000,
        }
        if self.grpc_code is not None:
            entry["grpc_status"] = self.grpc_code.name
        if self.error is not None:
            entry["error"] = self.error
        return entry


_second: tuple[int, str] = (-1, "")


def _iso_time(epoch_ns: int) -> str:
    """``2026-12-02T10:11:12.345678Z`` (the part before the fraction made once a second)."""
    global _second
    second, micros = divmod(epoch_ns // 1000, 1_000_000)
    if _second[0] != second:
        _second = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
    return f"{_second[1]}.{micros:06d}Z"


def begin(
    protocol: str,
    name: str,
    route: str,
    traceparent: str | None,
    tracestate: str | None,
    attributes: tracing.Attributes,
    model: str = "",
) -> RequestRecord | None:
    """A front end starts serving an inference request (for ``model``, as it names it): its
    record, or None when the request is neither traced (tracing off, or not sampled) nor logged
    (log off, or not sampled)."""
    start_ns, started = time.time_ns(), time.perf_counter_ns()
    traced = None
    if tracing.ENABLED:
        traced = tracing.server_context(name, traceparent, tracestate, attributes)
    logged = _log is not None and _log.sampled()
    if traced is None and not logged:
        return None
    span, parent = traced or (None, None)
    trace_id = tracing.trace_id_of(span) if span is not None else _trace_id(traceparent)
    kept = dict(attributes) if span is not None else {}
    return RequestRecord(
        protocol, name, route, start_ns, started, span, parent, logged, trace_id, kept, model=model
    )


def _trace_id(traceparent: str | None) -> str | None:
    """The trace id of a valid W3C ``traceparent``, for the log of an untraced request."""
    context = tracing.parse_traceparent(traceparent) if traceparent else None
    return tracing.trace_id_of(context) if context is not None else None


# -- hooks of the request path (each called only while ACTIVE) ------------------------------
def entered(model: str, version: str) -> RequestRecord | None:
    """The data plane takes the current request for ``model`` ``version``."""
    record = CURRENT.get()
    if record is not None:
        record.model, record.version, record.entered = model, version, time.perf_counter_ns()
    return record


def scheduled() -> Timing | None:
    """A part of the current request goes to a batcher: what it carries there."""
    record = CURRENT.get()
    if record is None:
        return None
    part = Timing(record.traceparent, record.span)
    record.parts.append(part)
    return part


def cached(hit: bool) -> None:
    """A part of the current request was looked up in the cache."""
    record = CURRENT.get()
    if record is not None:
        if hit:
            record.hits += 1
        else:
            record.misses += 1


def step(name: str, started: int, attributes: tracing.Attributes | None = None) -> None:
    """A step of the current request ran from ``started`` (perf ns) until now."""
    record = CURRENT.get()
    if record is not None and (span := record.span) is not None:
        start, end = record.epoch(started), record.epoch(time.perf_counter_ns())
        tracing.record(name, tracing.child_of(span), span, start, end, attributes)
