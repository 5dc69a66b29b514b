"""The servers of one process: REST (uvicorn) and gRPC (grpc.aio) in one event loop over one data
plane, until SIGINT/SIGTERM; then in-flight requests finish and the data plane closes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import grpc
import uvicorn

from service.dataplane.plane import DataPlane
from service.frontends.rest.app import build_app
from service.frontends.rest.connections import ConnectionTally, sweep, with_read_timeout
from service.frontends.tls import uvicorn_options
from service.host import tune_gc
from service.settings import Settings

log = logging.getLogger("infergate")


class _Server(uvicorn.Server):
    """uvicorn re-raises SIGTERM after its own shutdown, which would kill the process before the
    gRPC server and the batchers finish; here a signal only asks every part to stop. The sweep
    of its connections' read and keep-alive deadlines runs while it serves."""

    _sweeper: asyncio.Task[None] | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self._sweeper = asyncio.create_task(sweep(self.server_state.connections))  # type: ignore[arg-type]

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        await super().shutdown(sockets)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.handle_exit, sig, None)
        try:
            yield
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)


def bind_http_socket(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    """Bind the REST socket here, so port 0 gets a free port that is known before serving.
    ``reuse_port``: several processes bind the same port and the kernel spreads connections."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError:
        sock.close()
        raise
    return sock


@dataclass(frozen=True, slots=True)
class WorkerPlace:
    """Where a front-end worker of ``--workers N`` stands: it shares the ports, and the
    connection cap with the others."""

    number: int  # 0 .. count - 1
    count: int
    connections: ConnectionTally


async def serve(
    settings: Settings, dataplane: DataPlane | None = None, place: WorkerPlace | None = None
) -> None:
    """Start everything, serve until SIGINT/SIGTERM, then finish queued work and stop.
    ``dataplane`` and ``place``: a front-end worker's (``--workers N``)."""
    dataplane = dataplane or DataPlane(settings)
    await dataplane.start()
    grpc_server = await _start_grpc(dataplane, settings, place)
    http_socket = bind_http_socket(settings.host, settings.http_port, place is not None)
    server = http_server(dataplane, settings, place)
    tune_gc()
    log.info(
        "HTTP listening on %s:%d (models from %s)",
        settings.host,
        http_socket.getsockname()[1],
        settings.model_repo,
    )
    try:
        # returns after a signal, once in-flight HTTP requests finished
        await server.serve(sockets=[http_socket])
    finally:
        if grpc_server is not None:
            await grpc_server.stop(grace=settings.exit_timeout_s)
        await dataplane.close()
        log.info("stopped")


async def _start_grpc(
    dataplane: DataPlane, settings: Settings, place: WorkerPlace | None
) -> grpc.aio.Server | None:
    if not settings.grpc_port:
        return None
    from service.frontends.grpc.server import start_grpc_server

    # gRPC calls in flight are capped per process: each worker takes its share
    rpc_limit = -(-settings.max_connections // place.count) if place else None
    started = await start_grpc_server(dataplane, settings, place is not None, rpc_limit)
    if started is None:
        return None
    grpc_server, grpc_port = started
    log.info("gRPC listening on %s:%d", settings.host, grpc_port)
    return grpc_server


def http_server(dataplane: DataPlane, settings: Settings, place: WorkerPlace | None) -> _Server:
    """uvicorn over the REST app; the connection cap counts this server's connections, or with
    ``place`` every worker's (each publishes its own count to the shared tally)."""

    def connections() -> int:  # asked only while serving, once ``server`` exists
        return len(server.server_state.connections)

    published: Callable[[], None] | None = None
    count = connections
    if place is not None:
        tally, number = place.connections, place.number
        tally.set(number, 0)  # a replacement worker: its predecessor's connections are gone

        def published() -> None:
            tally.set(number, connections())

        count = tally.total
    config = uvicorn.Config(
        build_app(dataplane, count),
        host=settings.host,
        port=settings.http_port,
        loop="none",
        http=with_read_timeout(settings.http_read_timeout_s, published),
        timeout_graceful_shutdown=settings.exit_timeout_s,
        lifespan="off",
        access_log=False,
        log_level=settings.log_level,
        backlog=4096,
        timeout_keep_alive=30,
        log_config=None,
        # Per-request middleware and headers nobody asked for; a proxy in front sets its own.
        proxy_headers=False,
        server_header=False,
        **uvicorn_options(settings),  # type: ignore[arg-type]
    )
    server = _Server(config)
    return server


def install_loop() -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # uvloop is optional on platforms without it
        pass
