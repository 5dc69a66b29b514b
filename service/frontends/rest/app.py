"""KServe v2 REST front end (Triton-compatible). Thin: decode, call the data plane, encode.

``POST .../infer`` is served by a raw ASGI handler in front of FastAPI: at tens of thousands of
requests per second, FastAPI's routing and dependency resolution would cost more than the model.
Every error, on every route (known or not), is rendered by :func:`error_response` in the v2 shape
``{"error": "..."}``, except under the OpenAI routes (``/v1/embeddings``, ``/v1/models``), which
answer in OpenAI's error shape (``service.frontends.rest.openai``).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException

from service.errors import (
    BadRequest,
    InferenceError,
    MethodNotAllowed,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    as_inference_error,
)
from service.frontends.rest import openai, routes, schema
from service.frontends.rest.auth import App, protect
from service.frontends.rest.codec import decode_request, decompress, encode_response
from service.frontends.rest.connections import FIRST_REQUEST
from service.frontends.rest.observe import observed
from service.host import release_memory
from service.protocol.tensors import binary_work

if TYPE_CHECKING:
    from service.dataplane.plane import DataPlane
    from service.models.version import ModelVersion

log = logging.getLogger(__name__)

Scope = MutableMapping[str, object]
Message = MutableMapping[str, object]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

_JSON: Headers = [(b"content-type", b"application/json")]

#: bodies larger than this are decoded in a worker thread, not on the event loop
OFF_LOOP_BYTES = 1 << 20


def error_response(error: InferenceError) -> tuple[int, Headers, bytes]:
    """The one place an error becomes an HTTP answer: status, headers, v2 ``{"error"}`` body."""
    headers = list(_JSON)
    if error.retry_after_s is not None:
        headers.append((b"retry-after", str(error.retry_after_s).encode()))
    return error.http_status, headers, orjson.dumps({"error": error.message})


def as_http_error(exc: Exception, route: str = "") -> InferenceError:
    """Also FastAPI's own routing and validation errors; ``route`` (``"GET /path"``) names the
    request for routing errors."""
    if isinstance(exc, RequestValidationError):
        details = "; ".join(str(e.get("msg", e)) for e in exc.errors())
        return BadRequest(f"invalid request: {details}")
    if isinstance(exc, HTTPException):
        if exc.status_code == 404:
            return NotFound(f"no endpoint {route}".rstrip())
        if exc.status_code == 405:
            return MethodNotAllowed(f"method not allowed: {route}".rstrip())
        return BadRequest(str(exc.detail))
    return as_inference_error(exc)


def _parse_infer_path(path: str) -> tuple[str, str] | None:
    """``/v2/models/{m}[/versions/{v}]/infer`` -> (model, version)."""
    parts = path.split("/")
    if len(parts) == 5 and parts[1] == "v2" and parts[2] == "models" and parts[4] == "infer":
        return parts[3], ""
    if (
        len(parts) == 7
        and parts[1] == "v2"
        and parts[2] == "models"
        and parts[4] == "versions"
        and parts[6] == "infer"
    ):
        return parts[3], parts[5]
    return None


class InferEndpoint:
    """ASGI app: the infer hot path, falling through to FastAPI for everything else."""

    def __init__(self, dataplane: DataPlane, fallback: FastAPI) -> None:
        self.dataplane = dataplane
        self.fallback = fallback
        settings = dataplane.settings
        self.max_body = settings.max_request_bytes
        self.max_elements = settings.max_tensor_elements
        self.max_json = settings.max_json_bytes
        self.max_connections = settings.max_connections
        self.over_capacity = Overloaded(
            f"more than {settings.max_connections} connections; retry later",
            retry_after_s=settings.retry_after_s,
        )
        #: open connections, set by the server that runs this app (None: no cap)
        self.connection_count: Callable[[], int] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        count = self.connection_count
        if FIRST_REQUEST in scope and count is not None and count() > self.max_connections:
            status, headers, body = error_response(self.over_capacity)
            await _send(send, status, [*headers, (b"connection", b"close")], body)
            return
        if scope["type"] == "http" and scope["method"] == "POST":
            target = _parse_infer_path(str(scope["path"]))
            if target is not None:
                await self._infer(scope, receive, send, *target)
                return
        await self._fallback(scope, receive, send)

    async def _fallback(self, scope: Scope, receive: Receive, send: Send) -> None:
        """FastAPI for the other routes. Its error handlers answer every failure; Starlette
        then re-raises an unexpected one "for the server to log", and uvicorn would close the
        connection under the answer. It stops here: logged once, the connection kept."""
        answered = False

        async def tracked(message: Message) -> None:
            nonlocal answered
            answered = answered or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.fallback(scope, receive, tracked)
        except Exception as exc:
            if answered or scope["type"] != "http":
                return
            error = as_http_error(exc)
            status, headers, body = error_response(error)
            if openai.is_openai_path(str(scope["path"])):
                body = openai.error_body(error)
            await _send(send, status, headers, body)

    async def _infer(
        self, scope: Scope, receive: Receive, send: Send, model: str, version: str
    ) -> None:
        arrival = time.monotonic_ns()
        headers: dict[bytes, bytes] = dict(scope["headers"])  # type: ignore[call-overload]
        body = b""
        try:
            servable = await self.dataplane.resolve(model, version)
            _refuse_before_reading(servable, headers, arrival)
            body = await self._read_body(headers, receive)
            encoding = headers.get(b"content-encoding", b"").decode("latin-1").strip().lower()
            if encoding:  # inflating runs without the GIL: off the event loop
                body = await asyncio.to_thread(decompress, body, encoding, self.max_body)
            decode = functools.partial(
                decode_request,
                body,
                _header_length(headers),
                servable,
                version,
                self.max_elements,
                self.max_json,
            )
            large = len(body) > OFF_LOOP_BYTES
            request, output_encoding = await asyncio.to_thread(decode) if large else decode()
            request.client_gone = _disconnect_probe(receive)
            request.arrival_ns = arrival
            response = await self.dataplane.infer(request, servable)
            payload, binary_header = encode_response(response, output_encoding)
        except Exception as exc:  # every failure answers in the v2 shape, never a bare 500
            status, error_headers, error_body = error_response(as_http_error(exc))
            await _send(send, status, [*error_headers, *_unread_body(receive)], error_body)
        else:
            if binary_header is None:
                await _send(send, 200, _JSON, payload)
            else:
                length = str(binary_header).encode()
                binary_headers = [
                    (b"content-type", b"application/octet-stream"),
                    (b"inference-header-content-length", length),
                ]
                await _send(send, 200, binary_headers, payload)
        if len(body) > OFF_LOOP_BYTES:
            # Once this request's buffers are freed (after return), give their pages to the OS.
            asyncio.get_running_loop().run_in_executor(None, release_memory)

    async def _read_body(self, headers: dict[bytes, bytes], receive: Receive) -> bytes:
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            raise PayloadTooLarge(f"request body of {int(declared)} bytes exceeds {self.max_body}")
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise BadRequest("client disconnected")
            chunk = message.get("body", b"")
            assert isinstance(chunk, bytes)
            size += len(chunk)
            if size > self.max_body:
                raise PayloadTooLarge(f"request body exceeds {self.max_body} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _refuse_before_reading(model: ModelVersion, headers: dict[bytes, bytes], arrival: int) -> None:
    """503 + Retry-After before the body is read when the work already queued for the model
    (and this request's own, as far as its binary tensor bytes tell) would keep it past its
    budget: an overloaded server refuses at the cost of reading headers."""
    declared = headers.get(b"content-length", b"")
    header = headers.get(b"inference-header-content-length", b"")
    rows = tokens = 0
    if declared.isdigit() and header.isdigit() and int(declared) > int(header):
        rows, tokens = binary_work(model, int(declared) - int(header))
    scheduler = model.scheduler
    refused = scheduler.refusal(rows, scheduler.units(rows, tokens), arrival_ns=arrival)
    if refused is not None:
        raise refused


def _unread_body(receive: Receive) -> Headers:
    """Headers for an answer sent before the body was all read. uvicorn reads and discards the
    rest, so the connection stays usable; but a client that sent ``Expect: 100-continue`` may
    never send its body, so that connection is closed cleanly instead."""
    cycle = getattr(receive, "__self__", None)
    unread = cycle is not None and getattr(cycle, "more_body", False)
    if unread and getattr(cycle, "waiting_for_100_continue", False):
        return [(b"connection", b"close")]
    return []


def _header_length(headers: dict[bytes, bytes]) -> int | None:
    value = headers.get(b"inference-header-content-length")
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise BadRequest("Inference-Header-Content-Length must be an integer") from None


def _disconnect_probe(receive: Receive) -> Callable[[], bool] | None:
    """A cheap "has the client hung up?" check the batcher runs before a request joins a batch.

    uvicorn marks its request cycle ``disconnected`` when the connection drops; reading that flag
    costs nothing, while watching ``receive()`` would cost a task per request.
    """
    cycle = getattr(receive, "__self__", None)
    if cycle is None or not hasattr(cycle, "disconnected"):
        return None
    return lambda: bool(cycle.disconnected)


async def _send(send: Send, status: int, headers: Headers, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*headers, (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _render_error(request: Request, exc: Exception) -> Response:
    route = f"{request.method} {request.url.path}"
    error = as_http_error(exc, route)
    status, headers, body = error_response(error)
    if openai.is_openai_path(request.url.path):
        body = openai.error_body(error)
    response = Response(body, status_code=status)
    for name, value in headers:
        response.headers[name.decode()] = value.decode()
    return response


async def _send_error(send: Send, error: InferenceError) -> None:
    await _send(send, *error_response(error))


def build_app(dataplane: DataPlane, connection_count: Callable[[], int] | None = None) -> App:
    """The ASGI application: infer hot path + FastAPI for the rest of the v2 API.

    ``connection_count`` (open connections, from the server that runs the app) enables the
    connection cap."""
    api = FastAPI(title="infergate", version="0.1.0", docs_url="/docs", openapi_url="/openapi.json")
    for error_type in (InferenceError, HTTPException, RequestValidationError, Exception):
        api.add_exception_handler(error_type, _render_error)
    schema.install(api)

    routes.mount(api, dataplane)
    openai.mount(api, dataplane)
    endpoint = InferEndpoint(dataplane, api)
    endpoint.connection_count = connection_count
    return observed(protect(endpoint, dataplane.admission.http, _send_error))
