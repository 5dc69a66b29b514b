"""A front-end worker's side of ``--workers N``: the data plane over the executor's models.

A worker runs the same REST and gRPC front ends and the same ``DataPlane`` as a single process
(decode, validation, text, admission, cache, statistics of its requests); only where a request
would enter a batcher it crosses to the executor (``service.processes.executor``). Its repository is
a mirror of the executor's, refreshed from the snapshots the executor pushes; while the executor
is away every model answers 503 and in-flight requests fail with 503 + Retry-After, never hang.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import cast

from google.protobuf import json_format
from tritonclient.grpc.model_config_pb2 import ModelConfig

from service.backends.base import Backend
from service.cache import ResponseCache
from service.dataplane.batches import Outputs
from service.dataplane.plane import DataPlane
from service.dataplane.shedding import QueuePolicy, budget_us, refusal_from_figures
from service.errors import InferenceError, Internal
from service.messages import JsonObject, Tensors
from service.models.repository import IndexRow, ModelEntry, RepositoryView
from service.models.tokenizer import TextTokenizer
from service.models.version import ModelState, ModelVersion, Submission
from service.observability.metrics import ModelCounters, registry_text
from service.observability.metrics import render as render_metrics
from service.processes.ipc import Channel
from service.processes.link import RESTARTING, ExecutorLink
from service.processes.tally import SHIP_INTERVAL_S, Counts
from service.processes.wire import Answers, EntryInfo, Snapshot, VersionInfo
from service.security.policy import Principal
from service.settings import Settings

log = logging.getLogger("infergate.frontend")


class RemoteScheduler:
    """A model version's batcher, seen from a worker: requests go to the executor's."""

    pending = 0  # the executor counts queued requests; summed views take its figure

    def __init__(self, link: ExecutorLink, model: ModelVersion, settings: Settings) -> None:
        self.link = link
        self.name = model.name
        self.version = model.version
        self.token_units = bool(model.pad_inputs)
        config = model.config.dynamic_batching
        levels = max(config.priority_levels, 1)
        self.default_level = config.default_priority_level or levels
        self.policies = [
            QueuePolicy.from_config(
                config.priority_queue_policy.get(level, config.default_queue_policy), settings
            )
            for level in range(1, levels + 1)
        ]
        self.max_wait_us = int(settings.max_queue_wait_ms * 1000)

    def submit(self, submission: Submission) -> asyncio.Future[Outputs]:
        s = submission
        call = (self.name, self.version, s.inputs, s.rows, s.signature, s.priority, s.timeout_us)
        nbytes = sum(array.nbytes for array in s.inputs.values())
        trace = None if s.timing is None else s.timing.traceparent
        entry = (*call, s.tokens, s.key, s.arrival_ns, s.admitted, trace)
        future = self.link.submit(entry, nbytes, s.client_gone)
        if s.timing is not None:
            future.add_done_callback(s.timing.received)  # the times the executor measured
        return future

    def refusal(
        self, rows: int, units: int, priority: int = 0, timeout_us: int = 0, arrival_ns: int = 0
    ) -> InferenceError | None:
        """Refused here, before the body is read, when the executor's latest figures for this
        queue (a few ms old at most) already say the request would stay past its budget; else
        the executor decides when the request reaches it."""
        figures = self.link.figures.get((self.name, self.version))
        if figures is None:
            return None
        level = priority or self.default_level
        policy = self.policies[min(max(level, 1), len(self.policies)) - 1]
        budget = budget_us(policy, timeout_us, self.max_wait_us)
        return refusal_from_figures(self.name, figures, units, budget, arrival_ns)

    async def admit(
        self, rows: int, units: int, priority: int = 0, timeout_us: int = 0, arrival_ns: int = 0
    ) -> None:
        """One round trip for a request of many parts, admitted (or refused) as a whole."""
        figures = (rows, units, priority, timeout_us, arrival_ns)
        await self.link.call("admit", (self.name, self.version, *figures))

    def units(self, rows: int, tokens: int) -> int:
        return rows * tokens if self.token_units and tokens else rows

    async def close(self) -> None:
        return None


class RemoteBackend(Backend):
    """Stands for the executor's sessions: only health is asked of it here."""

    def __init__(self, link: ExecutorLink, healthy: bool) -> None:
        self.link = link
        self.up = healthy

    async def execute(self, inputs: Tensors, output_names: list[str]) -> Tensors:
        raise Internal("a front-end worker does not execute models")

    def healthy(self) -> bool:
        return self.up and self.link.connected


