"""The one error type: each carries its HTTP status, gRPC code and optional Retry-After, and each
front end only renders it (v2 ``{"error": ...}`` bodies, gRPC status codes)."""

from __future__ import annotations

import logging

import grpc

log = logging.getLogger(__name__)


class InferenceError(Exception):
    """A failure with a message meant for the client."""

    http_status = 500
    grpc_code = grpc.StatusCode.INTERNAL

    def __init__(self, message: str, *, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s


class BadRequest(InferenceError):
    http_status = 400
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(InferenceError):
    http_status = 404
    grpc_code = grpc.StatusCode.NOT_FOUND


class MethodNotAllowed(InferenceError):
    http_status = 405
    grpc_code = grpc.StatusCode.UNIMPLEMENTED


class PayloadTooLarge(InferenceError):
    http_status = 413
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(InferenceError):
    """Model not ready or no healthy backend replica."""

    http_status = 503
    grpc_code = grpc.StatusCode.UNAVAILABLE


class Overloaded(InferenceError):
    """Queue full: the client should back off and retry."""

    http_status = 503
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Timeout(InferenceError):
    """The request's queue/compute timeout expired before it ran."""

    http_status = 504
    grpc_code = grpc.StatusCode.DEADLINE_EXCEEDED


class Unimplemented(InferenceError):
    """A protocol feature the gateway does not offer (shared memory, classification...)."""

    http_status = 501
    grpc_code = grpc.StatusCode.UNIMPLEMENTED


class Internal(InferenceError):
    pass


def as_inference_error(exc: Exception) -> InferenceError:
    """Anything raised while serving, as the error the client sees. An unexpected exception is a
    500 whose traceback goes to the log, never to the client."""
    if isinstance(exc, InferenceError):
        return exc
    log.error("unexpected error while serving a request", exc_info=exc)
    return Internal(f"internal error: {exc}")
