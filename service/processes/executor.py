"""The executor process (``--workers N`` > 1): the one owner of models, batchers and sessions.

Front-end workers (``service.processes.worker``) decode, validate, consult the cache and encode;
every request that must run reaches this process over ``service.processes.ipc``, so each model
version keeps one batcher (batches do not shrink as workers grow) and each model is loaded once (one
ONNX Runtime session set, one CUDA context per GPU). Identical requests from different workers share
one execution here (by their cache key). The executor also keeps the repository's lifecycle: a load
or unload through any worker applies here and reaches every worker as a new snapshot, and the
set of loaded models is written down so a restarted executor brings the same models back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import time
from pathlib import Path
from typing import cast

from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2

from service.cache.stores import LocalStore
from service.dataplane.batching import DynamicBatcher
from service.host import tune_gc
from service.models.repository import ModelRepository
from service.models.sources import make_source
from service.models.version import ModelVersion
from service.processes.ipc import Channel, listen
from service.processes.requests import Desk
from service.processes.routing import OwnedModels, Routes, socket_path
from service.processes.tally import Counts, Tally
from service.processes.wire import EntryInfo, Snapshot, VersionInfo
from service.security.policy import Principal
from service.security.ratelimit import RateLimiter
from service.settings import Settings

log = logging.getLogger("infergate.executor")

#: how often the executor compares the repository with what it last sent the workers
SNAPSHOT_INTERVAL_S = 0.25


class Executor:
    """Executor ``index`` of ``routes``: it owns the models the routes give it (all of them
    when there is one executor). The first also keeps the rate-limit buckets and gathers the
    workers' registries for ``/metrics``."""

    def __init__(
        self, settings: Settings, runtime_dir: Path, index: int = 0, routes: Routes | None = None
    ) -> None:
        self.settings = settings
        self.index = index
        self.socket_path = socket_path(runtime_dir, index)
        self.state_path = runtime_dir / (
            "models.json" if index == 0 else f"models-{index + 1}.json"
        )
        source = make_source(settings)
        if routes is not None and routes.count > 1:
            source = OwnedModels(source, routes, index)
        self.repository = ModelRepository(source, settings, self._attach, self._detach)
        self.limiter = RateLimiter(settings.model_copy(update={"redis_url": None}))
        #: without Redis, the one result cache of every worker (see frontend.ExecutorStore)
        self.results: LocalStore | None = None
        if not settings.redis_url and settings.cache_local_bytes > 0:
            self.results = LocalStore(settings.cache_local_bytes)
        self.channels: set[Channel] = set()
        self.desk = Desk(self.repository, settings, self.results)
        self.tally = Tally(self.repository, self.channels, gathers_registries=index == 0)
        self._generation = time.monotonic_ns()
        self._sent: tuple[object, ...] = ()
        self._started = False
        self._instances: dict[int, int] = {}  # id(ModelVersion) -> instance number
        self._last_instance = 0
        self._server: asyncio.AbstractServer | None = None
        self._pusher: asyncio.Task[None] | None = None

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        """Listen for workers at once (they answer 503 meanwhile), then load the models."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)
        self._server = await listen(self.socket_path, self._handle, self._connected, self._lost)
        log.info("executor listening on %s", self.socket_path)
        self._pusher = asyncio.create_task(self._push_changes())
        await self.repository.start()
        await self._restore()
        self._started = True
        self._push()

    async def stop(self) -> None:
        """Finish what is queued and running, then close the models."""
        log.info("executor stopping: finishing queued batches")
        if self._pusher is not None:
            self._pusher.cancel()
        if self._server is not None:
            self._server.close()
        for channel in list(self.channels):
            channel.close()
        await self.repository.close()
        await self.limiter.close()

    async def run(self) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await self.start()
        tune_gc()
        await stop.wait()
        await self.stop()

    def _attach(self, model: ModelVersion) -> None:
        model.scheduler = DynamicBatcher(model, model.stats, self.settings)

    async def _detach(self, model: ModelVersion) -> None:
        self._instances.pop(id(model), None)  # its id may be reused by a later object
        await model.scheduler.close()
        await model.backend.close()

    def _connected(self, channel: Channel) -> None:
        self.channels.add(channel)
        self.desk.connected(channel)

    def _lost(self, channel: Channel) -> None:
        self.channels.discard(channel)
        self.desk.lost(channel)
        self.tally.lost(channel)

    # -- calls from workers ---------------------------------------------------------------
    def _handle(self, kind: str, payload: object, channel: Channel, call_id: int) -> object:
        if kind == "requests":
            self.desk.requests(channel, cast("list[tuple[object, ...]]", payload))
            return None
        if kind == "cancel":
            self.desk.cancel(channel, cast("list[int]", payload))
            return None
        if kind == "counts":
            self.tally.add(cast(Counts, payload))
            return None
        if kind == "admit":
            name, version, *figures = cast("tuple[object, ...]", payload)
            model = self.repository.use(str(name), str(version))
            return model.scheduler.admit(*cast("list[int]", figures))
        if kind == "snapshot":
            return self.snapshot()
        if kind == "cache_get":
            return self.results.get_now(str(payload)) if self.results is not None else None
        if kind == "load":
            name, override = cast("tuple[str, str | None]", payload)
            return self._load(name, override)
        if kind == "unload":
            return self._unload(str(payload))
        if kind == "demand":
            return self._demand(str(payload))
        if kind == "index":
            return self.repository.index()
        if kind == "stats":
            name, version = cast("tuple[str, str]", payload)
            return self.tally.statistics(name, version)
        if kind == "metrics":
            return self.tally.metrics()
        if kind == "take_local":
            principal, rows = cast("tuple[Principal, int]", payload)
            return self.limiter.take_local(principal, rows)
        raise ValueError(f"unknown call {kind!r}")

    async def _load(self, name: str, override: str | None) -> int:
        config = None
        if override is not None:
            config = json_format.Parse(override, model_config_pb2.ModelConfig())
        await self.repository.load(name, config)
        return await self._changed()

    async def _unload(self, name: str) -> int:
        await self.repository.unload(name)
        return await self._changed()

    async def _demand(self, name: str) -> int:
        """A worker's request needs ``name`` loaded (on_demand): the asking worker has the new
        snapshot before the reply (the others within a push interval)."""
        try:
            await self.repository.demand(name)
        finally:
            generation = self._push()
        return generation

    async def _changed(self) -> int:
        """After a load or unload: write the loaded set down, send every worker the snapshot
        and return once each has applied it, so the change is everywhere when the call ends."""
        self._remember()
        generation = self._push()
        await self.tally.fan_out("applied", generation)
        return generation

    # -- restarts: the loaded set outlives the process ------------------------------------
    def _remember(self) -> None:
        wanted = [name for name, entry in self.repository.models.items() if entry.wanted]
        overrides = {}
        for name in wanted:
            override = self.repository.overrides.get(name)
            if override is not None:
                overrides[name] = json_format.MessageToJson(override)
        state = {"wanted": wanted, "overrides": overrides, "known": list(self.repository.models)}
        temporary = self.state_path.with_suffix(".tmp")
        temporary.write_text(json.dumps(state))
        temporary.replace(self.state_path)

    async def _restore(self) -> None:
        """After a restart, load and unload what the workers' calls had loaded and unloaded."""
        if not self.state_path.is_file() or self.settings.model_control_mode != "explicit":
            return
        state = json.loads(self.state_path.read_text())
        log.info("executor restarted: restoring the loaded models %s", state["wanted"])
        for name in state["wanted"]:
            override = state["overrides"].get(name)
            try:
                await self._load(name, override)
            except Exception as exc:  # a model that fails now is UNAVAILABLE with its reason
                log.error("restoring model %s failed: %s", name, exc)
        for name in set(state["known"]) - set(state["wanted"]):
            if name in self.repository.models:
                await self.repository.unload(name)

    # -- snapshots ------------------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        return Snapshot(self._generation, self._started, tuple(self._entries()))

    def _entries(self) -> list[EntryInfo]:
        entries = []
        for name, entry in sorted(self.repository.models.items()):
            versions = {
                version: VersionInfo(
                    self._instance(model),
                    model.config.SerializeToString(),
                    model.backend.healthy(),
                    model.tokenizer is not None,
                )
                for version, model in entry.versions.items()
            }
            entries.append(
                EntryInfo(
                    name, entry.state, entry.reason, entry.wanted, entry.default_version, versions
                )
            )
        return entries

    def _instance(self, model: ModelVersion) -> int:
        """A number per loaded version object, never reused (workers rebuild on a new one)."""
        number = self._instances.get(id(model))
        if number is None:
            self._last_instance += 1
            number = self._instances[id(model)] = self._last_instance
        return number

    def _digest(self) -> tuple[object, ...]:
        """What a snapshot shows, without serializing configs (compared every interval)."""
        entries = sorted(self.repository.models.items())
        return (
            self._started,
            *(
                (name, e.state, e.reason, e.wanted, e.default_version, self._health(e.versions))
                for name, e in entries
            ),
        )

    def _health(self, versions: dict[str, ModelVersion]) -> tuple[object, ...]:
        return tuple(
            (version, self._instance(model), model.backend.healthy())
            for version, model in sorted(versions.items())
        )

    def _push(self) -> int:
        """Send every worker the current snapshot; returns its generation. Generations follow
        the system's monotonic clock, so a restarted executor's are newer than its
        predecessor's, and a worker can always tell the newest snapshot it was sent."""
        self._generation = max(self._generation + 1, time.monotonic_ns())
        self._sent = self._digest()
        snapshot = self.snapshot()
        for channel in list(self.channels):
            channel.notify("snapshot", snapshot)
        return self._generation

    async def _push_changes(self) -> None:
        """Poll-mode reloads and backend health changes reach the workers within an interval."""
        while True:
            await asyncio.sleep(SNAPSHOT_INTERVAL_S)
            if self._digest() != self._sent:
                self._push()


def run_executor(
    settings: Settings, runtime_dir: Path, index: int = 0, routes: Routes | None = None
) -> None:
    asyncio.run(Executor(settings, runtime_dir, index, routes).run())
