"""REST authorization: an ASGI wrapper in front of the whole app (infer fast path included).

It classifies the call, authorizes it, and serves it with the caller's principal in
:data:`service.security.policy.CURRENT`; a refusal is answered here, in the v2 error shape.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping

from service.errors import InferenceError
from service.security.policy import CURRENT, GROUP_SCOPE, Authorizer, Route

Scope = MutableMapping[str, object]
Message = MutableMapping[str, object]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]
Render = Callable[[Send, InferenceError], Awaitable[None]]


def rest_route(method: str, path: str) -> Route:
    """The group, action, scope and model of a REST call (unknown paths count as metadata)."""
    parts = [part for part in path.split("/") if part]
    if path == "/metrics":
        return Route("metrics", "metrics", "read")
    if parts[:1] == ["v1"] and len(parts) >= 2:
        model = parts[2].split(":")[0] if parts[1] == "models" and len(parts) > 2 else ""
        return Route("inference", "infer", "infer", model)
    if parts[:2] == ["v2", "health"]:
        return Route("health", "health", "read")
    if parts[:2] == ["v2", "repository"]:
        if len(parts) >= 5 and parts[2] == "models" and parts[4] in ("load", "unload"):
            return Route("model-repository", parts[4], "admin", parts[3])
        return Route("model-repository", "index", "read")
    if parts[:2] in (["v2", "systemsharedmemory"], ["v2", "cudasharedmemory"]):
        return Route("shared-memory", "shared-memory", "admin")
    if parts[:2] in (["v2", "trace"], ["v2", "logging"]):
        return Route(parts[1], parts[1], "admin")
    if parts[:2] == ["v2", "models"] and len(parts) >= 3 and parts[2] != "stats":
        model, rest = parts[2], parts[3:]
        if rest[:1] == ["versions"]:
            rest = rest[2:]
        return _model_route(rest[0] if rest else "", model)
    if parts[:3] == ["v2", "models", "stats"]:
        return Route("statistics", "stats", "read")
    return Route("metadata", "metadata", "read")


def _model_route(suffix: str, model: str) -> Route:
    group, action = {
        "": ("metadata", "metadata"),
        "ready": ("health", "ready"),
        "config": ("model-config", "config"),
        "stats": ("statistics", "stats"),
        "infer": ("inference", "infer"),
    }.get(suffix, ("metadata", suffix))
    return Route(group, action, GROUP_SCOPE[group], model)


class AuthMiddleware:
    def __init__(self, app: App, authorizer: Authorizer, render: Render) -> None:
        self.app = app
        self.authorizer = authorizer
        self.render = render

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        raw: list[tuple[bytes, bytes]] = scope["headers"]  # type: ignore[assignment]
        headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in raw}
        route = rest_route(str(scope["method"]), str(scope["path"]))
        try:
            principal = self.authorizer.authorize(route, headers, _client(scope))
        except InferenceError as error:
            await self.render(send, error)
            return
        token = CURRENT.set(principal)
        try:
            await self.app(scope, receive, send)
        finally:
            CURRENT.reset(token)


def _client(scope: Scope) -> str:
    client = scope.get("client")
    if isinstance(client, tuple | list) and len(client) == 2:
        return f"{client[0]}:{client[1]}"
    return ""


def protect(app: App, authorizer: Authorizer, render: Render) -> App:
    """``app`` behind authorization, or ``app`` itself when nothing needs checking."""
    return AuthMiddleware(app, authorizer, render) if authorizer.active else app
