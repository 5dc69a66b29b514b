"""gRPC under gevent: one cooperative channel per target, shared and never closed.

grpc's C core must be told to cooperate with gevent before any channel exists. Closing a
channel under gevent can deadlock the whole process when it happens inside the garbage
collector (``tritonclient``'s ``__del__`` closes its channel), which stalls Locust mid-run
or at exit. So every user of a process shares one client per target, kept for the process's
lifetime, whose finaliser does nothing; gRPC multiplexes the users' calls over it.
"""

from __future__ import annotations

from typing import Any

_ready = False
_clients: dict[str, Any] = {}


def ensure_gevent() -> None:
    """Idempotent ``grpc.experimental.gevent.init_gevent()`` (Locust monkey-patches for gevent)."""
    global _ready
    if not _ready:
        from grpc.experimental import gevent as grpc_gevent

        grpc_gevent.init_gevent()
        _ready = True


def shared_client(target: str) -> Any:
    """The process's ``tritonclient.grpc.InferenceServerClient`` for ``target``."""
    ensure_gevent()
    if target not in _clients:
        import tritonclient.grpc as grpcclient

        class _ProcessClient(grpcclient.InferenceServerClient):  # type: ignore[misc]
            def __del__(self) -> None:  # never close from a finaliser (see module doc)
                pass

        _clients[target] = _ProcessClient(target)
    return _clients[target]
