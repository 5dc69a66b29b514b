"""KServe v2 / Triton ``GRPCInferenceService`` front end on ``grpc.aio``.

It runs in the same event loop as the REST server and only decodes and encodes: validation,
cache, batching and metrics all happen in the shared ``DataPlane``, so both protocols answer
alike. ``InferenceError``s become gRPC status codes (their ``grpc_code`` and ``message``).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf import json_format
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from service.errors import as_inference_error
from service.frontends.grpc.auth import interceptors
from service.frontends.grpc.codec import decode_request, encode_response, parameters_to_dict
from service.frontends.grpc.observe import observed
from service.frontends.tls import grpc_credentials
from service.observability import requestlog
from service.protocol.tensors import binary_work

if TYPE_CHECKING:
    from service.dataplane.plane import DataPlane
    from service.models.version import ModelVersion
    from service.settings import Settings

log = logging.getLogger(__name__)

# Request parameter with which tritonclient's streaming API asks for a final-response flag.
_EMPTY_FINAL = "triton_enable_empty_final_response"
_FINAL = "triton_final_response"


def _unsupported(feature: str) -> Callable[[Any, Any, Any], Awaitable[None]]:
    """A servicer method for a KServe/Triton extension this server does not offer."""

    async def method(self: Any, request: Any, context: Any) -> None:
        await context.abort(
            grpc.StatusCode.UNIMPLEMENTED, f"{feature} is not supported by this server"
        )

    return method


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    """Every RPC of ``inference.GRPCInferenceService``, delegating to one ``DataPlane``."""

    def __init__(self, dataplane: DataPlane, settings: Settings) -> None:
        self._dataplane = dataplane
        self._max_elements = settings.max_tensor_elements

    # --- health and metadata ---------------------------------------------------------------
    async def ServerLive(self, request: Any, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self._dataplane.live())

    async def ServerReady(self, request: Any, context: Any) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self._dataplane.ready())

    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: Any
    ) -> pb.ModelReadyResponse:
        ready = await _guard(context, self._dataplane.model_ready, *_target(request))
        return pb.ModelReadyResponse(ready=ready)

    async def ServerMetadata(self, request: Any, context: Any) -> pb.ServerMetadataResponse:
        metadata = self._dataplane.server_metadata()
        return pb.ServerMetadataResponse(
            name=metadata.get("name", ""),
            version=metadata.get("version", ""),
            extensions=metadata.get("extensions", []),
        )

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: Any
    ) -> pb.ModelMetadataResponse:
        metadata = await _guard(context, self._dataplane.model_metadata, *_target(request))
        return _from_json(metadata, pb.ModelMetadataResponse())

    async def ModelConfig(
        self, request: pb.ModelConfigRequest, context: Any
    ) -> pb.ModelConfigResponse:
        config = await _guard(context, self._dataplane.model_config, *_target(request))
        return pb.ModelConfigResponse(config=config)

    async def ModelStatistics(
        self, request: pb.ModelStatisticsRequest, context: Any
    ) -> pb.ModelStatisticsResponse:
        stats = await _guard(context, self._dataplane.model_statistics, *_target(request))
        return _from_json(stats, pb.ModelStatisticsResponse())

    # --- repository ---------------------------------------------------------------------
    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: Any
    ) -> pb.RepositoryIndexResponse:
        index = await _guard(context, self._dataplane.repository_index)
        response = pb.RepositoryIndexResponse()
        for row in index:
            if request.ready and row.state != "READY":
                continue
            response.models.add(
                name=row.name, version=row.version, state=row.state.value, reason=row.reason
            )
        return response

    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: Any
    ) -> pb.RepositoryModelLoadResponse:
        parameters = parameters_to_dict(request.parameters)
        await _guard(context, self._dataplane.load_model, request.model_name, parameters)
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: Any
    ) -> pb.RepositoryModelUnloadResponse:
        await _guard(context, self._dataplane.unload_model, request.model_name)
        return pb.RepositoryModelUnloadResponse()

    # --- inference ----------------------------------------------------------------------
    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: Any
    ) -> pb.ModelInferResponse:
        if requestlog.ACTIVE:  # traced or logged
            return await _guard(context, observed, self._infer, request, context, "ModelInfer")
        return await _guard(context, self._infer, request)

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[pb.ModelInferRequest], context: Any
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Run every streamed request concurrently; answer each as it finishes.

        A reader task spawns one task per request; this generator is the only writer. Errors
        travel in ``error_message`` so one bad request does not end the stream.
        """
        done: asyncio.Queue[pb.ModelStreamInferResponse | None] = asyncio.Queue()
        pending: set[asyncio.Task[None]] = set()

        async def answer(request: pb.ModelInferRequest) -> None:
            await done.put(await self._stream_one(request, context))

        async def read() -> None:
            try:
                async for request in request_iterator:
                    task = asyncio.create_task(answer(request))
                    pending.add(task)
                    task.add_done_callback(pending.discard)
            finally:
                if pending:
                    await asyncio.gather(*pending, return_exceptions=True)
                await done.put(None)

        reader = asyncio.create_task(read())
        try:
            while (item := await done.get()) is not None:
                yield item
            await reader  # surfaces a failed read (e.g. a cancelled stream)
        finally:
            reader.cancel()
            for task in list(pending):
                task.cancel()

    async def _infer(self, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
        arrival = time.monotonic_ns()
        model = await self._dataplane.resolve(request.model_name, request.model_version)
        _refuse_before_decoding(model, request, arrival)
        decoded = decode_request(request, self._max_elements, model)
        decoded.arrival_ns = arrival
        response = await self._dataplane.infer(decoded, model)
        message = encode_response(response)
        if decoded.parameters.get(_EMPTY_FINAL) is True:
            message.parameters[_FINAL].bool_param = True
        return message

    async def _stream_one(
        self, request: pb.ModelInferRequest, context: Any
    ) -> pb.ModelStreamInferResponse:
        try:
            if requestlog.ACTIVE:  # traced or logged
                response = await observed(self._infer, request, context, "ModelStreamInfer")
            else:
                response = await self._infer(request)
            return pb.ModelStreamInferResponse(infer_response=response)
        except Exception as exc:  # one failed request must not end the stream
            error = as_inference_error(exc).message
        echo = pb.ModelInferResponse(
            model_name=request.model_name, model_version=request.model_version, id=request.id
        )
        return pb.ModelStreamInferResponse(error_message=error, infer_response=echo)

    # --- features the gateway does not offer ----------------------------------------------
    SystemSharedMemoryStatus = _unsupported("system shared memory")
    SystemSharedMemoryRegister = _unsupported("system shared memory")
    SystemSharedMemoryUnregister = _unsupported("system shared memory")
    CudaSharedMemoryStatus = _unsupported("CUDA shared memory")
    CudaSharedMemoryRegister = _unsupported("CUDA shared memory")
    CudaSharedMemoryUnregister = _unsupported("CUDA shared memory")
    TraceSetting = _unsupported("trace settings")
    LogSettings = _unsupported("log settings")


def _refuse_before_decoding(
    model: ModelVersion, request: pb.ModelInferRequest, arrival: int
) -> None:
    """As REST before reading the body: grpc.aio hands over the parsed message, so this comes
    right before its tensors are decoded (the raw tensor bytes tell its size)."""
    rows = tokens = 0
    if request.raw_input_contents:
        rows, tokens = binary_work(model, sum(len(raw) for raw in request.raw_input_contents))
    scheduler = model.scheduler
    refused = scheduler.refusal(rows, scheduler.units(rows, tokens), arrival_ns=arrival)
    if refused is not None:
        raise refused


def _target(request: Any) -> tuple[str, str]:
    """(model name, version) of a per-model request."""
    return str(request.name), str(request.version)


def _from_json(data: object, message: Any) -> Any:
    """The data plane's JSON form of a reply -> its protobuf message (unknown fields skipped)."""
    return json_format.ParseDict(data, message, ignore_unknown_fields=True)


async def _guard(context: Any, function: Callable[..., Any], *args: Any) -> Any:
    """Call ``function`` (sync or async); ``InferenceError`` -> its gRPC status, else INTERNAL."""
    try:
        result = function(*args)
        if inspect.isawaitable(result):
            result = await result
        return result
    except grpc.aio.AbortError:
        raise
    except Exception as exc:
        error = as_inference_error(exc)
        trailing: tuple[tuple[str, str], ...] = ()
        if error.retry_after_s is not None:
            trailing = (("retry-after", str(error.retry_after_s)),)
        await context.abort(error.grpc_code, error.message, trailing_metadata=trailing)
    raise AssertionError("unreachable: context.abort raises")


def server_options(settings: Settings, reuse_port: bool = False) -> list[tuple[str, int]]:
    """Channel options: message size limits from settings; a port clash fails instead of sharing
    (unless front-end workers share it: ``reuse_port``); connections idle past the keep-alive
    time are closed, as REST's are."""
    limit = settings.grpc_max_message_bytes
    return [
        ("grpc.max_receive_message_length", limit),
        ("grpc.max_send_message_length", limit),
        ("grpc.so_reuseport", int(reuse_port)),
        ("grpc.max_connection_idle_ms", GRPC_IDLE_MS),
    ]


#: a gRPC connection with no call for this long is closed (clients reconnect transparently)
GRPC_IDLE_MS = 300_000


def bind_address(host: str, port: int) -> str:
    """``host:port`` with IPv6 literals bracketed."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


async def start_grpc_server(
    dataplane: DataPlane,
    settings: Settings,
    reuse_port: bool = False,
    rpc_limit: int | None = None,
) -> tuple[grpc.aio.Server, int] | None:
    """Create, bind and start the gRPC server on ``settings.host:settings.grpc_port``.

    ``rpc_limit``: calls in flight, when not ``max_connections`` (a worker's share of it).
    Returns the server and the port it bound, or None when ``grpc_port`` is 0 (gRPC disabled).
    Stop with ``await server.stop(grace)``. Must be called from the running event loop that
    serves REST, so both share it.
    """
    if settings.grpc_port == 0:
        return None
    server = grpc.aio.server(
        options=server_options(settings, reuse_port),
        maximum_concurrent_rpcs=rpc_limit or settings.max_connections,
        interceptors=interceptors(dataplane.admission.grpc),
    )
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(
        InferenceServicer(dataplane, settings), server
    )
    address = bind_address(settings.host, settings.grpc_port)
    try:
        credentials = grpc_credentials(settings)
        if credentials is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, credentials)
    except RuntimeError as exc:
        raise OSError(f"cannot bind gRPC server to {address}: {exc}") from exc
    if port == 0:
        raise OSError(f"cannot bind gRPC server to {address}")
    await server.start()
    log.debug("gRPC server bound to %s", address)
    return server, port
