"""Starting the gateway: one process (front ends, data plane and models in one event loop), or
with ``--workers N`` > 1 the supervisor of an executor and N front-end workers. Either way the
log says how ``--workers`` was sized and which layout it gave."""

from __future__ import annotations

import asyncio
import logging
import os

from service.frontends.serve import install_loop, serve
from service.host import cpu_quota, usable_cores
from service.observability import requestlog, tracing
from service.observability.logs import configure_logging
from service.processes.supervisor import supervise
from service.settings import Settings

log = logging.getLogger("infergate")


def run(settings: Settings) -> None:
    configure_logging(settings)
    tracing.destination(settings)  # a bad OTEL_EXPORTER_OTLP_PROTOCOL stops here, before forks
    workers = settings.worker_count()
    quota = cpu_quota()
    log.info(
        "workers=%s: %d usable cores (CPU affinity %d, cgroup CPU quota %s) -> %s",
        settings.workers,
        usable_cores(),
        len(os.sched_getaffinity(0)),
        "none" if quota is None else f"{quota:g}",
        "one process" if workers == 1 else f"{workers} front-end workers and an executor",
    )
    if workers > 1:
        supervise(settings)  # each child sets up its own tracing and request log
        return
    log.info("process layout: one process, pid %d (front ends, data plane, models)", os.getpid())
    install_loop()
    requestlog.configure(settings)
    try:
        asyncio.run(serve(settings))
    finally:
        requestlog.shutdown()  # export the spans still queued
