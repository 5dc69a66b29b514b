"""A front-end worker's side of ``--workers N``: the data plane over the executor's models.

A worker runs the same REST and gRPC front ends and the same ``DataPlane`` as a single process
(decode, validation, text, admission, cache, statistics of its requests); only where a request
would enter a batcher it crosses to the executor (``service.processes.executor``). Its repository is
a mirror of the executor's, refreshed from the snapshots the executor pushes; while the executor
is away every model answers 503 and in-flight requests fail with 503 + Retry-After, never hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import cast

from google.protobuf import json_format
from tritonclient.grpc.model_config_pb2 import ModelConfig

from service.backends.base import Backend
from service.cache import ResponseCache
from service.dataplane.batches import Outputs
from service.dataplane.plane import DataPlane
from service.errors import InferenceError, Internal, Unavailable
from service.messages import JsonObject, Tensors
from service.models.repository import IndexRow, ModelEntry, RepositoryView
from service.models.tokenizer import TextTokenizer
from service.models.version import ModelState, ModelVersion, Submission
from service.observability.metrics import ModelCounters, registry_text
from service.observability.metrics import render as render_metrics
from service.processes.ipc import Channel, connect
from service.processes.wire import EntryInfo, Snapshot, VersionInfo
from service.security.policy import Principal
from service.settings import Settings

log = logging.getLogger("infergate.frontend")

#: how often a worker asks its waiting requests' clients whether they are still there
CLIENT_SWEEP_S = 0.1
RESTARTING = "the executor process is restarting"


class ExecutorLink:
    """A worker's connection to the executor, re-established whenever the executor restarts."""

    def __init__(self, socket_path: str, plane: FrontEndPlane) -> None:
        self.socket_path = socket_path
        self.plane = plane
        self.channel: Channel | None = None
        self._watched: dict[int, Callable[[], bool]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._first_snapshot = asyncio.Event()

    @property
    def connected(self) -> bool:
        return self.channel is not None and self.channel.transport is not None

    async def start(self) -> None:
        """Connect, and return once the first snapshot is in (a worker listens only then)."""
        self._tasks = [
            asyncio.create_task(self._keep_connected()),
            asyncio.create_task(self._sweep()),
        ]
        await self._first_snapshot.wait()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self.channel is not None:
            self.channel.close()

    def call(self, kind: str, payload: object) -> asyncio.Future[object]:
        if self.channel is None:
            return cast("asyncio.Future[object]", _failed(self.plane.mirror.down_error()))
        return self.channel.call(kind, payload)

    def submit(
        self, call: tuple[object, ...], client_gone: Callable[[], bool] | None
    ) -> asyncio.Future[Outputs]:
        """Send a SubmitCall's fields (a plain tuple: the cheapest to pickle)."""
        channel = self.channel
        if channel is None:
            return _failed(self.plane.mirror.down_error())
        call_id, future = channel.call_with_id("submit", call)
        if client_gone is not None and call_id:
            self._watched[call_id] = client_gone
        if call_id:
            future.add_done_callback(lambda done: self._settled(call_id, done))
        return cast("asyncio.Future[Outputs]", future)

    def _settled(self, call_id: int, future: asyncio.Future[object]) -> None:
        """A call answered, or cancelled here (its request failed as a whole): the executor
        then need not run it."""
        self._watched.pop(call_id, None)
        if future.cancelled() and self.channel is not None:
            self.channel.notify("cancel", call_id)

    async def _keep_connected(self) -> None:
        while True:
            try:
                channel = await connect(self.socket_path, self.plane.handle, lambda _: None)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            self.channel = channel
            try:
                snapshot = await channel.call("snapshot", None)
                self.plane.mirror.apply(cast(Snapshot, snapshot))
                self._first_snapshot.set()
                log.info("connected to the executor")
            except InferenceError:
                pass  # lost again at once: wait for the close below
            await channel.closed
            self.channel = None
            self._watched.clear()
            self.plane.mirror.executor_lost()
            log.warning("lost the executor; answering 503 until it is back")

    async def _sweep(self) -> None:
        """Tell the executor about clients that hung up, so their requests never run."""
        while True:
            await asyncio.sleep(CLIENT_SWEEP_S)
            channel = self.channel
            if channel is None or not self._watched:
                continue
            for call_id, gone in list(self._watched.items()):
                if gone():
                    del self._watched[call_id]
                    channel.notify("cancel", call_id)


def _failed(error: InferenceError) -> asyncio.Future[Outputs]:
    future: asyncio.Future[Outputs] = asyncio.get_running_loop().create_future()
    future.set_exception(error)
    return future


class RemoteScheduler:
    """A model version's batcher, seen from a worker: requests go to the executor's."""

    pending = 0  # the executor counts queued requests; summed views take its figure

    def __init__(self, link: ExecutorLink, name: str, version: str, token_units: bool) -> None:
        self.link = link
        self.name = name
        self.version = version
        self.token_units = token_units

    def submit(self, submission: Submission) -> asyncio.Future[Outputs]:
        s = submission
        call = (self.name, self.version, s.inputs, s.rows, s.signature, s.priority, s.timeout_us)
        return self.link.submit((*call, s.tokens, s.key, s.arrival_ns, s.admitted), s.client_gone)

    def refusal(
        self, rows: int, units: int, priority: int = 0, timeout_us: int = 0, arrival_ns: int = 0
    ) -> InferenceError | None:
        """The executor holds the queues: it decides when the request reaches it."""
        return None

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

    def down_error(self) -> InferenceError:
        return Unavailable(f"{RESTARTING}; retry", retry_after_s=1)

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
        model.scheduler = RemoteScheduler(self.link, name, version, bool(model.pad_inputs))
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
    """The data plane of a front-end worker: statistics and metrics sum every process."""

    def __init__(self, settings: Settings, socket_path: str) -> None:
        self.link = ExecutorLink(socket_path, self)
        self.mirror = MirrorRepository(settings, self.link)
        super().__init__(settings, self.mirror)
        self.admission.limiter.remote_buckets = self._take_remote

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
        if kind == "snapshot":
            self.mirror.apply(cast(Snapshot, payload))
            return None
        if kind == "partial_stats":
            name, version = cast("tuple[str, str]", payload)
            with contextlib.suppress(InferenceError):
                return self.local_statistics(name, version)
            return {"model_stats": []}
        if kind == "partial_metrics":
            return self.local_counters(), registry_text()
        if kind == "applied":  # answered after the snapshot notice sent before it: in order
            return self.mirror.generation
        raise ValueError(f"unknown call {kind!r}")