class MirrorRepository(RepositoryView):
    """The executor's repository as snapshots describe it; control calls go to the executor."""

    def __init__(self, settings: Settings, link: ExecutorLink) -> None:
        super().__init__()
        self.settings = settings
        self.link = link
        self.generation = -1
        self.started = False
        self._instances: dict[tuple[str, str], int] = {}

    def ready(self) -> bool:
        return self.link.connected and self.started and super().ready()

    def apply(self, snapshot: Snapshot) -> None:
        """Take a snapshot newer than the last. The reply to a worker's own "snapshot" call can
        arrive after a newer pushed one (a notice is applied as it is read, the reply when its
        awaiting task resumes): the generation, not the arrival order, decides."""
        if snapshot.generation <= self.generation:
            return
        self.generation, self.started = snapshot.generation, snapshot.started
        seen = set()
        for info in snapshot.entries:
            seen.add(info.name)
            self._apply_entry(info)
        for name in set(self.models) - seen:
            if snapshot.started:
                del self.models[name]
            else:  # not loaded again yet by a restarted executor
                self._mark_down(self.models[name])

    def _apply_entry(self, info: EntryInfo) -> None:
        entry = self.models.setdefault(info.name, ModelEntry(info.name))
        entry.state, entry.reason, entry.wanted = info.state, info.reason, info.wanted
        entry.default_version = info.default_version
        versions: dict[str, ModelVersion] = {}
        for version, details in info.versions.items():
            current = entry.versions.get(version)
            if (
                current is not None
                and self._instances.get((info.name, version)) == details.instance
            ):
                cast(RemoteBackend, current.backend).up = details.healthy
                versions[version] = current
                continue
            versions[version] = self._build(info.name, version, details)
            self._instances[(info.name, version)] = details.instance
        entry.versions = versions

    def _build(self, name: str, version: str, details: VersionInfo) -> ModelVersion:
        config = ModelConfig()
        config.ParseFromString(details.config)
        tokenizer = None
        if details.has_tokenizer:
            folder = Path(self.settings.model_repo) / name
            inputs = {tensor.name for tensor in config.input}
            try:
                tokenizer = TextTokenizer.load([folder / version, folder], config, inputs)
            except ValueError as exc:
                log.error("model %s version %s: tokenizer not loaded here: %s", name, version, exc)
        model = ModelVersion(
            name, version, config, RemoteBackend(self.link, details.healthy), tokenizer
        )
        model.scheduler = RemoteScheduler(self.link, model, self.settings)
        return model

    def executor_lost(self) -> None:
        self.started = False
        for entry in self.models.values():
            self._mark_down(entry)

    def _mark_down(self, entry: ModelEntry) -> None:
        entry.state, entry.reason, entry.versions = ModelState.UNAVAILABLE, RESTARTING, {}
        self._instances = {key: n for key, n in self._instances.items() if key[0] != entry.name}

    # -- control, carried out by the executor ----------------------------------------------
    async def index(self) -> list[IndexRow]:
        return cast("list[IndexRow]", await self.link.call("index", None))

    async def load(self, name: str, override: ModelConfig | None = None) -> None:
        text = None if override is None else json_format.MessageToJson(override)
        await self.link.call("load", (name, text))  # the snapshot arrives before the reply

    async def unload(self, name: str) -> None:
        await self.link.call("unload", name)

    async def demand(self, name: str) -> None:
        await self.link.call("demand", name)  # the snapshot arrives before the reply

    async def start(self) -> None:
        await self.link.start()

    async def close(self) -> None:
        await self.link.close()


