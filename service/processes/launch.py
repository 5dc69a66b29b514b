"""Starting the gateway: one process (front ends, data plane and models in one event loop), or
with ``--workers N`` > 1 the supervisor of an executor and N front-end workers."""

from __future__ import annotations

import asyncio

from service.frontends.serve import install_loop, serve
from service.observability import requestlog, tracing
from service.observability.logs import configure_logging
from service.processes.supervisor import supervise
from service.settings import Settings


def run(settings: Settings) -> None:
    configure_logging(settings)
    tracing.destination(settings)  # a bad OTEL_EXPORTER_OTLP_PROTOCOL stops here, before forks
    if settings.worker_count() > 1:
        supervise(settings)  # each child sets up its own tracing and request log
        return
    install_loop()
    requestlog.configure(settings)
    try:
        asyncio.run(serve(settings))
    finally:
        requestlog.shutdown()  # export the spans still queued
