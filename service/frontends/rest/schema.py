"""The KServe v2 infer request/response in ``/openapi.json``.

``POST .../infer`` is served by a raw ASGI handler in front of FastAPI (see
``service.frontends.rest.app``), so FastAPI never sees the route; these models describe it for
clients, code generators and fuzzers. They document the JSON form; the binary tensor extension sends
the same header followed by the raw tensors (``Inference-Header-Content-Length``).
"""

from __future__ import annotations

from typing import Literal

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, Field

from service.datatypes import V2_DATATYPES
from service.frontends.rest.openai import is_openai_path
from service.messages import JsonObject

Datatype = str  # one of V2_DATATYPES (an enum in the schema)


class RequestInput(BaseModel):
    name: str
    shape: list[int] = Field(description="dimensions, batch axis first for batching models")
    datatype: Datatype = Field(json_schema_extra={"enum": list(V2_DATATYPES)})
    parameters: dict[str, object] | None = Field(
        default=None, description="binary_data_size: bytes of this tensor after the JSON header"
    )
    data: list[object] | None = Field(
        default=None, description="row-major values, flat or nested (absent with binary data)"
    )


class RequestOutput(BaseModel):
    name: str
    parameters: dict[str, object] | None = Field(
        default=None, description="binary_data: true for this output in binary form"
    )


class InferenceRequest(BaseModel):
    id: str | None = None
    parameters: dict[str, object] | None = Field(
        default=None,
        description="priority, timeout (µs), binary_data_output, cache (false bypasses it)",
    )
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = None


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: Datatype
    parameters: dict[str, object] | None = None
    data: list[object] | None = None


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: dict[str, object] | None = None
    outputs: list[ResponseOutput]


class ErrorResponse(BaseModel):
    error: str


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIErrorResponse(BaseModel):
    """The error shape under ``/v1`` (OpenAI's), but for TF-serving's ``:predict``."""

    error: OpenAIErrorDetail


class EmbeddingsRequest(BaseModel):
    """OpenAI's ``POST /v1/embeddings`` body (``truncate`` is TEI's option)."""

    model: str = Field(description="'name' (the default version) or 'name/version'")
    input: str | list[str] | list[int] | list[list[int]] = Field(
        description="a text, texts, one token array or token arrays of the model's vocabulary"
    )
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = None
    truncate: bool | None = Field(
        default=None, description="cut inputs longer than the model takes (default true)"
    )


def _infer_operation(versioned: bool) -> JsonObject:
    parameters: list[JsonObject] = [
        {"name": "model_name", "in": "path", "required": True, "schema": {"type": "string"}}
    ]
    if versioned:
        parameters.append(
            {"name": "model_version", "in": "path", "required": True, "schema": {"type": "string"}}
        )
    error = {"content": {"application/json": {"schema": _ref("ErrorResponse")}}}
    return {
        "post": {
            "summary": "Inference (KServe v2; JSON or binary tensors)",
            "operationId": "infer_versioned" if versioned else "infer",
            "parameters": parameters,
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _ref("InferenceRequest")}},
            },
            "responses": {
                "200": {
                    "description": "outputs",
                    "content": {"application/json": {"schema": _ref("InferenceResponse")}},
                },
                **{
                    code: {"description": what, **error}
                    for code, what in (
                        ("400", "bad request"),
                        ("404", "unknown model or version"),
                        ("413", "body too large"),
                        ("503", "model unavailable, or overloaded (with Retry-After)"),
                    )
                },
            },
        }
    }


def _ref(name: str) -> JsonObject:
    return {"$ref": f"#/components/schemas/{name}"}


def _errors_as_served(paths: dict[str, dict[str, JsonObject]]) -> None:
    """FastAPI documents a 422 ``{"detail"}`` for routes with parameters; this server answers
    a bad request with 400 ``{"error"}`` (OpenAI's shape under /v1)."""
    for path, operations in paths.items():
        shape = "OpenAIErrorResponse" if is_openai_path(path) else "ErrorResponse"
        error = {"content": {"application/json": {"schema": _ref(shape)}}}
        for operation in operations.values():
            responses = operation.get("responses")
            if isinstance(responses, dict) and responses.pop("422", None) is not None:
                responses.setdefault("400", {"description": "bad request", **error})


def install(api: FastAPI) -> None:
    """Make ``api.openapi()`` include the infer operations and their schemas."""

    def openapi() -> dict[str, object]:
        if api.openapi_schema:
            return api.openapi_schema
        schema = get_openapi(title=api.title, version=api.version, routes=api.routes)
        paths = schema.setdefault("paths", {})
        paths["/v2/models/{model_name}/infer"] = _infer_operation(versioned=False)
        paths["/v2/models/{model_name}/versions/{model_version}/infer"] = _infer_operation(True)
        embeddings = paths.get("/v1/embeddings", {}).get("post")
        if embeddings is not None:
            embeddings["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": _ref("EmbeddingsRequest")}},
            }
        _errors_as_served(paths)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for name in ("HTTPValidationError", "ValidationError"):
            components.pop(name, None)
        models = (InferenceRequest, InferenceResponse, ErrorResponse, OpenAIErrorResponse)
        for model in (*models, EmbeddingsRequest):
            definition = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(definition.pop("$defs", {}))
            components[model.__name__] = definition
        api.openapi_schema = schema
        return schema

    setattr(api, "openapi", openapi)  # noqa: B010 - FastAPI's documented override hook
