"""The v2 REST routes other than infer (health, metadata, config, statistics, repository, v1
predict, metrics), mounted on the FastAPI app. Thin: each calls the data plane and renders JSON;
errors propagate to the app's one error renderer."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from service.errors import BadRequest
from service.frontends.rest.codec import parse_json_object
from service.frontends.rest.protojson import message_to_json
from service.frontends.rest.v1 import decode_predict, encode_predict
from service.messages import JsonObject

if TYPE_CHECKING:
    from service.dataplane.plane import DataPlane

#: Triton extensions this server does not offer (and does not list in ``/v2``), by route prefix
UNSUPPORTED = {
    "systemsharedmemory": "system shared memory",
    "cudasharedmemory": "CUDA shared memory",
    "trace": "trace settings",
    "logging": "log settings",
}


def _json(data: object, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


def _health(field: str, ok: bool, failed: int = 503, **extra: str) -> Response:
    """Health and readiness: the status, as Triton answers (tritonclient reads only that), and
    the body KServe's servers send (``{"live": true}``; KServe's client reads that)."""
    return _json({**extra, field: ok}, 200 if ok else failed)


async def _optional_json(request: Request) -> JsonObject:
    body = await request.body()
    return parse_json_object(body) if body else {}


def mount(api: FastAPI, dataplane: DataPlane) -> None:
    """Every route of this module on ``api``."""
    _health_and_metadata(api, dataplane)
    _per_model(api, dataplane)
    _repository(api, dataplane)
    _other(api, dataplane)


def _health_and_metadata(api: FastAPI, dataplane: DataPlane) -> None:
    @api.get("/v2/health/live")
    async def live() -> Response:
        return _health("live", dataplane.live())

    @api.get("/v2/health/ready")
    async def ready() -> Response:
        return _health("ready", dataplane.ready())

    @api.get("/v2")
    async def server_metadata() -> Response:
        return _json(dataplane.server_metadata())

    @api.get("/v2/models/stats")  # before /v2/models/{model}, which would take "stats" as a name
    async def all_stats() -> Response:
        return _json(await dataplane.model_statistics())


def _per_model(api: FastAPI, dataplane: DataPlane) -> None:
    def route(suffix: str, endpoint: Callable[..., Awaitable[Response]]) -> None:
        """``/v2/models/{model}<suffix>`` and its ``/versions/{version}`` twin."""
        for prefix in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
            api.add_api_route(prefix + suffix, endpoint, methods=["GET"])

    async def model_metadata(model: str, version: str = "") -> Response:
        return _json(dataplane.model_metadata(model, version))

    async def model_ready(model: str, version: str = "") -> Response:
        return _health("ready", dataplane.model_ready(model, version), 400, name=model)

    async def model_config(model: str, version: str = "") -> Response:
        return _json(message_to_json(dataplane.model_config(model, version)))

    async def model_stats(model: str, version: str = "") -> Response:
        return _json(await dataplane.model_statistics(model, version))

    route("", model_metadata)
    route("/ready", model_ready)
    route("/config", model_config)
    route("/stats", model_stats)


def _repository(api: FastAPI, dataplane: DataPlane) -> None:
    @api.post("/v2/repository/index")
    async def repository_index(request: Request) -> Response:
        ready_only = bool((await _optional_json(request)).get("ready"))
        rows = await dataplane.repository_index()
        return _json([row.to_json() for row in rows if not ready_only or row.state == "READY"])

    @api.post("/v2/repository/models/{model}/load")
    async def repository_load(model: str, request: Request) -> Response:
        parameters = (await _optional_json(request)).get("parameters") or {}
        if not isinstance(parameters, dict):
            raise BadRequest("'parameters' must be an object")
        await dataplane.load_model(model, parameters)
        return _json({})

    @api.post("/v2/repository/models/{model}/unload")
    async def repository_unload(model: str) -> Response:
        await dataplane.unload_model(model)
        return _json({})


def _other(api: FastAPI, dataplane: DataPlane) -> None:
    @api.post("/v1/models/{model}:predict")
    async def v1_predict(model: str, request: Request) -> Response:
        servable = await dataplane.resolve(model)
        decoded = decode_predict(servable, await _optional_json(request))
        response = await dataplane.infer(decoded, servable)
        return _json(encode_predict(servable, response))

    async def unsupported(request: Request) -> Response:
        feature = UNSUPPORTED[request.url.path.split("/")[2]]
        raise BadRequest(f"{feature} is not supported by this server")

    for prefix in UNSUPPORTED:
        for path in (f"/v2/{prefix}", f"/v2/{prefix}/{{rest:path}}"):
            api.add_api_route(path, unsupported, methods=["GET", "POST"], include_in_schema=False)

    @api.get("/metrics")
    async def metrics() -> Response:
        return Response(await dataplane.metrics(), media_type=CONTENT_TYPE_LATEST)
