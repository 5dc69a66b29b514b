"""gRPC authorization: a server interceptor that authorizes every RPC before its handler runs.

The interceptor wraps each handler so it sees the request message (the model a per-model RPC
names) and serves it with the caller's principal in :data:`service.security.policy.CURRENT`. Streams
are authorized once when they open; the data plane checks each streamed request's model.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from service.errors import InferenceError
from service.security.policy import CURRENT, GROUP_SCOPE, Authorizer, Principal, Route

_GRPC_GROUPS = {
    "ServerLive": "health",
    "ServerReady": "health",
    "ModelReady": "health",
    "ServerMetadata": "metadata",
    "ModelMetadata": "metadata",
    "ModelConfig": "model-config",
    "ModelStatistics": "statistics",
    "ModelInfer": "inference",
    "ModelStreamInfer": "inference",
    "RepositoryIndex": "model-repository",
    "RepositoryModelLoad": "model-repository",
    "RepositoryModelUnload": "model-repository",
    "TraceSetting": "trace",
    "LogSettings": "logging",
}


def grpc_route(method: str, model: str = "") -> Route:
    """``/inference.GRPCInferenceService/ModelInfer`` -> its Route."""
    name = method.rsplit("/", 1)[-1]
    group = _GRPC_GROUPS.get(name, "shared-memory" if "SharedMemory" in name else "metadata")
    action = name.removeprefix("RepositoryModel").lower() if group == "model-repository" else name
    scope = "read" if name == "RepositoryIndex" else GROUP_SCOPE[group]
    return Route(group, action, scope, model)


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, authorizer: Authorizer) -> None:
        self.authorizer = authorizer

    async def intercept_service(
        self,
        continuation: Callable[[Any], Awaitable[Any]],
        details: Any,
    ) -> Any:
        handler = await continuation(details)
        if handler is None:
            return None
        method = str(details.method)
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(method, handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                self._stream(method, handler.stream_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler

    def _unary(
        self, method: str, inner: Callable[[Any, Any], Awaitable[Any]]
    ) -> Callable[[Any, Any], Awaitable[Any]]:
        async def unary(request: Any, context: Any) -> Any:
            principal = await self._authorize(method, _model_of(request), context)
            token = CURRENT.set(principal)
            try:
                return await inner(request, context)
            finally:
                CURRENT.reset(token)

        return unary

    def _stream(
        self, method: str, inner: Callable[[Any, Any], AsyncIterator[Any]]
    ) -> Callable[[Any, Any], AsyncIterator[Any]]:
        async def stream(requests: Any, context: Any) -> AsyncIterator[Any]:
            CURRENT.set(await self._authorize(method, "", context))
            async for response in inner(requests, context):
                yield response

        return stream

    async def _authorize(self, method: str, model: str, context: Any) -> Principal:
        metadata = {str(k).lower(): str(v) for k, v in context.invocation_metadata() or ()}
        try:
            return self.authorizer.authorize(grpc_route(method, model), metadata, context.peer())
        except InferenceError as error:
            await context.abort(error.grpc_code, error.message)
        raise AssertionError("unreachable: context.abort raises")


def _model_of(request: Any) -> str:
    """The model a request message names (``model_name`` on infer/load, ``name`` elsewhere)."""
    for field in ("model_name", "name"):
        value = getattr(request, field, "")
        if isinstance(value, str) and value:
            return value
    return ""


def interceptors(authorizer: Authorizer) -> list[grpc.aio.ServerInterceptor]:
    """The interceptor when anything needs checking, else none (no cost per RPC)."""
    return [AuthInterceptor(authorizer)] if authorizer.active else []
