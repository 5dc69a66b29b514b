"""Tracing and the request log of gRPC inference calls (``ModelInfer``, and each request of
``ModelStreamInfer``), called by the servicer only while ``requestlog.ACTIVE``.

Each request gets a record (``service.observability.requestlog``): a server span that continues
the W3C ``traceparent`` / ``tracestate`` of the call's metadata (RPC semantic conventions), and
its line in the request log, with the gRPC status the call ends with.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from service.errors import InferenceError, Internal
from service.observability import requestlog, tracing
from service.security.policy import CURRENT as PRINCIPAL

SERVICE = "inference.GRPCInferenceService"
T = TypeVar("T")


async def observed(
    infer: Callable[[Any], Awaitable[T]], request: Any, context: Any, method: str
) -> T:
    """``await infer(request)``, traced and logged as one request of ``method``."""
    record = _begin(request, context, method)
    if record is None:
        return await infer(request)
    token = requestlog.CURRENT.set(record)
    try:
        response = await infer(request)
    except asyncio.CancelledError:
        record.answer(499, grpc.StatusCode.CANCELLED, "the call was cancelled")
        raise
    except Exception as exc:  # the servicer renders it; here it is only noted
        error = exc if isinstance(exc, InferenceError) else Internal(f"internal error: {exc}")
        record.answer(error.http_status, error.grpc_code, error.message)
        raise
    else:
        record.answer(200, grpc.StatusCode.OK)
        return response
    finally:
        principal = PRINCIPAL.get()  # set by the authorization interceptor around the call
        record.key_id = principal.key_id if principal is not None else None
        requestlog.CURRENT.reset(token)
        record.finish()


def _begin(request: Any, context: Any, method: str) -> requestlog.RequestRecord | None:
    traceparent = tracestate = None
    for key, value in context.invocation_metadata() or ():
        if key == "traceparent":
            traceparent = str(value)
        elif key == "tracestate":
            tracestate = str(value)
    attributes = {}
    if tracing.ENABLED:  # RPC's semantic conventions, for the server span
        attributes = {
            "rpc.system": "grpc",
            "rpc.service": SERVICE,
            "rpc.method": method,
            "client.address": str(context.peer()),
        }
    return requestlog.begin(
        "grpc",
        f"{SERVICE}/{method}",
        method,
        traceparent,
        tracestate,
        attributes,
        str(request.model_name),
    )
