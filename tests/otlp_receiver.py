"""A real OTLP trace receiver for tests: opentelemetry-proto's ``TraceService`` on a gRPC server
(and the same over OTLP/HTTP, ``POST /v1/traces``, protobuf or JSON), on ports the OS picks.

It keeps every span it is sent, flattened with its resource's attributes, so a test can wait
(``tests.helpers.wait_until``) for the spans of one trace and look at their parents, links and
attributes.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import pytest
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span


def _value(value: AnyValue) -> object:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


def attributes(pairs: list[KeyValue]) -> dict[str, object]:
    return {pair.key: _value(pair.value) for pair in pairs}


@dataclass
class ReceivedSpan:
    """One exported span, as plain values (ids in hex, as in a traceparent)."""

    name: str
    trace_id: str
    span_id: str
    parent_id: str  # "" for a root span
    kind: int  # Span.SpanKind
    attributes: dict[str, object]
    resource: dict[str, object]
    links: list[tuple[str, str]]  # (trace id, span id) of each link
    status_code: int  # Status.StatusCode: 0 unset, 1 ok, 2 error
    start_ns: int
    end_ns: int


@dataclass
class Receiver:
    grpc_port: int = 0
    http_port: int = 0
    exports: int = 0  # export calls received
    spans: list[ReceivedSpan] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def grpc_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.grpc_port}"

    @property
    def http_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def take(self, request: trace_service_pb2.ExportTraceServiceRequest) -> None:
        received = []
        for resource_spans in request.resource_spans:
            resource = attributes(list(resource_spans.resource.attributes))
            for scope_spans in resource_spans.scope_spans:
                received += [_flatten(span, resource) for span in scope_spans.spans]
        with self._lock:
            self.exports += 1
            self.spans += received

    def trace(self, trace_id: str) -> list[ReceivedSpan]:
        with self._lock:
            return [span for span in self.spans if span.trace_id == trace_id]

    def named(self, trace_id: str, name: str) -> list[ReceivedSpan]:
        return [span for span in self.trace(trace_id) if span.name == name]


def _flatten(span: Span, resource: dict[str, object]) -> ReceivedSpan:
    return ReceivedSpan(
        span.name,
        span.trace_id.hex(),
        span.span_id.hex(),
        span.parent_span_id.hex(),
        int(span.kind),
        attributes(list(span.attributes)),
        resource,
        [(link.trace_id.hex(), link.span_id.hex()) for link in span.links],
        int(span.status.code),
        span.start_time_unix_nano,
        span.end_time_unix_nano,
    )


class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):  # type: ignore[misc]
    def __init__(self, receiver: Receiver) -> None:
        self.receiver = receiver

    def Export(self, request, context):  # noqa: N802 - the proto's name
        self.receiver.take(request)
        return trace_service_pb2.ExportTraceServiceResponse()


def _parse(body: bytes, content_type: str) -> trace_service_pb2.ExportTraceServiceRequest:
    """OTLP/HTTP in protobuf (the Python SDK) or JSON (Triton's opentelemetry-cpp), where ids
    are hex, not the base64 of protobuf's JSON mapping."""
    request = trace_service_pb2.ExportTraceServiceRequest()
    if "json" not in content_type:
        request.ParseFromString(body)
        return request
    data = json.loads(body)
    for resource_spans in data.get("resourceSpans", []):
        for scope_spans in resource_spans.get("scopeSpans", []):
            for span in scope_spans.get("spans", []):
                for holder in (span, *span.get("links", [])):
                    for name in ("traceId", "spanId", "parentSpanId"):
                        if holder.get(name):
                            holder[name] = base64.b64encode(bytes.fromhex(holder[name])).decode()
    return json_format.ParseDict(data, request, ignore_unknown_fields=True)


def _http_handler(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            if self.path != "/v1/traces":
                self.send_response(404)
                self.end_headers()
                return
            receiver.take(_parse(body, self.headers.get("content-type", "")))
            answer = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format: str, *args: object) -> None:
            return None

    return Handler


def start_receiver(grpc_address: str = "127.0.0.1:0") -> tuple[Receiver, grpc.Server]:
    """A receiver listening on ``grpc_address`` (gRPC); stop the server it returns."""
    receiver = Receiver()
    server = grpc.server(ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_TraceService(receiver), server)
    receiver.grpc_port = server.add_insecure_port(grpc_address)
    server.start()
    return receiver, server


@pytest.fixture(scope="module")
def otlp() -> Iterator[Receiver]:
    """A receiver over gRPC and HTTP for the tests of one module."""
    receiver, server = start_receiver()
    http = ThreadingHTTPServer(("127.0.0.1", 0), _http_handler(receiver))
    receiver.http_port = http.server_address[1]
    thread = threading.Thread(target=http.serve_forever, daemon=True)
    thread.start()
    yield receiver
    http.shutdown()
    http.server_close()
    server.stop(grace=None)
