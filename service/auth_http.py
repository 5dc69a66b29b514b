"""REST authorization: an ASGI wrapper in front of the whole app (infer fast path included).

It classifies the call, authorizes it, and serves it with the caller's principal in
:data:`service.auth.CURRENT`; a refusal is answered here, in the v2 error shape.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping

from service.auth import CURRENT, Authorizer, rest_route
from service.errors import InferenceError

Scope = MutableMapping[str, object]
Message = MutableMapping[str, object]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]
Render = Callable[[Send, InferenceError], Awaitable[None]]


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
