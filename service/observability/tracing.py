"""OpenTelemetry traces: the OTLP exporter, the spans of a request, W3C trace context.

Tracing is off unless an endpoint is set (``--otlp-endpoint``, or the standard
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_ENDPOINT``). Off, the SDK is not
imported and nothing here runs per request: callers look at :data:`ENABLED` (through
``service.observability.requestlog.ACTIVE``) before they ask for anything. On, each process
(the single one, or every worker and the executor of ``--workers N``) exports its own spans
through the SDK's ``BatchSpanProcessor`` (``OTEL_BSP_*`` tune it) and OTLP exporter, sampled by
the SDK's parent-based sampler at ``--trace-rate``.

Every span is recorded once its end is known (:func:`record`), with its parent and times
given: the steps of a request are timed where they run and become finished spans
(``ReadableSpan``) handed straight to the processor: the SDK's live ``Span`` objects cost 12-30
µs each on the request path (locks, limits, a sampler call per span), 4-6 times a request. Only a
batch's compute span is "current" while the backend runs it (:func:`use`), so that
:func:`outgoing_headers` can hand its context to Triton.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from service import __version__
from service.settings import Settings

if TYPE_CHECKING:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.sdk.trace.sampling import Sampler
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope

Attributes = Mapping[str, str | bool | int | float]

# The gateway's own span (and resource) attributes, each named once here; OpenTelemetry's
# semantic conventions name the rest (``http.*``, ``rpc.*``, ``error.type``...).
MODEL = "infergate.model"
MODEL_VERSION = "infergate.model_version"
ROWS = "infergate.rows"  # the request's batch size
CACHE = "infergate.cache"  # hit, miss or partial
CACHE_HIT = "infergate.cache.hit"  # of one cache lookup
ERROR = "infergate.error"  # the message a failed request got
TEXTS = "infergate.texts"  # texts one tokenize span encoded
BATCH_ROWS = "infergate.batch.rows"
BATCH_REQUESTS = "infergate.batch.requests"
PROCESS = "infergate.process"  # resource: worker-N or executor under --workers
ATTRIBUTES = frozenset((MODEL, MODEL_VERSION, ROWS, CACHE, CACHE_HIT, ERROR, TEXTS))
ATTRIBUTES |= {BATCH_ROWS, BATCH_REQUESTS, PROCESS}

#: spans are made and exported (set by :func:`configure`)
ENABLED = False
PROTOCOLS = ("grpc", "http/protobuf")
SERVER = SpanKind.SERVER
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_PROPAGATOR = TraceContextTextMapPropagator()


_UNSET = Status(StatusCode.UNSET)


class _Pipeline:
    """The SDK parts one process exports through."""

    def __init__(
        self,
        processor: SpanProcessor,
        sampler: Sampler,
        resource: Resource,
        scope: InstrumentationScope,
        span: type[ReadableSpan],
    ) -> None:
        from opentelemetry.sdk.trace.sampling import Decision

        self.processor = processor
        self.sampler = sampler
        self.resource = resource
        self.scope = scope
        self.span = span
        self.sampled = Decision.RECORD_AND_SAMPLE


_pipeline: _Pipeline | None = None


def destination(
    settings: Settings, environ: Mapping[str, str] = os.environ
) -> tuple[str | None, str] | None:
    """(endpoint, protocol) of the exporter, or None when tracing is off. The endpoint is None
    when only the standard variables name one: the exporter then reads them itself."""
    protocol = (
        settings.otlp_protocol
        or environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "grpc"
    )
    if protocol not in PROTOCOLS:
        choices = " or ".join(PROTOCOLS)
        raise ValueError(f"OTLP protocol '{protocol}' is not supported: use {choices}")
    endpoint = settings.otlp_endpoint
    if not endpoint:
        standard = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
        return (None, protocol) if any(environ.get(name) for name in standard) else None
    if protocol == "http/protobuf" and not urlparse(endpoint).path.endswith("/v1/traces"):
        endpoint = endpoint.rstrip("/") + "/v1/traces"  # a collector's base URL, as OTLP has it
    return endpoint, protocol


def configure(settings: Settings, role: str = "") -> bool:
    """Start exporting this process's spans when an endpoint is set; returns whether it is.
    ``role``: the process's part under ``--workers N`` (``executor``, ``worker-1``...)."""
    global ENABLED, _pipeline
    target = destination(settings)
    if target is None:
        return False
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope

    _pipeline = _Pipeline(
        BatchSpanProcessor(_exporter(*target)),
        ParentBased(TraceIdRatioBased(settings.trace_rate)),
        _resource(role),
        InstrumentationScope("infergate", __version__),
        ReadableSpan,
    )
    _quiet_drops()
    ENABLED = True
    return True


def _exporter(endpoint: str | None, protocol: str) -> SpanExporter:
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter(endpoint=endpoint)  # http:// means plaintext
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter as HTTPSpanExporter,
    )

    return HTTPSpanExporter(endpoint=endpoint)


def _resource(role: str) -> Resource:
    """``service.name`` from OTEL_SERVICE_NAME (or OTEL_RESOURCE_ATTRIBUTES), else infergate."""
    from opentelemetry.sdk.resources import Resource

    attributes: dict[str, str | int] = {"service.version": __version__, "process.pid": os.getpid()}
    if role:
        attributes[PROCESS] = role
    resource = Resource.create(attributes)
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": "infergate"}))
    return resource


