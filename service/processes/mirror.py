"""A front-end worker's view of the executors' models: a mirror filled from their snapshots,
whose versions schedule remotely (:class:`RemoteScheduler`: requests go to the owning
executor's batcher) and stand in for remote sessions (:class:`RemoteBackend`: health only)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import cast

from google.protobuf import json_format
from tritonclient.grpc.model_config_pb2 import ModelConfig

from service.backends.base import Backend
from service.dataplane.batches import Outputs
from service.dataplane.shedding import budget_us, priority_levels, refusal_from_figures
from service.errors import InferenceError, Internal
from service.messages import Tensors
from service.models.repository import IndexRow, ModelEntry, RepositoryView
from service.models.tokenizer import TextTokenizer
from service.models.version import ModelState, ModelVersion, Submission
from service.processes.link import RESTARTING, ExecutorLink
from service.processes.routing import Routes
from service.processes.wire import EntryInfo, Snapshot, VersionInfo
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
        self.default_level, self.policies = priority_levels(config, settings)
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
    """The executors' repositories as their snapshots describe them (each executor owns some
    models: ``service.processes.routing``); control calls go to the executor that owns the
    model. While an executor is away its models answer 503, the others keep serving."""

    def __init__(self, settings: Settings, links: list[ExecutorLink], routes: Routes) -> None:
        super().__init__()
        self.settings = settings
        self.links = links
        self.routes = routes
        self.generations = [-1] * len(links)
        self.started = [False] * len(links)
        self._owner: dict[str, int] = {}  # model -> the executor whose snapshots hold it
        self._instances: dict[tuple[str, str], int] = {}

    def link_of(self, name: str) -> ExecutorLink:
        """The link to the executor that owns model ``name``."""
        return self.links[self.routes.of(name) if len(self.links) > 1 else 0]

    def ready(self) -> bool:
        connected = all(link.connected for link in self.links)
        return connected and all(self.started) and super().ready()

    def source(self, index: int) -> Source:
        return Source(self, index)

    def apply(self, snapshot: Snapshot, source: int = 0) -> None:
        """Take a snapshot newer than the last of its executor. The reply to a worker's own
        "snapshot" call can arrive after a newer pushed one (a notice is applied as it is read,
        the reply when its awaiting task resumes): the generation, not the arrival order,
        decides."""
        if snapshot.generation <= self.generations[source]:
            return
        self.generations[source], self.started[source] = snapshot.generation, snapshot.started
        seen = set()
        for info in snapshot.entries:
            seen.add(info.name)
            self._owner[info.name] = source
            self._apply_entry(info)
        for name in [n for n, owner in self._owner.items() if owner == source and n not in seen]:
            if snapshot.started:
                del self.models[name], self._owner[name]
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
        link = self.link_of(name)
        model = ModelVersion(name, version, config, RemoteBackend(link, details.healthy), tokenizer)
        model.scheduler = RemoteScheduler(link, model, self.settings)
        return model

    def executor_lost(self, source: int = 0) -> None:
        self.started[source] = False
        for name, owner in self._owner.items():
            if owner == source:
                self._mark_down(self.models[name])

    def _mark_down(self, entry: ModelEntry) -> None:
        entry.state, entry.reason, entry.versions = ModelState.UNAVAILABLE, RESTARTING, {}
        self._instances = {key: n for key, n in self._instances.items() if key[0] != entry.name}

    # -- control, carried out by the executors ---------------------------------------------
    async def index(self) -> list[IndexRow]:
        """Every executor's index; the models of one that is away, as this mirror has them."""
        replies = await asyncio.gather(
            *(link.call("index", None) for link in self.links), return_exceptions=True
        )
        rows: list[IndexRow] = []
        for source, reply in enumerate(replies):
            if isinstance(reply, InferenceError) and len(self.links) == 1:
                raise reply
            if isinstance(reply, BaseException):
                owned = sorted(name for name, owner in self._owner.items() if owner == source)
                rows += [
                    IndexRow(name, ModelState.UNAVAILABLE, reason=RESTARTING) for name in owned
                ]
            else:
                rows += cast("list[IndexRow]", reply)
        return sorted(rows, key=lambda row: (row.name, int(row.version or 0)))

    async def load(self, name: str, override: ModelConfig | None = None) -> None:
        text = None if override is None else json_format.MessageToJson(override)
        await self.link_of(name).call("load", (name, text))  # the snapshot comes before the reply

    async def unload(self, name: str) -> None:
        await self.link_of(name).call("unload", name)

    async def demand(self, name: str) -> None:
        await self.link_of(name).call("demand", name)  # the snapshot comes before the reply

    async def start(self) -> None:
        await asyncio.gather(*(link.start() for link in self.links))

    async def close(self) -> None:
        for link in self.links:
            await link.close()


class Source:
    """One executor's side of the mirror: what its link tells it."""

    def __init__(self, mirror: MirrorRepository, index: int) -> None:
        self.mirror = mirror
        self.index = index

    def apply(self, snapshot: Snapshot) -> None:
        self.mirror.apply(snapshot, self.index)

    def executor_lost(self) -> None:
        self.mirror.executor_lost(self.index)
