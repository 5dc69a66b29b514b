"""OpenAI-compatible front end: ``POST /v1/embeddings``, ``GET /v1/models`` (thin, like rest.py).

It decodes OpenAI's JSON into an ``ItemsRequest``, lets the data plane tokenize, cache and batch
each input like any v2 request, and encodes the embeddings as floats or base64 (little-endian
float32, what the official client decodes). Errors render in OpenAI's shape
``{"error": {"message", "type", "param", "code"}}``.

Model ids are ``name`` (the default version) or ``name/version``. ``dimensions`` other than the
model's own width needs ``infergate.embedding.truncatable: "true"`` in config.pbtxt (a Matryoshka
model): the first ``dimensions`` values are kept and L2-normalized again.
"""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING

import numpy as np
import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response

from service import parameters
from service.errors import BadRequest, InferenceError, NotFound
from service.frontends.rest.codec import parse_json_object
from service.messages import Array, ItemsRequest, JsonObject
from service.models.tokenizer import truncate_parameter

if TYPE_CHECKING:
    from service.dataplane.plane import DataPlane
    from service.models.version import ModelVersion

_JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


def is_openai_path(path: str) -> bool:
    """Paths whose errors render in OpenAI's shape (TF-serving's ``:predict`` keeps v2's)."""
    return path.startswith("/v1/") and not path.endswith(":predict")


def error_body(error: InferenceError) -> bytes:
    """OpenAI's error object for ``error``."""
    code = error.code
    if code is None and isinstance(error, NotFound) and error.param == "model":
        code = "model_not_found"
    return orjson.dumps(
        {
            "error": {
                "message": error.message,
                "type": error.openai_type,
                "param": error.param,
                "code": code,
            }
        }
    )


def _json(data: object) -> Response:
    return Response(orjson.dumps(data, option=_JSON_OPTIONS), media_type="application/json")


def split_model_id(model_id: object) -> tuple[str, str]:
    """``name`` or ``name/version`` -> (name, version)."""
    if not isinstance(model_id, str) or not model_id:
        raise BadRequest("'model' must be a model id string", param="model")
    name, _, version = model_id.partition("/")
    if version and not version.isdigit():
        raise BadRequest(f"model id {model_id!r} is not 'name' or 'name/version'", param="model")
    return name, version


def decode_input(value: object) -> list[str] | list[list[int]]:
    """OpenAI's ``input``: a string, strings, one token array or token arrays."""
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not value:
        raise BadRequest(
            "'input' must be a string, a list of strings or token arrays (non-empty)",
            param="input",
        )
    if all(isinstance(item, str) for item in value):
        return [item for item in value if isinstance(item, str)]
    if all(type(item) is int for item in value):
        return [[item for item in value if type(item) is int]]
    arrays: list[list[int]] = []
    for index, item in enumerate(value):
        if not isinstance(item, list) or not all(type(token) is int for token in item):
            raise BadRequest(
                f"input {index} is neither text nor a list of integer token ids "
                "(one request sends either strings or token arrays)",
                param="input",
            )
        arrays.append(item)
    return arrays


def decode_embeddings(body: JsonObject) -> tuple[ItemsRequest, str, int | None]:
    """The request, its ``encoding_format`` and its ``dimensions`` (None = the model's)."""
    name, version = split_model_id(body.get("model"))
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise BadRequest(
            f"'encoding_format' must be 'float' or 'base64', got {encoding!r}",
            param="encoding_format",
        )
    dimensions = body.get("dimensions")
    if dimensions is not None and (type(dimensions) is not int or dimensions < 1):
        raise BadRequest("'dimensions' must be a positive integer", param="dimensions")
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise BadRequest("'user' must be a string", param="user")
    request = ItemsRequest(
        name,
        version,
        decode_input(body.get("input")),
        truncate=truncate_parameter(body.get("truncate")),
    )
    return request, str(encoding), dimensions


def check_dimensions(model: ModelVersion, dimensions: int | None) -> None:
    """400 unless the model returns ``dimensions`` or may be cut to it (checked before it runs)."""
    width = model.outputs[model.output_names[0]].dims[-1]
    if dimensions is None or dimensions == width:
        return
    if not parameters.EMBEDDING_TRUNCATABLE.flag(model.config):
        raise BadRequest(
            f"model '{model.name}' returns {width} dimensions and cannot be shortened",
            param="dimensions",
        )
    if width != -1 and dimensions > width:
        raise BadRequest(
            f"'dimensions' {dimensions} is more than the model's {width}", param="dimensions"
        )


def fit_dimensions(embeddings: Array, dimensions: int | None) -> Array:
    """The first ``dimensions`` values of each embedding, L2-normalized again."""
    if dimensions is None or dimensions >= embeddings.shape[1]:
        return embeddings
    kept = embeddings[:, :dimensions].astype(np.float32)
    norms = np.linalg.norm(kept, axis=1, keepdims=True)
    return np.ascontiguousarray(kept / np.maximum(norms, 1e-12))


def encode_embeddings(model_id: str, embeddings: Array, encoding: str, tokens: int) -> JsonObject:
    rows = np.ascontiguousarray(embeddings, dtype="<f4")
    data: list[JsonObject] = []
    for index, row in enumerate(rows):
        vector: object = base64.b64encode(row.tobytes()).decode() if encoding == "base64" else row
        data.append({"object": "embedding", "index": index, "embedding": vector})
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return {"object": "list", "data": data, "model": model_id, "usage": usage}


def _model_entry(model_id: str) -> JsonObject:
    return {"id": model_id, "object": "model", "created": 0, "owned_by": "infergate"}


def mount(api: FastAPI, dataplane: DataPlane) -> None:
    """Add the OpenAI routes to the REST app (errors: ``rest._render_error`` via is_openai_path)."""

    def embedding_models() -> list[ModelVersion]:
        entries = dataplane.repository.models.values()
        found = [m for entry in entries for m in entry.versions.values() if m.tokenizer]
        return sorted(found, key=lambda m: (m.name, int(m.version)))

    def model_ids() -> list[str]:
        ids: list[str] = []
        for model in embedding_models():
            if model.name not in ids:
                ids.append(model.name)
            ids.append(f"{model.name}/{model.version}")
        return ids

    @api.get("/v1/models")
    async def list_models() -> Response:
        return _json({"object": "list", "data": [_model_entry(i) for i in model_ids()]})

    @api.get("/v1/models/{model_id:path}")
    async def retrieve_model(model_id: str) -> Response:
        if model_id not in model_ids():
            raise NotFound(f"the model '{model_id}' does not exist", param="model")
        return _json(_model_entry(model_id))

    @api.post("/v1/embeddings")
    async def embeddings(request: Request) -> Response:
        body = parse_json_object(await request.body())
        items, encoding, dimensions = decode_embeddings(body)
        try:
            model = await dataplane.resolve(items.model_name, items.model_version)
        except NotFound as exc:
            raise NotFound(exc.message, param="model") from exc
        check_dimensions(model, dimensions)
        items.outputs = model.output_names[:1]
        response = await dataplane.infer_items(items, model)
        fitted = fit_dimensions(response.outputs[model.output_names[0]], dimensions)
        model_id = str(body["model"])
        return _json(encode_embeddings(model_id, fitted, encoding, response.token_count))
