"""Tracing and the request log in process: where traces go, one compute span per batch linked
from every request in it (a gated batcher, a real OTLP receiver), the executor's timed answer
over the IPC frame, and the request log's sampling and lines."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
from collections.abc import Iterator

import numpy as np
import pytest

from service.observability import requestlog, tracing
from service.observability.timing import TimedOutputs, Timing, timed
from service.processes.ipc import decode, encode
from service.settings import Settings
from tests.helpers import wait_until
from tests.otlp_receiver import Receiver, start_receiver
from tests.service.gated_backend import GatedBackend, gated_batcher, submit


@pytest.mark.parametrize(
    ("flags", "environ", "expected"),
    [
        ({}, {}, None),
        ({}, {"OTEL_SERVICE_NAME": "x"}, None),
        ({"otlp_endpoint": "http://c:4317"}, {}, ("http://c:4317", "grpc")),
        (
            {"otlp_endpoint": "http://c:4318", "otlp_protocol": "http/protobuf"},
            {},
            ("http://c:4318/v1/traces", "http/protobuf"),
        ),
        (
            {"otlp_endpoint": "https://c/v1/traces"},
            {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"},
            ("https://c/v1/traces", "http/protobuf"),
        ),
        ({}, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"}, (None, "grpc")),
        (
            {"otlp_protocol": "grpc"},
            {
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces",
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
            },
            (None, "grpc"),  # the flag wins over the variable
        ),
    ],
)
def test_where_traces_go(
    flags: dict[str, str], environ: dict[str, str], expected: tuple[str | None, str] | None
) -> None:
    settings = Settings(grpc_port=0, **flags)  # type: ignore[arg-type]
    assert tracing.destination(settings, environ) == expected


def test_an_otlp_protocol_the_exporters_lack_is_refused() -> None:
    environ = {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}
    with pytest.raises(ValueError, match="http/json"):
        tracing.destination(Settings(grpc_port=0, otlp_endpoint="http://c:4318"), environ)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver, server = start_receiver()
    requestlog.configure(Settings(grpc_port=0, otlp_endpoint=receiver.grpc_endpoint))
    assert requestlog.ACTIVE and tracing.ENABLED
    try:
        yield receiver
    finally:
        requestlog.shutdown()
        server.stop(grace=None)
    assert not requestlog.ACTIVE and not tracing.ENABLED


def traceparent() -> tuple[str, str, str]:
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return trace_id, span_id, f"00-{trace_id}-{span_id}-01"


async def test_a_batch_has_one_compute_span_linked_from_every_request_in_it(
    receiver: Receiver,
) -> None:
    backend = GatedBackend()
    batcher = gated_batcher(backend)
    submit(batcher)  # holds the only slot while the others queue
    await backend.until_received(1)
    traces = [traceparent() for _ in range(3)]
    parts = [Timing(header) for _, _, header in traces]
    futures = [submit(batcher, timing=part) for part in parts]
    futures.append(submit(batcher))  # in the batch, neither traced nor logged
    await backend.drain(batcher)
    await asyncio.gather(*futures)
    assert backend.batch_rows == [1, 4]
    assert tracing.flush()
    (first_trace, first_parent, _), others = traces[0], traces[1:]
    computes = wait_until(lambda: receiver.named(first_trace, "compute"), what="compute span")
    (compute,) = computes
    assert compute.parent_id == first_parent  # in the trace of the batch's first request
    assert sorted(compute.links) == sorted((trace, span) for trace, span, _ in others)
    assert compute.attributes["infergate.batch.rows"] == 4
    assert compute.attributes["infergate.batch.requests"] == 4
    for (trace_id, parent_id, _), part in zip(traces, parts):
        (queued,) = receiver.named(trace_id, "queue wait")
        assert queued.parent_id == parent_id
        assert queued.links == [(first_trace, compute.span_id)]  # each request links the batch
        assert part.queue_ns >= 0 and part.compute_ns >= 0
    assert all(not receiver.named(trace_id, "compute") for trace_id, _, _ in others)


async def test_a_failed_batch_ends_its_compute_span_as_an_error(receiver: Receiver) -> None:
    backend = GatedBackend()
    batcher = gated_batcher(backend)
    backend.failure = RuntimeError("the device fell off")
    trace_id, _, header = traceparent()
    future = submit(batcher, timing=Timing(header))
    await backend.drain(batcher)
    with pytest.raises(Exception, match="fell off"):
        await future
    assert tracing.flush()
    (compute,) = wait_until(lambda: receiver.named(trace_id, "compute"), what="compute span")
    assert compute.status_code == 2  # STATUS_CODE_ERROR
    assert compute.attributes["error.type"] == "RuntimeError"
    assert receiver.named(trace_id, "queue wait")


async def test_the_executor_answers_a_timed_call_with_its_times_over_the_frame() -> None:
    loop = asyncio.get_running_loop()
    ran: asyncio.Future[dict[str, np.ndarray]] = loop.create_future()
    part = Timing("")
    answer = timed(ran, part)
    part.queue_ns, part.compute_ns = 1500, 42_000
    ran.set_result({"y": np.arange(6, dtype=np.float32).reshape(2, 3)})
    outputs = await answer
    frame = bytearray(b"".join(bytes(piece) for piece in encode(outputs))[4:])
    back = decode(frame)
    assert isinstance(back, TimedOutputs)
    assert (back.queue_ns, back.compute_ns) == (1500, 42_000)
    np.testing.assert_array_equal(back["y"], outputs["y"])
    seen = Timing("")
    received: asyncio.Future[dict[str, np.ndarray]] = loop.create_future()
    received.set_result(back)
    seen.received(received)
    assert (seen.queue_ns, seen.compute_ns) == (1500, 42_000)


def test_request_log_samples_with_its_rate_and_writes_whole_lines() -> None:
    draws = iter([0.05, 0.5, 0.95, 0.2])
    log = requestlog.RequestLog(0.25, draw=lambda: next(draws))
    assert [log.sampled() for _ in range(4)] == [True, False, False, True]
    assert requestlog.RequestLog(0.0, draw=lambda: 0.0).sampled() is False
    assert requestlog.RequestLog(1.0, draw=lambda: 1.0).sampled() is True
    read, write = os.pipe()
    try:
        writer = requestlog.RequestLog(1.0, fd=write)
        writer.write({"model": "m", "rows": 2})
        writer.write({"model": "n", "rows": None})
        os.close(write)
        lines = os.read(read, 4096).decode().splitlines()
    finally:
        os.close(read)
    assert [json.loads(line) for line in lines] == [
        {"model": "m", "rows": 2},
        {"model": "n", "rows": None},
    ]


@pytest.mark.parametrize(
    ("header", "trace_id"),
    [
        (
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
            "4bf92f3577b34da6a3ce929d0e0e4736",
        ),
        ("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", None),  # W3C: lowercase
        ("00-00000000000000000000000000000000-00f067aa0ba902b7-01", None),
        ("00-4bf92f3577b34da6a3ce929d0e0e47zz-00f067aa0ba902b7-01", None),
        ("garbage", None),
        (None, None),
    ],
)
def test_trace_id_of_a_traceparent(header: str | None, trace_id: str | None) -> None:
    assert requestlog._trace_id(header) == trace_id
