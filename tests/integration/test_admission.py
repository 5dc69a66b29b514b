"""Admission before the body is read, through the real REST and gRPC servers in the test's event
loop, over a model whose one running batch the test holds (the gated backend).

The model's warm-up figure says 100 s per row, and one row is running, so every request would
stay past its 1 s budget: it must be refused with 503 + Retry-After at the cost of reading its
headers, whatever its body (malformed, slow, or never sent), and its connection must stay usable
or close cleanly. Nothing waits on the clock: only on answers, and on the server's own read
timeout closing a connection whose body never came.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from service.backends.base import Calibration
from service.dataplane.batching import DynamicBatcher
from service.dataplane.plane import DataPlane
from service.frontends.grpc.server import start_grpc_server
from service.frontends.serve import bind_http_socket, http_server
from service.models.repository import IndexRow, ModelEntry, RepositoryView
from service.models.version import ModelState, ModelVersion, Submission
from service.settings import Settings
from tests.helpers import wait_until_async
from tests.service.gated_backend import GatedBackend, gated_config


class OneModel(RepositoryView):
    """A repository of one version the test built (the gated model)."""

    def __init__(self, model: ModelVersion) -> None:
        super().__init__()
        entry = ModelEntry(model.name, ModelState.READY, "", {model.version: model})
        entry.default_version = model.version
        self.models[model.name] = entry

    async def index(self) -> list[IndexRow]:
        return [IndexRow("gated", ModelState.READY, "1")]

    async def load(self, name: str, override: object = None) -> None:
        raise NotImplementedError

    async def unload(self, name: str) -> None:
        raise NotImplementedError

    async def demand(self, name: str) -> None:
        raise NotImplementedError

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        await self.models["gated"].versions["1"].scheduler.close()


@dataclass
class Busy:
    backend: GatedBackend
    http_port: int
    grpc_port: int


@pytest.fixture
async def busy() -> AsyncIterator[Busy]:
    settings = Settings(
        grpc_port=0, max_queue_wait_ms=1000, http_read_timeout_s=1.0, cache_enabled=False
    )
    backend = GatedBackend()
    backend.calibration = Calibration(units=1, seconds=100.0)
    model = ModelVersion("gated", "1", gated_config(), backend)
    model.scheduler = DynamicBatcher(model, model.stats, settings)
    dataplane = DataPlane(settings, OneModel(model))
    await dataplane.start()
    sock = bind_http_socket("127.0.0.1", 0)
    server = http_server(dataplane, settings, None)
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    grpc_settings = settings.model_copy(update={"grpc_port": _free_port()})
    started = await start_grpc_server(dataplane, grpc_settings)
    assert started is not None
    grpc_server, grpc_port = started
    running = model.scheduler.submit(Submission({"x": np.ones((1, 4), np.float32)}, 1, (4,)))
    await backend.until_received(1)  # one row running: 100 s ahead of anyone else
    await wait_until_async(lambda: server.started, what="the HTTP server to start")
    try:
        yield Busy(backend, sock.getsockname()[1], grpc_port)
    finally:
        backend.release()
        assert (await running)["y"].shape == (1, 4)
        server.should_exit = True
        await serving
        await grpc_server.stop(0)
        await dataplane.close()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def _response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 60)
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines if line)
    headers = {name.lower(): value for name, value in headers.items()}
    body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), 60)
    return int(status_line.split()[1]), headers, body


def _infer_head(length: int, *extra: str) -> bytes:
    lines = [
        "POST /v2/models/gated/infer HTTP/1.1",
        "Host: gateway",
        "Content-Type: application/json",
        f"Content-Length: {length}",
        *extra,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _assert_refused(status: int, headers: dict[str, str], body: bytes) -> None:
    assert status == 503, body
    assert int(headers["retry-after"]) >= 1
    assert "overloaded: predicted stay" in json.loads(body)["error"]


async def test_refused_before_the_body_and_the_connection_stays_usable(busy: Busy) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", busy.http_port)
    writer.write(_infer_head(1000))  # the body is not sent (yet)
    await writer.drain()
    status, headers, body = await _response(reader)
    _assert_refused(status, headers, body)
    assert headers.get("connection") != "close"
    writer.write(b"x" * 1000)  # the body after all: read and discarded by the server
    writer.write(b"GET /v2/health/live HTTP/1.1\r\nHost: gateway\r\n\r\n")
    await writer.drain()
    status, _, _ = await _response(reader)
    assert status == 200, "the same connection serves the next request"
    writer.close()


async def test_a_malformed_body_is_not_even_parsed_when_refused(busy: Busy) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", busy.http_port)
    garbage = b"{ this is not json"
    writer.write(_infer_head(len(garbage)) + garbage)
    await writer.drain()
    _assert_refused(*await _response(reader))  # a 503, not the 400 that parsing would give
    writer.close()


async def test_a_body_that_never_arrives_gets_its_503_and_a_clean_close(busy: Busy) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", busy.http_port)
    writer.write(_infer_head(5000))
    await writer.drain()
    _assert_refused(*await _response(reader))
    # the body never comes: the read timeout closes the connection, without a second answer
    rest = await asyncio.wait_for(reader.read(), 60)
    assert rest == b"", rest
    writer.close()


async def test_expect_100_continue_is_answered_and_closed(busy: Busy) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", busy.http_port)
    writer.write(_infer_head(4096, "Expect: 100-continue"))
    await writer.drain()
    status, headers, body = await _response(reader)
    _assert_refused(status, headers, body)
    assert headers["connection"] == "close", "the client may never send the body it announced"
    assert await asyncio.wait_for(reader.read(), 60) == b""
    writer.close()


async def test_grpc_refuses_before_decoding_the_tensors(busy: Busy) -> None:
    def call() -> InferenceServerException:
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{busy.grpc_port}")
        tensor = grpcclient.InferInput("x", [1, 4], "FP32")
        tensor.set_data_from_numpy(np.ones((1, 4), np.float32))
        request_bytes = tensor._get_content()
        tensor._raw_content = request_bytes[:3]  # tensor data that would not decode: a 400
        try:
            client.infer("gated", [tensor])
        except InferenceServerException as error:
            return error
        finally:
            client.close()
        raise AssertionError("the overloaded model answered")

    error = await asyncio.to_thread(call)
    assert error.status() == str(grpc.StatusCode.RESOURCE_EXHAUSTED), error
    assert "overloaded: predicted stay" in error.message()
