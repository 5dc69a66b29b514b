"""A front-end worker's side of ``--workers N``: the data plane over the executors' models.

A worker runs the same REST and gRPC front ends and the same ``DataPlane`` as a single process
(decode, validation, text, admission, cache); only where a request would enter a batcher it
crosses to the executor that owns the model (``service.processes.executor``), over one link to
each (``service.processes.link``). Its repository is a mirror of theirs
(``service.processes.mirror``); while an executor is away its models answer 503 and its
requests in flight fail with 503 + Retry-After, never hang. What a worker counts is shipped to
the executors, which hold every process's counts (``service.processes.tally``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import cast

from service.cache import ResponseCache
from service.dataplane.plane import DataPlane
from service.errors import InferenceError
from service.messages import JsonObject
from service.observability.metrics import ModelCounters, merge_exposition, registry_text
from service.observability.metrics import render as render_metrics
from service.processes.ipc import Channel, Handler
from service.processes.link import ExecutorLink
from service.processes.mirror import MirrorRepository
from service.processes.routing import Routes
from service.processes.tally import SHIP_INTERVAL_S, Counts
from service.processes.wire import Snapshot
from service.security.policy import Principal
from service.settings import Settings

log = logging.getLogger("infergate.frontend")


class ExecutorStore:
    """The executor's result LRU as a cache store. ``put`` does nothing: the executor stores a
    result itself the moment its execution ends, so an identical request arriving on another
    worker right after finds it (there is no window between the run and the store)."""

    name = "executor"

    def __init__(self, mirror: MirrorRepository) -> None:
        self.mirror = mirror

    async def start(self) -> None:
        return None

    async def get(self, key: str) -> bytes | None:
        """From the executor that owns the key's model (``{namespace}:v1:{model}:{hash}``)."""
        link = self.mirror.link_of(key.rsplit(":", 2)[-2])
        try:
            return cast("bytes | None", await link.call("cache_get", key))
        except InferenceError:  # the executor is away: a miss
            return None

    def put(self, key: str, value: bytes, ttl_s: float) -> None:
        return None

    async def close(self) -> None:
        return None


class FrontEndPlane(DataPlane):
    """The data plane of a front-end worker, over one link to each executor (``socket_paths``,
    in the executors' order; ``routes`` says which owns which model)."""

    def __init__(
        self, settings: Settings, socket_paths: str | Sequence[str], routes: Routes | None = None
    ) -> None:
        paths = [socket_paths] if isinstance(socket_paths, str) else list(socket_paths)
        self.links = [ExecutorLink(path, self._handler(i)) for i, path in enumerate(paths)]
        self.link = self.links[0]  # the first executor also keeps the rate-limit buckets
        self.routes = routes or Routes(settings.model_copy(update={"executors": 1}), names=())
        self.mirror = MirrorRepository(settings, self.links, self.routes)
        for index, link in enumerate(self.links):
            link.mirror = self.mirror.source(index)
        super().__init__(settings, self.mirror)
        self.admission.limiter.remote_buckets = self._take_remote
        self._shipping: asyncio.Task[None] | None = None

    def _handler(self, source: int) -> Handler:
        def handle(kind: str, payload: object, channel: Channel, call_id: int) -> object:
            return self.handle(kind, payload, source)

        return handle

    async def start(self) -> None:
        await super().start()
        self._shipping = asyncio.create_task(self._ship_periodically())

    async def close(self) -> None:
        if self._shipping is not None:
            self._shipping.cancel()
        self.ship()  # what was counted since the last time, before the links go
        await super().close()

    def ship(self) -> None:
        """Send each executor what this worker counted of its models since the last time
        (never while its link is down: those counts go with the next frame)."""
        counts: Counts = {}
        for model in self.repository.select():
            if self.mirror.link_of(model.name).connected:
                taken = model.stats.take_counts()
                if taken is not None:
                    counts[(model.name, model.version)] = (taken, None)
        if self.cache is not None:
            for key, figures in self.cache.take_counts().items():
                counts[key] = (counts.get(key, (None, None))[0], figures)
        parts: dict[int, Counts] = {}
        for key, value in counts.items():
            parts.setdefault(self.links.index(self.mirror.link_of(key[0])), {})[key] = value
        for index, part in parts.items():
            channel = self.links[index].channel
            if channel is not None:
                channel.notify("counts", part)

    async def _ship_periodically(self) -> None:
        while True:
            await asyncio.sleep(SHIP_INTERVAL_S)
            self.ship()

    def _response_cache(self) -> ResponseCache:
        """With Redis, every worker uses it directly; without, the executors' in-process LRUs
        are the one cache of all workers (a hit costs one round trip to one)."""
        if self.settings.redis_url or self.settings.cache_local_bytes <= 0:
            return super()._response_cache()
        return ResponseCache(self.settings, store=ExecutorStore(self.mirror))

    async def _take_remote(self, principal: Principal, rows: int) -> float:
        return cast(float, await self.link.call("take_local", (principal, rows)))

    async def model_statistics(self, name: str = "", version: str = "") -> JsonObject:
        """Every process's counts summed, by the executors (each asks every worker to ship
        first); this worker's own counts while one is away."""
        local = self.local_statistics(name, version)  # NotFound / Unavailable, with the reason
        links = [self.mirror.link_of(name)] if name else self.links
        try:
            parts = await asyncio.gather(*(link.call("stats", (name, version)) for link in links))
        except InferenceError:
            return local
        entries = [entry for part in parts for entry in cast(JsonObject, part)["model_stats"]]  # type: ignore[attr-defined]
        entries.sort(key=lambda entry: (entry["name"], int(entry["version"])))
        return {"model_stats": entries}

    async def metrics(self) -> bytes:
        """Every process's counters and registry summed, over the executors that answer; this
        worker's alone while none does (a scrape then still answers, with what it counted)."""
        parts = await asyncio.gather(
            *(link.call("metrics", None) for link in self.links), return_exceptions=True
        )
        replies = [
            cast("tuple[list[ModelCounters], bytes]", part)
            for part in parts
            if not isinstance(part, BaseException)
        ]
        if not replies:
            return render_metrics(self.local_counters(), registry_text())
        counters = sorted(
            (entry for reply in replies for entry in reply[0]),
            key=lambda entry: (entry.model, int(entry.version)),
        )
        return render_metrics(counters, merge_exposition(reply[1] for reply in replies))

    def handle(self, kind: str, payload: object, source: int) -> object:
        """What executor ``source`` asks of this worker."""
        if kind == "snapshot":
            self.mirror.apply(cast(Snapshot, payload), source)
            return None
        if kind == "ship":  # the counts go first, in order on the channel, then the reply
            self.ship()
            return None
        if kind == "ship_metrics":
            self.ship()
            return registry_text()
        if kind == "applied":  # answered after the snapshot notice sent before it: in order
            return self.mirror.generations[source]
        raise ValueError(f"unknown call {kind!r}")
