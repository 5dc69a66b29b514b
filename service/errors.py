"""The one error type: each carries its HTTP status, gRPC code, OpenAI error type and optional
Retry-After, and each front end only renders it (v2 ``{"error": ...}`` bodies, gRPC status codes,
OpenAI ``{"error": {"message", "type", "param", "code"}}`` bodies)."""

from __future__ import annotations

import logging

import grpc

log = logging.getLogger(__name__)


class InferenceError(Exception):
    """A failure with a message meant for the client. Subclasses name their HTTP status and gRPC
    code in the class statement: ``class NotFound(InferenceError, http=404, grpc_code=...)``.
    ``param`` and ``code`` name the offending field and a machine-readable reason for front ends
    whose error shape has them (OpenAI's)."""

    http_status = 500
    grpc_code = grpc.StatusCode.INTERNAL
    openai_type = "server_error"

    def __init_subclass__(
        cls,
        http: int | None = None,
        grpc_code: grpc.StatusCode | None = None,
        openai_type: str | None = None,
    ) -> None:
        super().__init_subclass__()
        if http is not None:
            cls.http_status = http
            # OpenAI's type follows from the status unless the class names another
            cls.openai_type = "invalid_request_error" if 400 <= http < 500 else "server_error"
        if grpc_code is not None:
            cls.grpc_code = grpc_code
        if openai_type is not None:
            cls.openai_type = openai_type

    def __init__(
        self,
        message: str,
        *,
        retry_after_s: int | None = None,
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s
        self.param = param
        self.code = code


class BadRequest(InferenceError, http=400, grpc_code=grpc.StatusCode.INVALID_ARGUMENT):
    """The request cannot be served as sent."""


class Unauthenticated(
    InferenceError,
    http=401,
    grpc_code=grpc.StatusCode.UNAUTHENTICATED,
    openai_type="authentication_error",
):
    """No API key, or one the server does not know."""


class PermissionDenied(
    InferenceError,
    http=403,
    grpc_code=grpc.StatusCode.PERMISSION_DENIED,
    openai_type="permission_error",
):
    """A known key without the scope, model or restricted-API header the request needs."""


class RateLimited(
    InferenceError,
    http=429,
    grpc_code=grpc.StatusCode.RESOURCE_EXHAUSTED,
    openai_type="rate_limit_error",
):
    """The key's request or row budget is spent for now; ``retry_after_s`` says for how long."""


class NotFound(InferenceError, http=404, grpc_code=grpc.StatusCode.NOT_FOUND):
    """Unknown model, version or endpoint."""


class MethodNotAllowed(InferenceError, http=405, grpc_code=grpc.StatusCode.UNIMPLEMENTED):
    """A known endpoint asked with the wrong HTTP method."""


class PayloadTooLarge(InferenceError, http=413, grpc_code=grpc.StatusCode.RESOURCE_EXHAUSTED):
    """The body (or its inflated form) is over the configured limit."""


class Unavailable(InferenceError, http=503, grpc_code=grpc.StatusCode.UNAVAILABLE):
    """Model not ready or no healthy backend replica."""


class Overloaded(InferenceError, http=503, grpc_code=grpc.StatusCode.RESOURCE_EXHAUSTED):
    """Queue full: the client should back off and retry."""


class Timeout(InferenceError, http=504, grpc_code=grpc.StatusCode.DEADLINE_EXCEEDED):
    """The request's queue/compute timeout expired before it ran."""


class Unimplemented(
    InferenceError,
    http=501,
    grpc_code=grpc.StatusCode.UNIMPLEMENTED,
    openai_type="invalid_request_error",
):
    """A protocol feature the gateway does not offer (shared memory, classification...)."""


class Internal(InferenceError):
    """A fault of the server's own (500 / INTERNAL)."""


def as_inference_error(exc: Exception) -> InferenceError:
    """Anything raised while serving, as the error the client sees. An unexpected exception is a
    500 whose traceback goes to the log, never to the client."""
    if isinstance(exc, InferenceError):
        return exc
    log.error("unexpected error while serving a request", exc_info=exc)
    return Internal(f"internal error: {exc}")
