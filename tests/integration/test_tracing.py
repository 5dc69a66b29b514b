"""Traces and the request log of a real ``infergate serve``, received by a real OTLP receiver.

Requests carry a W3C ``traceparent`` over REST and gRPC; the spans the gateway exports must
continue that trace with the expected parents, links and attributes, from the front end to the
executor of ``--workers 2``; with tracing off nothing is exported; the request log's line has
every field and never a tensor. Spans are waited for, never slept for: a span's children end
before it, so once a server span has arrived its children have too.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status
from tritonclient.utils import InferenceServerException

from service.security.keys import create_key
from tests.helpers import Gateway, start_gateway, wait_until
from tests.otlp_receiver import ReceivedSpan, Receiver, otlp, start_receiver  # noqa: F401

REST_SPAN = "POST /v2/models/{model}/infer"
GRPC_SPAN = "inference.GRPCInferenceService/ModelInfer"
STEPS = {"decode", "queue wait", "compute", "encode"}
#: a value no other request sends, to look for in the request log
MARK = 0.8642097
#: the trace ids of every sampled traceparent this module sent
SAMPLED: set[str] = set()


class Trace:
    """A caller's trace: its id and the caller's own span, as a ``traceparent`` names them."""

    def __init__(self, sampled: bool = True) -> None:
        self.trace_id = secrets.token_hex(16)
        self.parent_id = secrets.token_hex(8)
        self.header = f"00-{self.trace_id}-{self.parent_id}-{'01' if sampled else '00'}"
        if sampled:
            SAMPLED.add(self.trace_id)


def digits_body(value: float = 0.5) -> dict[str, object]:
    return {
        "inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [value] * 64}]
    }


def spans(receiver: Receiver, trace: Trace, server: str, steps: set[str]) -> dict[str, list]:
    """The spans of ``trace``, by name, once its ``server`` span and ``steps`` have arrived."""

    def arrived() -> dict[str, list[ReceivedSpan]] | None:
        named: dict[str, list[ReceivedSpan]] = {}
        for span in receiver.trace(trace.trace_id):
            named.setdefault(span.name, []).append(span)
        return named if {server, *steps} <= set(named) else None

    return wait_until(arrived, what=f"spans {server} + {sorted(steps)} of {trace.trace_id}")


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    path = tmp_path_factory.mktemp("keys") / "api-keys.json"
    return path, create_key(path, "tracer", ["infer", "read"])


@pytest.fixture(scope="module")
def traced(example_repo: Path, otlp: Receiver, key: tuple[Path, str]) -> Iterator[Gateway]:  # noqa: F811
    gateway = start_gateway(
        example_repo,
        "--workers",
        "1",
        "--otlp-endpoint",
        otlp.grpc_endpoint,
        "--request-log",
        env={
            "INFERGATE_API_KEYS_FILE": str(key[0]),
            "OTEL_SERVICE_NAME": "gateway-under-test",
            "OTEL_BSP_SCHEDULE_DELAY": "20",
        },
    )
    yield gateway
    gateway.stop()


def bearer(key: tuple[Path, str]) -> dict[str, str]:
    return {"authorization": f"Bearer {key[1]}"}


def test_rest_request_continues_the_callers_trace(
    traced: Gateway,
    otlp: Receiver,  # noqa: F811
    key: tuple[Path, str],
) -> None:
    trace = Trace()
    headers = {"traceparent": trace.header, "tracestate": "caller=1", **bearer(key)}
    response = httpx.post(
        f"{traced.base_url}/v2/models/digits_mlp/infer", json=digits_body(), headers=headers
    )
    assert response.status_code == 200, response.text
    named = spans(otlp, trace, REST_SPAN, STEPS)
    (server,) = named[REST_SPAN]
    assert (server.parent_id, server.kind) == (trace.parent_id, Span.SPAN_KIND_SERVER)
    assert server.resource["service.name"] == "gateway-under-test"
    expected = {
        "http.request.method": "POST",
        "http.route": "/v2/models/{model}/infer",
        "url.path": "/v2/models/digits_mlp/infer",
        "http.response.status_code": 200,
        "infergate.model": "digits_mlp",
        "infergate.model_version": "1",
        "infergate.rows": 1,
    }
    assert expected.items() <= server.attributes.items()
    assert "infergate.cache" not in server.attributes  # digits_mlp has no response cache
    for step in STEPS:
        (span,) = named[step]
        assert span.parent_id == server.span_id, step
    (compute,), (queued,) = named["compute"], named["queue wait"]
    assert queued.links == [(trace.trace_id, compute.span_id)]  # linked to its batch
    assert compute.attributes["infergate.batch.rows"] == 1
    assert compute.attributes["infergate.batch.requests"] == 1


def test_text_request_spans_tokenize_and_the_cache(
    traced: Gateway,
    otlp: Receiver,  # noqa: F811
    key: tuple[Path, str],
) -> None:
    body = {"model": "minilm_embed", "input": [f"tracing {secrets.token_hex(4)}"]}
    first, second = Trace(), Trace()
    for trace in (first, second):  # the same text twice: a miss, then a hit
        headers = {"traceparent": trace.header, **bearer(key)}
        response = httpx.post(f"{traced.base_url}/v1/embeddings", json=body, headers=headers)
        assert response.status_code == 200, response.text
    miss = spans(otlp, first, "POST /v1/embeddings", {"tokenize", "cache lookup", "compute"})
    assert miss["POST /v1/embeddings"][0].attributes["infergate.cache"] == "miss"
    assert miss["cache lookup"][0].attributes["infergate.cache.hit"] is False
    hit = spans(otlp, second, "POST /v1/embeddings", {"tokenize", "cache lookup"})
    assert hit["POST /v1/embeddings"][0].attributes["infergate.cache"] == "hit"
    assert hit["cache lookup"][0].attributes["infergate.cache.hit"] is True
    assert not {"queue wait", "compute"} & set(hit)  # the model did not run for it


def test_grpc_request_continues_the_trace_in_its_metadata(
    traced: Gateway,
    otlp: Receiver,  # noqa: F811
    key: tuple[Path, str],
) -> None:
    trace, failing = Trace(), Trace()
    tensor = grpcclient.InferInput("input", [1, 64], "FP32")
    tensor.set_data_from_numpy(np.full((1, 64), 0.5, np.float32))
    wrong = grpcclient.InferInput("no_such_input", [1, 64], "FP32")
    wrong.set_data_from_numpy(np.full((1, 64), 0.5, np.float32))
    with grpcclient.InferenceServerClient(traced.grpc_url) as client:
        client.infer("digits_mlp", [tensor], headers={"traceparent": trace.header, **bearer(key)})
        with pytest.raises(InferenceServerException):
            client.infer(
                "digits_mlp", [wrong], headers={"traceparent": failing.header, **bearer(key)}
            )
    named = spans(otlp, trace, GRPC_SPAN, STEPS)
    (server,) = named[GRPC_SPAN]
    assert (server.parent_id, server.kind) == (trace.parent_id, Span.SPAN_KIND_SERVER)
    expected = {
        "rpc.system": "grpc",
        "rpc.service": "inference.GRPCInferenceService",
        "rpc.method": "ModelInfer",
        "rpc.grpc.status_code": grpc.StatusCode.OK.value[0],
        "infergate.model": "digits_mlp",
        "infergate.model_version": "1",
        "infergate.rows": 1,
    }
    assert expected.items() <= server.attributes.items()
    assert all(named[step][0].parent_id == server.span_id for step in STEPS)
    (refused,) = spans(otlp, failing, GRPC_SPAN, set())[GRPC_SPAN]
    code = grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert refused.attributes["rpc.grpc.status_code"] == code
    assert "no_such_input" in str(refused.attributes["infergate.error"])
    assert refused.status_code != Status.STATUS_CODE_ERROR  # the client's fault, not the server's


def test_each_request_of_a_grpc_stream_gets_its_server_span(
    traced: Gateway,
    otlp: Receiver,  # noqa: F811
    key: tuple[Path, str],
) -> None:
    trace = Trace()
    results: list[tuple[object, object]] = []
    client = grpcclient.InferenceServerClient(traced.grpc_url)
    client.start_stream(
        lambda result, error: results.append((result, error)),
        headers={"traceparent": trace.header, **bearer(key)},
    )
    tensor = grpcclient.InferInput("input", [1, 64], "FP32")
    tensor.set_data_from_numpy(np.full((1, 64), 0.5, np.float32))
    for number in range(2):
        client.async_stream_infer("digits_mlp", [tensor], request_id=str(number))
    wait_until(lambda: len(results) == 2, what="both streamed answers")
    client.stop_stream()
    assert [error for _, error in results] == [None, None]

    def both() -> list[ReceivedSpan] | None:
        servers = otlp.named(trace.trace_id, "inference.GRPCInferenceService/ModelStreamInfer")
        return servers if len(servers) == 2 else None

    servers = wait_until(both, what="a server span per streamed request")
    assert {span.parent_id for span in servers} == {trace.parent_id}
    assert {span.attributes["rpc.method"] for span in servers} == {"ModelStreamInfer"}
    computes = [span.parent_id for span in otlp.named(trace.trace_id, "compute")]
    assert set(computes) <= {span.span_id for span in servers} and computes


def log_lines(gateway: Gateway) -> list[dict[str, object]]:
    return [json.loads(line) for line in gateway.log().splitlines() if line.startswith('{"time"')]


def test_request_log_has_every_field_and_never_a_tensor(
    traced: Gateway, key: tuple[Path, str]
) -> None:
    trace, refused = Trace(), Trace()
    url = f"{traced.base_url}/v2/models/digits_mlp/infer"
    headers = {"traceparent": trace.header, **bearer(key)}
    assert httpx.post(url, json=digits_body(MARK), headers=headers).status_code == 200
    unauthorized = httpx.post(url, json=digits_body(), headers={"traceparent": refused.header})
    assert unauthorized.status_code == 401

    def line_of(wanted: Trace) -> dict[str, object] | None:
        return next((e for e in log_lines(traced) if e["trace_id"] == wanted.trace_id), None)

    served = wait_until(lambda: line_of(trace), what="the request's log line")
    assert set(served) == {
        "time", "trace_id", "key_id", "protocol", "route", "model", "version", "status", "rows",
        "queue_us", "compute_us", "cache", "duration_us",
    }  # fmt: skip
    assert datetime.fromisoformat(str(served["time"])).tzinfo is not None
    expected = {"key_id": "tracer", "protocol": "http", "model": "digits_mlp", "version": "1"}
    assert expected.items() <= served.items()
    assert (served["status"], served["rows"], served["cache"]) == (200, 1, None)
    assert isinstance(served["queue_us"], int) and isinstance(served["compute_us"], int)
    assert str(MARK)[:6] not in json.dumps(served)
    denied = wait_until(lambda: line_of(refused), what="the refused request's log line")
    assert (denied["status"], denied["key_id"], denied["rows"]) == (401, None, None)
    assert "API key" in str(denied["error"])


def test_request_log_of_a_grpc_request(traced: Gateway, key: tuple[Path, str]) -> None:
    trace = Trace()
    tensor = grpcclient.InferInput("input", [1, 64], "FP32")
    tensor.set_data_from_numpy(np.full((1, 64), 0.25, np.float32))
    with grpcclient.InferenceServerClient(traced.grpc_url) as client:
        client.infer("digits_mlp", [tensor], headers={"traceparent": trace.header, **bearer(key)})

    def line() -> dict[str, object] | None:
        return next((e for e in log_lines(traced) if e["trace_id"] == trace.trace_id), None)

    entry = wait_until(line, what="the gRPC request's log line")
    wanted = {"protocol": "grpc", "route": "ModelInfer", "status": 200, "grpc_status": "OK"}
    assert wanted.items() <= entry.items()
    assert entry["key_id"] == "tracer"


# -- --workers 2, OTLP over HTTP, --trace-rate 0 ---------------------------------------------
@pytest.fixture(scope="module")
def workers(example_repo: Path, otlp: Receiver) -> Iterator[Gateway]:  # noqa: F811
    gateway = start_gateway(
        example_repo,
        "--workers",
        "2",
        "--otlp-endpoint",
        otlp.http_endpoint,
        "--otlp-protocol",
        "http/protobuf",
        "--trace-rate",
        "0",
        env={"OTEL_SERVICE_NAME": "workers-under-test", "OTEL_BSP_SCHEDULE_DELAY": "20"},
    )
    yield gateway
    gateway.stop()


def test_workers_executor_compute_span_joins_the_trace(
    workers: Gateway,
    otlp: Receiver,  # noqa: F811
) -> None:
    trace = Trace()
    url = f"{workers.base_url}/v2/models/digits_mlp/infer"
    response = httpx.post(url, json=digits_body(), headers={"traceparent": trace.header})
    assert response.status_code == 200, response.text
    named = spans(otlp, trace, REST_SPAN, STEPS)
    (server,), (compute,), (queued,) = named[REST_SPAN], named["compute"], named["queue wait"]
    assert str(server.resource["infergate.process"]).startswith("worker-")
    assert compute.resource["infergate.process"] == "executor"
    assert queued.resource["infergate.process"] == "executor"
    assert compute.parent_id == queued.parent_id == server.span_id
    assert queued.links == [(trace.trace_id, compute.span_id)]


def test_trace_rate_zero_traces_only_requests_whose_parent_is_sampled(
    workers: Gateway,
    otlp: Receiver,  # noqa: F811
) -> None:
    url = f"{workers.base_url}/v2/models/digits_mlp/infer"
    unsampled, sampled = Trace(sampled=False), Trace()
    for headers in ({}, {"traceparent": unsampled.header}, {"traceparent": sampled.header}):
        assert httpx.post(url, json=digits_body(), headers=headers).status_code == 200
    spans(otlp, sampled, REST_SPAN, STEPS)  # spans end in order: the earlier ones came first
    assert not otlp.trace(unsampled.trace_id)
    exported = {
        s.trace_id for s in otlp.spans if s.resource["service.name"] == "workers-under-test"
    }
    assert sampled.trace_id in exported
    assert exported <= SAMPLED  # the request without a traceparent was not traced either


# -- tracing off -----------------------------------------------------------------------------
def _default_port_free() -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", 4317))
        except OSError:
            return False
    return True


def test_tracing_off_exports_nothing(example_repo: Path) -> None:
    """Without an endpoint nothing is exported, not even to the SDK's default (localhost:4317),
    where this receiver listens, and nothing is logged."""
    standard = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    if any(os.environ.get(name) for name in standard):
        pytest.skip("this environment names an OTLP endpoint: tracing is on by its choice")
    if not _default_port_free():
        pytest.skip("port 4317 (OTLP's default) is taken here")
    try:
        receiver, server = start_receiver("localhost:4317")
    except RuntimeError as exc:  # taken meanwhile, or on the other address family
        pytest.skip(f"cannot listen on localhost:4317: {exc}")
    gateway = start_gateway(
        example_repo,
        "--workers",
        "1",
        env={"OTEL_SERVICE_NAME": "should-stay-silent", "OTEL_BSP_SCHEDULE_DELAY": "20"},
    )
    try:
        trace = Trace()
        url = f"{gateway.base_url}/v2/models/digits_mlp/infer"
        response = httpx.post(url, json=digits_body(), headers={"traceparent": trace.header})
        assert response.status_code == 200
        tensor = grpcclient.InferInput("input", [1, 64], "FP32")
        tensor.set_data_from_numpy(np.full((1, 64), 0.5, np.float32))
        with grpcclient.InferenceServerClient(gateway.grpc_url) as client:
            client.infer("digits_mlp", [tensor], headers={"traceparent": trace.header})
    finally:
        code = gateway.stop()  # a tracing gateway would export what it holds as it stops
        server.stop(grace=None)
    assert code == 0, gateway.log()
    assert (receiver.exports, receiver.spans) == (0, [])
    assert not log_lines(gateway)