class _EveryTenSeconds(logging.Filter):
    """The SDK warns for every span a full queue drops: under overload, once in 10 s."""

    def __init__(self) -> None:
        super().__init__()
        self.last = 0.0

    def filter(self, record: logging.LogRecord) -> bool:
        if "dropping" not in record.getMessage():
            return True
        now = time.monotonic()
        if now - self.last < 10.0:
            return False
        self.last = now
        record.msg += " (OTEL_BSP_MAX_QUEUE_SIZE, or a lower --trace-rate; said once in 10 s)"
        return True


def _quiet_drops() -> None:
    logger = logging.getLogger("opentelemetry.sdk._shared_internal")
    if not any(isinstance(one, _EveryTenSeconds) for one in logger.filters):
        logger.addFilter(_EveryTenSeconds())


def flush(timeout_ms: int = 30_000) -> bool:
    """Export every recorded span now (tests; shutdown does it too)."""
    return _pipeline.processor.force_flush(timeout_ms) if _pipeline is not None else True


def shutdown() -> None:
    """Export what is left and stop: at process exit (tracing is off afterwards)."""
    global ENABLED, _pipeline
    pipeline, ENABLED, _pipeline = _pipeline, False, None
    if pipeline is not None:
        pipeline.processor.shutdown()


# -- trace context ---------------------------------------------------------------------------
def server_context(
    name: str, traceparent: str | None, tracestate: str | None, attributes: Attributes
) -> tuple[SpanContext, SpanContext | None] | None:
    """The context of a new server span continuing the caller's W3C trace context (a malformed
    one is ignored), and its parent's; None when the sampler leaves the request out."""
    assert _pipeline is not None, "tracing is not configured"
    parent_context, parent = None, None
    if traceparent:
        carrier = {"traceparent": traceparent}
        if tracestate:
            carrier["tracestate"] = tracestate
        parent_context = _PROPAGATOR.extract(carrier)
        found = trace.get_current_span(parent_context).get_span_context()
        parent = found if found.is_valid else None
    trace_id = parent.trace_id if parent is not None else _trace_id()
    sampling = _pipeline.sampler.should_sample(parent_context, trace_id, name, SERVER, attributes)
    if sampling.decision is not _pipeline.sampled:
        return None
    own = SpanContext(trace_id, _span_id(), False, _SAMPLED, sampling.trace_state)
    return own, parent


def child_of(parent: SpanContext) -> SpanContext:
    """A new span's context in ``parent``'s trace."""
    return SpanContext(parent.trace_id, _span_id(), False, parent.trace_flags, parent.trace_state)


def parse_traceparent(traceparent: str) -> SpanContext | None:
    """The span context a ``traceparent`` names (what crosses to the executor)."""
    found = trace.get_current_span(_PROPAGATOR.extract({"traceparent": traceparent}))
    context = found.get_span_context()
    return context if context.is_valid else None


def traceparent_of(context: SpanContext) -> str:
    """``00-<trace id>-<span id>-<flags>``: the context to hand on, as a W3C header value."""
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


def trace_id_of(context: SpanContext) -> str:
    return f"{context.trace_id:032x}"


def _trace_id() -> int:
    trace_id = random.getrandbits(128)
    return trace_id or _trace_id()


def _span_id() -> int:
    span_id = random.getrandbits(64)
    return span_id or _span_id()


def outgoing_headers() -> dict[str, str] | None:
    """``traceparent`` (and ``tracestate``) of the span current in this task, for a call to
    another server (Triton); None when tracing is off or no span is current."""
    if not ENABLED or not trace.get_current_span().get_span_context().is_valid:
        return None
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return carrier


def use(context: SpanContext) -> object:
    """Make the span of ``context`` current in this task (for :func:`outgoing_headers`); undo
    with :func:`release`."""
    return otel_context.attach(trace.set_span_in_context(NonRecordingSpan(context)))


def release(token: object) -> None:
    otel_context.detach(token)  # type: ignore[arg-type]


# -- spans -----------------------------------------------------------------------------------
def record(
    name: str,
    context: SpanContext,
    parent: SpanContext | None,
    start_ns: int,
    end_ns: int,
    attributes: Attributes | None = None,
    links: Sequence[SpanContext] = (),
    kind: SpanKind = SpanKind.INTERNAL,
    error: str | None = None,
) -> None:
    """A finished span, from ``start_ns`` to ``end_ns`` (epoch ns), to export. ``links``: the
    spans it relates to (other requests of a batch, the batch); ``error``: it failed, so."""
    pipeline = _pipeline
    if pipeline is None:  # shut down meanwhile (the process is stopping)
        return
    span = pipeline.span(
        name,
        context,
        parent,
        pipeline.resource,
        dict(attributes) if attributes else None,
        links=[Link(link) for link in links],
        kind=kind,
        status=_UNSET if error is None else Status(StatusCode.ERROR, error),
        start_time=start_ns,
        end_time=end_ns,
        instrumentation_scope=pipeline.scope,
    )
    pipeline.processor.on_end(span)


def epoch_ns(perf_ns: int) -> int:
    """A ``time.perf_counter_ns()`` reading (what the gateway times with) as epoch ns."""
    return time.time_ns() - (time.perf_counter_ns() - perf_ns)