class ExecutorStore:
    """The executor's result LRU as a cache store. ``put`` does nothing: the executor stores a
    result itself the moment its execution ends, so an identical request arriving on another
    worker right after finds it (there is no window between the run and the store)."""

    name = "executor"

    def __init__(self, link: ExecutorLink) -> None:
        self.link = link

    async def start(self) -> None:
        return None

    async def get(self, key: str) -> bytes | None:
        try:
            return cast("bytes | None", await self.link.call("cache_get", key))
        except InferenceError:  # the executor is away: a miss
            return None

    def put(self, key: str, value: bytes, ttl_s: float) -> None:
        return None

    async def close(self) -> None:
        return None


class FrontEndPlane(DataPlane):
    """The data plane of a front-end worker: what it counts is shipped to the executor, which
    holds every process's counts (``service.processes.tally``)."""

    def __init__(self, settings: Settings, socket_path: str) -> None:
        self.link = ExecutorLink(socket_path, self.handle)
        self.mirror = MirrorRepository(settings, self.link)
        self.link.mirror = self.mirror
        super().__init__(settings, self.mirror)
        self.admission.limiter.remote_buckets = self._take_remote
        self._shipping: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await super().start()
        self._shipping = asyncio.create_task(self._ship_periodically())

    async def close(self) -> None:
        if self._shipping is not None:
            self._shipping.cancel()
        self.ship()  # what was counted since the last time, before the link goes
        await super().close()

    def ship(self) -> None:
        """Send the executor what this worker counted since the last time (never while the
        link is down: what it counts meanwhile goes with the next frame)."""
        channel = self.link.channel
        if channel is None or channel.transport is None:
            return
        counts: Counts = {}
        for model in self.repository.select():
            taken = model.stats.take_counts()
            if taken is not None:
                counts[(model.name, model.version)] = (taken, None)
        if self.cache is not None:
            for key, figures in self.cache.take_counts().items():
                counts[key] = (counts.get(key, (None, None))[0], figures)
        if counts:
            channel.notify("counts", counts)

    async def _ship_periodically(self) -> None:
        while True:
            await asyncio.sleep(SHIP_INTERVAL_S)
            self.ship()

    def _response_cache(self) -> ResponseCache:
        """With Redis, every worker uses it directly; without, the executor's in-process LRU is
        the one cache of all workers (a hit costs one round trip to it)."""
        if self.settings.redis_url or self.settings.cache_local_bytes <= 0:
            return super()._response_cache()
        return ResponseCache(self.settings, store=ExecutorStore(self.link))

    async def _take_remote(self, principal: Principal, rows: int) -> float:
        return cast(float, await self.link.call("take_local", (principal, rows)))

    async def model_statistics(self, name: str = "", version: str = "") -> JsonObject:
        """Every process's counts summed (by the executor, which asks each worker)."""
        local = self.local_statistics(name, version)  # NotFound / Unavailable, with the reason
        try:
            return cast(JsonObject, await self.link.call("stats", (name, version)))
        except InferenceError:  # the executor is away: this worker's own counts
            return local

    async def metrics(self) -> bytes:
        """Every process's counters and registry summed; this worker's alone while the executor
        is away (a scrape then still answers, with what this process counted)."""
        try:
            counters, registry = cast(
                "tuple[list[ModelCounters], bytes]", await self.link.call("metrics", None)
            )
        except InferenceError:
            counters, registry = self.local_counters(), registry_text()
        return render_metrics(counters, registry)

    def handle(self, kind: str, payload: object, channel: Channel, call_id: int) -> object:
        """What the executor asks of this worker."""
        if kind == "answers":
            self.link.answered(cast(Answers, payload))
            return None
        if kind == "snapshot":
            self.mirror.apply(cast(Snapshot, payload))
            return None
        if kind == "ship":  # the counts go first, in order on the channel, then the reply
            self.ship()
            return None
        if kind == "ship_metrics":
            self.ship()
            return registry_text()
        if kind == "applied":  # answered after the snapshot notice sent before it: in order
            return self.mirror.generation
        raise ValueError(f"unknown call {kind!r}")
