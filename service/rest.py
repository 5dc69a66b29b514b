"""KServe v2 REST front end (Triton-compatible). Thin: decode, call the data plane, encode.

``POST .../infer`` is served by a raw ASGI handler in front of FastAPI: at tens of thousands of
requests per second, FastAPI's routing and dependency resolution would cost more than the model.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from service.dataplane import DataPlane
from service.errors import BadRequest, InferenceError, PayloadTooLarge
from service.protojson import message_to_json
from service.rest_codec import decode_request, decompress, encode_response
from service.types import InferRequest

log = logging.getLogger(__name__)

_JSON = [(b"content-type", b"application/json")]


def _error_headers(error: InferenceError) -> list[tuple[bytes, bytes]]:
    headers = list(_JSON)
    if error.retry_after_s is not None:
        headers.append((b"retry-after", str(error.retry_after_s).encode()))
    return headers


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

    def __init__(self, dataplane: DataPlane, fallback: Any) -> None:
        self.dataplane = dataplane
        self.fallback = fallback
        self.max_body = dataplane.settings.max_request_bytes
        self.max_elements = dataplane.settings.max_tensor_elements

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            target = _parse_infer_path(scope["path"])
            if target is not None:
                await self._infer(scope, receive, send, *target)
                return
        await self.fallback(scope, receive, send)

    async def _infer(
        self, scope: dict[str, Any], receive: Any, send: Any, model: str, version: str
    ) -> None:
        try:
            headers = dict(scope["headers"])
            body = await self._read_body(headers, receive)
            header_length = headers.get(b"inference-header-content-length")
            encoding = headers.get(b"content-encoding", b"").decode("latin-1").strip().lower()
            if encoding:
                body = decompress(body, encoding, self.max_body)
            try:
                length = int(header_length) if header_length is not None else None
            except ValueError:
                raise BadRequest("Inference-Header-Content-Length must be an integer") from None
            request, output_encoding = decode_request(
                body, length, model, version, self.max_elements
            )
            request.client_gone = _disconnect_probe(receive)
            response = await self.dataplane.infer(request)
            payload, binary_header = encode_response(response, output_encoding)
        except InferenceError as error:
            await _send(
                send,
                error.http_status,
                _error_headers(error),
                orjson.dumps({"error": error.message}),
            )
            return
        except Exception as exc:  # never leak a traceback as a bare 500 without a v2 body
            log.exception("unexpected error in infer")
            await _send(send, 500, _JSON, orjson.dumps({"error": f"internal error: {exc}"}))
            return
        if binary_header is None:
            await _send(send, 200, _JSON, payload)
        else:
            await _send(
                send,
                200,
                [
                    (b"content-type", b"application/octet-stream"),
                    (b"inference-header-content-length", str(binary_header).encode()),
                ],
                payload,
            )

    async def _read_body(self, headers: dict[bytes, bytes], receive: Any) -> bytes:
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
            size += len(chunk)
            if size > self.max_body:
                raise PayloadTooLarge(f"request body exceeds {self.max_body} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _disconnect_probe(receive: Any) -> Callable[[], bool] | None:
    """A cheap "has the client hung up?" check the batcher runs before a request joins a batch.

    uvicorn marks its request cycle ``disconnected`` when the connection drops; reading that flag
    costs nothing, while watching ``receive()`` would cost a task per request.
    """
    cycle = getattr(receive, "__self__", None)
    if cycle is None or not hasattr(cycle, "disconnected"):
        return None
    return lambda: bool(cycle.disconnected)


async def _send(send: Any, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*headers, (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _json(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


def build_app(dataplane: DataPlane) -> InferEndpoint:
    """The ASGI application: infer hot path + FastAPI for the rest of the v2 API."""
    api = FastAPI(title="infergate", version="0.1.0", docs_url="/docs", openapi_url="/openapi.json")

    @api.exception_handler(InferenceError)
    async def _inference_error(_: Request, error: InferenceError) -> Response:
        response = _json({"error": error.message}, error.http_status)
        if error.retry_after_s is not None:
            response.headers["Retry-After"] = str(error.retry_after_s)
        return response

    @api.get("/v2/health/live")
    async def live() -> Response:
        return Response(status_code=200 if dataplane.live() else 503)

    @api.get("/v2/health/ready")
    async def ready() -> Response:
        return Response(status_code=200 if dataplane.ready() else 503)

    @api.get("/v2")
    async def server_metadata() -> Response:
        return _json(dataplane.server_metadata())

    @api.get("/v2/models/{model}")
    @api.get("/v2/models/{model}/versions/{version}")
    async def model_metadata(model: str, version: str = "") -> Response:
        return _json(dataplane.model_metadata(model, version))

    @api.get("/v2/models/{model}/ready")
    @api.get("/v2/models/{model}/versions/{version}/ready")
    async def model_ready(model: str, version: str = "") -> Response:
        return Response(status_code=200 if dataplane.model_ready(model, version) else 400)

    @api.get("/v2/models/{model}/config")
    @api.get("/v2/models/{model}/versions/{version}/config")
    async def model_config(model: str, version: str = "") -> Response:
        return _json(message_to_json(dataplane.model_config(model, version)))

    @api.get("/v2/models/stats")
    async def all_stats() -> Response:
        return _json(dataplane.model_statistics())

    @api.get("/v2/models/{model}/stats")
    @api.get("/v2/models/{model}/versions/{version}/stats")
    async def model_stats(model: str, version: str = "") -> Response:
        return _json(dataplane.model_statistics(model, version))

    @api.post("/v2/repository/index")
    async def repository_index(request: Request) -> Response:
        body = await _optional_json(request)
        rows = await dataplane.repository_index()
        if body.get("ready"):
            rows = [row for row in rows if row.get("state") == "READY"]
        return _json(rows)

    @api.post("/v2/repository/models/{model}/load")
    async def repository_load(model: str) -> Response:
        await dataplane.load_model(model)
        return _json({})

    @api.post("/v2/repository/models/{model}/unload")
    async def repository_unload(model: str) -> Response:
        await dataplane.unload_model(model)
        return _json({})

    @api.post("/v1/models/{model}:predict")
    async def v1_predict(model: str, request: Request) -> Response:
        return _json(await _predict_v1(dataplane, model, await _optional_json(request)))

    @api.get("/metrics")
    async def metrics() -> Response:
        return Response(dataplane.metrics(), media_type=CONTENT_TYPE_LATEST)

    return InferEndpoint(dataplane, api)


async def _optional_json(request: Request) -> dict[str, Any]:
    body = await request.body()
    if not body:
        return {}
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"malformed JSON request: {exc}") from exc
    if not isinstance(data, dict):
        raise BadRequest("request body must be a JSON object")
    return data


async def _predict_v1(dataplane: DataPlane, name: str, body: dict[str, Any]) -> dict[str, Any]:
    """TF-Serving/KServe v1 ``{"instances": [...]}``: rows of the single input, or dicts by name."""
    instances = body.get("instances")
    if not isinstance(instances, list) or not instances:
        raise BadRequest("v1 request needs a non-empty 'instances' list")
    model = dataplane.repository.get(name)
    specs = list(model.inputs.values())
    columns: dict[str, list[Any]] = {spec.name: [] for spec in specs}
    for instance in instances:
        if isinstance(instance, dict):
            for spec in specs:
                if spec.name not in instance:
                    raise BadRequest(f"instance lacks input '{spec.name}'")
                columns[spec.name].append(instance[spec.name])
        elif len(specs) == 1:
            columns[specs[0].name].append(instance)
        else:
            raise BadRequest(f"model '{name}' has {len(specs)} inputs: send instances as objects")
    inputs: dict[str, np.ndarray] = {}
    for spec in specs:
        try:
            array = np.asarray(columns[spec.name], dtype=spec.dtype)
        except (ValueError, TypeError) as exc:
            raise BadRequest(f"input '{spec.name}': {exc}") from exc
        if not model.batches:
            array = array[0]
        inputs[spec.name] = array
    request = InferRequest(name, "", inputs, {spec.name: spec.datatype for spec in specs})
    response = await dataplane.infer(request)
    names = list(response.outputs)
    predictions: list[Any] = []
    for row in range(len(instances) if model.batches else 1):
        values = {
            n: (response.outputs[n][row] if model.batches else response.outputs[n]).tolist()
            for n in names
        }
        predictions.append(values[names[0]] if len(names) == 1 else values)
    return {"predictions": predictions}
