"""Tracing and the request log of REST inference calls: an ASGI wrapper outside the whole app.

:func:`observed` returns the app itself when neither is on, so the request path then pays
nothing. On, every inference call (``POST .../infer``, ``/v1/models/{m}:predict``,
``/v1/embeddings``) gets a record (``service.observability.requestlog``): a server span that
continues the caller's W3C ``traceparent`` / ``tracestate`` headers (HTTP semantic conventions),
and its line in the request log, with the status and error the response carried. Outside the
authorization wrapper, it also sees the calls that are refused.
"""

from __future__ import annotations

import asyncio

import orjson

from service.frontends.rest.auth import App, Message, Receive, Scope, Send
from service.observability import requestlog, tracing
from service.security.policy import CURRENT as PRINCIPAL


def observed(app: App) -> App:
    """``app`` behind tracing and the request log, or ``app`` itself when both are off."""
    return ObservedApp(app) if requestlog.ACTIVE else app


def inference_route(path: str) -> str | None:
    """The route template of an inference path (``/v2/models/{model}/infer``...), else None."""
    parts = path.split("/")
    if parts[:3] == ["", "v2", "models"]:
        if len(parts) == 5 and parts[4] == "infer":
            return "/v2/models/{model}/infer"
        if len(parts) == 7 and parts[4] == "versions" and parts[6] == "infer":
            return "/v2/models/{model}/versions/{version}/infer"
        return None
    if len(parts) == 4 and parts[:3] == ["", "v1", "models"] and parts[3].endswith(":predict"):
        return "/v1/models/{model}:predict"
    return "/v1/embeddings" if path == "/v1/embeddings" else None


class ObservedApp:
    """The ASGI wrapper: a record per inference call, its outcome read from what is sent."""

    def __init__(self, app: App) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = None
        if scope["type"] == "http" and scope["method"] == "POST":
            route = inference_route(str(scope["path"]))
        record = self._begin(scope, route) if route is not None else None
        if record is None:
            await self.app(scope, receive, send)
            return

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                principal = PRINCIPAL.get()  # set by authorization, inside this wrapper
                record.key_id = principal.key_id if principal is not None else None
                record.answer(int(message["status"]))  # type: ignore[call-overload]
            elif message["type"] == "http.response.body" and record.status >= 400:
                record.error = record.error or _error_message(message.get("body", b""))
            await send(message)

        token = requestlog.CURRENT.set(record)
        try:
            await self.app(scope, receive, sending)
        except asyncio.CancelledError:
            record.answer(499, error="cancelled before it was answered")
            raise
        except BaseException:
            record.answer(500, error="the server failed before answering")
            raise
        finally:
            requestlog.CURRENT.reset(token)
            record.finish()

    def _begin(self, scope: Scope, route: str) -> requestlog.RequestRecord | None:
        headers: list[tuple[bytes, bytes]] = scope["headers"]  # type: ignore[assignment]
        wanted = {b"traceparent": "", b"tracestate": "", b"user-agent": ""}
        for name, value in headers:
            if name in wanted:
                wanted[name] = value.decode("latin-1")
        path = str(scope["path"])
        attributes: dict[str, str | int] = {}
        if tracing.ENABLED:  # HTTP's semantic conventions, for the server span
            attributes = {
                "http.request.method": "POST",
                "http.route": route,
                "url.path": path,
                "url.scheme": str(scope.get("scheme", "http")),
                "network.protocol.version": str(scope.get("http_version", "1.1")),
            }
            client = scope.get("client")
            if isinstance(client, tuple | list) and client:
                attributes["client.address"] = str(client[0])
            if wanted[b"user-agent"]:
                attributes["user_agent.original"] = wanted[b"user-agent"]
        parts = path.split("/")
        return requestlog.begin(
            "http",
            f"POST {route}",
            route,
            wanted[b"traceparent"] or None,
            wanted[b"tracestate"] or None,
            attributes,
            parts[3].split(":")[0] if len(parts) > 3 else "",  # the data plane may correct it
        )


def _error_message(body: object) -> str | None:
    """The message of a v2 ``{"error": "..."}`` or OpenAI ``{"error": {"message"}}`` body."""
    try:
        error = orjson.loads(body) if isinstance(body, bytes | bytearray | memoryview) else None
    except orjson.JSONDecodeError:
        return None
    error = error.get("error") if isinstance(error, dict) else None
    if isinstance(error, dict):
        error = error.get("message")
    return error if isinstance(error, str) else None
