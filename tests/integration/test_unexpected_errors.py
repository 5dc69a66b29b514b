"""A fault of the server's own, on any route, is answered and logged by the gateway's one error
renderer, and the client's keep-alive connection stays usable (uvicorn would otherwise close it
under the 500, and the client's next request would meet a reset connection)."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from service.dataplane.plane import DataPlane
from service.frontends.rest.app import InferEndpoint
from service.frontends.serve import bind_http_socket, http_server
from service.settings import Settings
from tests.helpers import wait_until_async


@pytest.fixture
async def port(example_repo: Path, tmp_path: Path) -> AsyncIterator[int]:
    shutil.copytree(example_repo / "digits_mlp", tmp_path / "digits_mlp")
    settings = Settings(model_repo=tmp_path, grpc_port=0)
    dataplane = DataPlane(settings)
    await dataplane.start()
    server = http_server(dataplane, settings, None)
    endpoint = server.config.app
    assert isinstance(endpoint, InferEndpoint)

    async def broken() -> None:
        raise RuntimeError("a bug of the server's own")

    for path in ("/v2/broken", "/v1/broken"):  # a v2 route and an OpenAI one
        endpoint.fallback.add_api_route(path, broken, methods=["GET"])
    sock = bind_http_socket("127.0.0.1", 0)
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    await wait_until_async(lambda: server.started, what="the HTTP server to start")
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        await serving
        await dataplane.close()


async def _get(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str
) -> tuple[int, dict[str, str], bytes]:
    writer.write(f"GET {path} HTTP/1.1\r\nHost: gateway\r\n\r\n".encode())
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 60)
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v for k, v in (line.split(": ", 1) for line in lines if line)}
    body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), 60)
    return int(status_line.split()[1]), headers, body


async def test_a_500_keeps_the_connection_and_is_logged_once(
    port: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    status, headers, body = await _get(reader, writer, "/v2/broken")
    assert status == 500 and headers.get("connection") != "close"
    assert json.loads(body) == {"error": "internal error: a bug of the server's own"}
    status, _, body = await _get(reader, writer, "/v1/broken")
    assert status == 500
    assert json.loads(body)["error"]["type"] == "server_error", "OpenAI's shape under /v1"
    status, _, _ = await _get(reader, writer, "/v2/health/live")
    assert status == 200, "the same connection still serves"
    writer.close()
    logged = [r for r in caplog.records if r.exc_info and "a bug" in str(r.exc_info[1])]
    assert len(logged) == 2, [r.getMessage() for r in caplog.records]
    assert not any("Exception in ASGI application" in r.getMessage() for r in caplog.records)
