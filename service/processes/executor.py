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
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2

from service.cache import codec
from service.cache.response_cache import SharedOutputs
from service.cache.stores import LocalStore
from service.dataplane.batches import Outputs
from service.dataplane.batching import DynamicBatcher
from service.errors import Unavailable
from service.host import tune_gc
from service.messages import JsonObject
from service.models.repository import ModelRepository
from service.models.sources import make_source
from service.models.version import ModelVersion, Submission
from service.observability.metrics import (
    ModelCounters,
    merge_counters,
    merge_exposition,
    registry_text,
)
from service.observability.statistics import merge_statistics
from service.processes.ipc import Channel, listen
from service.processes.wire import EntryInfo, Snapshot, SubmitCall, VersionInfo
from service.security.policy import Principal
from service.security.ratelimit import RateLimiter
from service.settings import Settings

log = logging.getLogger("infergate.executor")

#: how often the executor compares the repository with what it last sent the workers
SNAPSHOT_INTERVAL_S = 0.25
#: a worker that does not answer a statistics fan-out within this is left out of the sums
FAN_OUT_TIMEOUT_S = 5.0


@dataclass(slots=True)
class _Flight:
    future: asyncio.Future[Outputs]
    watchers: list[tuple[Channel, int]]


class Executor:
    def __init__(self, settings: Settings, runtime_dir: Path) -> None:
        self.settings = settings
        self.socket_path = str(runtime_dir / "executor.sock")
        self.state_path = runtime_dir / "models.json"
        self.repository = ModelRepository(
            make_source(settings), settings, self._attach, self._detach
        )
        self.limiter = RateLimiter(settings.model_copy(update={"redis_url": None}))
        #: without Redis, the one result cache of every worker (see frontend.ExecutorStore)
        self.results: LocalStore | None = None
        if not settings.redis_url and settings.cache_local_bytes > 0:
            self.results = LocalStore(settings.cache_local_bytes)
        self.channels: set[Channel] = set()
        self._cancelled: dict[Channel, set[int]] = {}
        self._flights: dict[str, _Flight] = {}
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
        self._cancelled[channel] = set()

    def _lost(self, channel: Channel) -> None:
        self.channels.discard(channel)
        self._cancelled.pop(channel, None)

    # -- calls from workers ---------------------------------------------------------------
    def _handle(self, kind: str, payload: object, channel: Channel, call_id: int) -> object:
        if kind == "submit":
            return self._submit(
                SubmitCall._make(cast("tuple[object, ...]", payload)), channel, call_id
            )
        if kind == "cancel":
            assert isinstance(payload, int)
            cancelled = self._cancelled.get(channel)
            if cancelled is not None:
                cancelled.add(payload)
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
            return self._statistics(name, version)
        if kind == "metrics":
            return self._metrics()
        if kind == "take_local":
            principal, rows = cast("tuple[Principal, int]", payload)
            return self.limiter.take_local(principal, rows)
        raise ValueError(f"unknown call {kind!r}")

    def _submit(self, call: SubmitCall, channel: Channel, call_id: int) -> asyncio.Future[Outputs]:
        model = self.repository.use(call.model, call.version)
        watcher = (channel, call_id)
        if call.key is not None:
            flight = self._flights.get(call.key)
            if flight is not None and not flight.future.done():
                flight.watchers.append(watcher)
                return _shared(flight.future)
        watchers = [watcher]
        submission = Submission(
            call.inputs,
            call.rows,
            call.signature,
            call.priority,
            call.timeout_us,
            lambda: all(self._gone(one) for one in watchers),
            call.tokens,
            arrival_ns=call.arrival_ns,
            admitted=call.admitted,
        )
        future = model.scheduler.submit(submission)
        if call.key is not None:
            key, flight = call.key, _Flight(future, watchers)
            self._flights[key] = flight
            future.add_done_callback(lambda _: self._land(key, flight))
        else:
            future.add_done_callback(lambda _: self._forget(watcher))
        return future

    def _gone(self, watcher: tuple[Channel, int]) -> bool:
        """Whether the client behind a call hung up or its worker cancelled it (the worker said
        so, or the worker died)."""
        channel, call_id = watcher
        cancelled = self._cancelled.get(channel)
        return cancelled is None or call_id in cancelled

    def _forget(self, watcher: tuple[Channel, int]) -> None:
        self._cancelled.get(watcher[0], set()).discard(watcher[1])

    def _land(self, key: str, flight: _Flight) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]
        for watcher in flight.watchers:
            self._forget(watcher)
        future = flight.future
        if self.results is None or future.cancelled() or future.exception() is not None:
            return
        try:
            value = codec.encode(future.result())
        except codec.Unencodable:
            return
        if len(value) <= self.settings.cache_max_entry_bytes:
            self.results.set_now(key, value, self.settings.cache_ttl_s)

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
        await self._fan_out("applied", generation)
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

    # -- statistics summed over every process ---------------------------------------------
    async def _fan_out(self, kind: str, payload: object) -> list[object]:
        calls = [channel.call(kind, payload) for channel in list(self.channels)]
        if not calls:
            return []
        done, _ = await asyncio.wait(calls, timeout=FAN_OUT_TIMEOUT_S)
        return [call.result() for call in done if call.exception() is None]

    async def _statistics(self, name: str, version: str) -> JsonObject:
        own = [model.stats.to_dict() for model in self.repository.select(name, version)]
        parts = await self._fan_out("partial_stats", (name, version))
        return merge_statistics([{"model_stats": own}, *parts])  # type: ignore[list-item]

    async def _metrics(self) -> tuple[list[ModelCounters], bytes]:
        own = [
            model.stats.counters(None, model.scheduler.pending)
            for model in self.repository.select()
        ]
        parts = await self._fan_out("partial_metrics", None)
        counters = merge_counters([own, *(part[0] for part in parts)])  # type: ignore[index]
        texts = [registry_text(), *(part[1] for part in parts)]  # type: ignore[index]
        return counters, merge_exposition(texts)


def _shared(future: asyncio.Future[Outputs]) -> asyncio.Future[Outputs]:
    """The flight's outcome, marked as another request's execution (a cache hit for this one)."""
    joined: asyncio.Future[Outputs] = asyncio.get_running_loop().create_future()

    def copy(done: asyncio.Future[Outputs]) -> None:
        if joined.done():
            return
        if done.cancelled() or done.exception() is not None:
            joined.set_exception(done.exception() or Unavailable("the execution was cancelled"))
        else:
            joined.set_result(SharedOutputs(done.result()))

    future.add_done_callback(copy)
    return joined


def run_executor(settings: Settings, runtime_dir: Path) -> None:
    asyncio.run(Executor(settings, runtime_dir).run())
