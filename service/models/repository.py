"""Model repository: which models exist, which versions are servable, and their lifecycle.

Configs and backends come from a ``service.models.sources.ModelSource`` (a Triton layout on disk, or
remote Triton servers); this module owns states and versions. A model that fails to load is
UNAVAILABLE with its reason while the others keep serving; a reload swaps versions in without
dropping in-flight requests (the old scheduler drains before its backend closes). Every load is
measured (``service.models.footprint``); under ``--model-control-mode on_demand`` every model is
listed unloaded and loads on its first request, and memory budgets evict the least recently used
idle models (``service.models.ondemand``).
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from tritonclient.grpc.model_config_pb2 import ModelConfig

from service import parameters
from service.backends.base import Backend
from service.errors import NotFound, Unavailable
from service.models.footprint import Footprint, Measurement
from service.models.ondemand import NEVER_LOADED, Residency, is_dormant
from service.models.sources import Estimate, ModelSource
from service.models.version import ModelEntry as ModelEntry  # declared there, imported from here
from service.models.version import ModelState, ModelVersion
from service.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class IndexRow:
    """One row of the repository index extension."""

    name: str
    state: ModelState
    version: str = ""
    reason: str = ""

    def to_json(self) -> dict[str, str]:
        row = {"name": self.name, "state": self.state.value}
        if self.version:
            row["version"] = self.version
        if self.reason:
            row["reason"] = self.reason
        return row


SchedulerHook = Callable[[ModelVersion], None]
CloseHook = Callable[[ModelVersion], Awaitable[None]]


class RepositoryView(ABC):
    """Models by name with their states and servable versions: what serving reads. The
    repository owns the lifecycle; a front-end worker's mirror (``service.processes.worker``) fills
    the same view from the executor's snapshots."""

    def __init__(self) -> None:
        self.models: dict[str, ModelEntry] = {}

    def get(self, name: str, version: str = "") -> ModelVersion:
        entry = self.models.get(name)
        if entry is None:
            raise NotFound(f"Request for unknown model: '{name}' is not found")
        if not entry.versions:
            reason = f": {entry.reason}" if entry.reason else ""
            raise Unavailable(f"model '{name}' is {entry.state}{reason}")
        found = entry.versions.get(version or entry.default_version)
        if found is None:
            raise NotFound(
                f"Request for unknown model: '{name}' version {version} is not found "
                f"(ready versions: {', '.join(sorted(entry.versions, key=int))})"
            )
        return found

    def use(self, name: str, version: str = "") -> ModelVersion:
        """``get`` for a request: the version is marked used now (eviction takes the least
        recently used model first)."""
        model = self.get(name, version)
        model.touch()
        return model

    def select(self, name: str = "", version: str = "") -> list[ModelVersion]:
        """The versions a statistics call names: one, every loaded one of a model, or all."""
        if name and version:
            return [self.get(name, version)]
        if name:
            self.get(name)  # NotFound / Unavailable with the reason
            return list(self.models[name].versions.values())
        return [m for entry in self.models.values() for m in entry.versions.values()]

    def ready(self) -> bool:
        """Triton's strict readiness: every model meant to be loaded is READY and can run."""
        return all(
            entry.state is ModelState.READY
            and any(v.backend.healthy() for v in entry.versions.values())
            for entry in self.models.values()
            if entry.wanted
        )

    def failure(self, name: str) -> str:
        """Why ``name`` is not READY after a load ("" when it is)."""
        entry = self.models.get(name)
        if entry is None or entry.state is ModelState.READY:
            return ""
        return entry.reason or str(entry.state)

    @abstractmethod
    async def index(self) -> list[IndexRow]:
        """Every model the source holds, a row per ready version."""

    @abstractmethod
    async def load(self, name: str, override: ModelConfig | None = None) -> None:
        """Load (or reload) every servable version of ``name``."""

    @abstractmethod
    async def unload(self, name: str) -> None:
        """Unload every version of ``name``."""

    @abstractmethod
    async def demand(self, name: str) -> None:
        """Load ``name`` for a request that needs it (on_demand): one load however many ask,
        waited for at most ``--model-load-timeout-s``."""

    @abstractmethod
    async def start(self) -> None:
        """Bring up the startup models."""

    @abstractmethod
    async def close(self) -> None:
        """Unload everything and stop background work."""


class ModelRepository(RepositoryView):
    """Tracks every model's state and its servable versions."""

    def __init__(
        self,
        source: ModelSource,
        settings: Settings,
        attach: SchedulerHook,
        detach: CloseHook,
    ) -> None:
        super().__init__()
        self.source = source
        self.settings = settings
        self._attach = attach
        self._detach = detach
        #: the config a model was last loaded with in place of its config.pbtxt
        self.overrides: dict[str, ModelConfig] = {}
        self._lock = asyncio.Lock()
        self._poll_task: asyncio.Task[None] | None = None
        self.residency = Residency(self.models, settings, self.load, self.use)

    async def start(self) -> None:
        """Load the repository's models; in explicit mode only ``startup_models`` (Triton's
        ``--load-model``), the rest wait for ``/v2/repository/models/m/load``; on_demand lists
        them all unloaded and loads the pinned ones (and ``startup_models`` unless '*')."""
        await self.source.start()
        names = await self.source.model_names()
        wanted = self.settings.startup_models
        mode = self.settings.model_control_mode
        named = names
        if mode in ("explicit", "on_demand") and "*" not in wanted:
            missing = sorted(set(wanted) - set(names))
            if missing:
                raise ValueError(f"--load-model names models not in the repository: {missing}")
            named = [name for name in names if name in wanted]
        if mode == "on_demand":
            named = self._list_all(names, named if "*" not in wanted else [])
        for name in named:
            await self.load(name)
        if mode in ("poll", "on_demand"):
            seen = {name: self.source.stamp(name) for name in self.models}
            self._poll_task = asyncio.create_task(self._poll(seen))

    def _list_all(self, names: list[str], named: list[str]) -> list[str]:
        """on_demand: an unloaded entry per model; returns those to load now (pinned or named)."""
        for name in names:
            self.models[name] = ModelEntry(name, reason=NEVER_LOADED, wanted=False)
        return [n for n in names if n in named or self.source.estimate(n).pinned]

    async def close(self) -> None:
        if self._poll_task:
            self._poll_task.cancel()
        for name in list(self.models):
            await self.unload(name)
        await self.source.close()

    async def index(self) -> list[IndexRow]:
        """Every model the source holds or the repository knows, a row per ready version."""
        names = set(self.models) | set(await self.source.model_names())
        rows: list[IndexRow] = []
        for name in sorted(names):
            entry = self.models.get(name)
            if entry is None:
                rows.append(IndexRow(name, ModelState.UNAVAILABLE, reason="unloaded"))
                continue
            for version in sorted(entry.versions, key=int) or [""]:
                rows.append(IndexRow(name, entry.state, version, entry.reason))
        return rows

    async def demand(self, name: str) -> None:
        await self.residency.demand(name)

    async def load(self, name: str, override: ModelConfig | None = None) -> None:
        """Load (or reload) every servable version of ``name`` (with ``override`` in place of its
        config.pbtxt, when given), after making room for it under the memory budgets."""
        async with self._lock:
            if name not in await self.source.model_names():
                raise NotFound(f"failed to load '{name}': not in the repository")
            entry = self.models.setdefault(name, ModelEntry(name))
            previous = dict(entry.versions)
            serving = any(not is_dormant(model) for model in previous.values())
            estimate = self.source.estimate(name, override)
            before = (entry.state, entry.reason, entry.wanted)
            entry.wanted = self.settings.model_control_mode != "on_demand" or estimate.pinned
            if not serving:  # LOADING until sessions exist and warmup ran
                entry.state, entry.reason = ModelState.LOADING, ""
            try:
                fresh, footprint = await self._open(name, override, estimate, previous)
            except Unavailable:  # no room now (on_demand): the model stays as it was
                entry.state, entry.reason, entry.wanted = before
                raise
            except Exception as exc:
                fresh = self._failed(entry, exc, serving)
            else:
                self._serve(entry, fresh, override)
                pinned = parameters.PINNED.flag(next(iter(fresh.values())).config)
                await self.residency.loaded(entry, footprint, pinned)
        for old in previous.values():
            if all(old is not model for model in fresh.values()):
                await self._detach(old)

    async def _open(
        self,
        name: str,
        override: ModelConfig | None,
        estimate: Estimate,
        previous: dict[str, ModelVersion],
    ) -> tuple[dict[str, ModelVersion], Footprint]:
        """Make room, then create and measure every version. A dormant version whose completed
        config is unchanged comes back to life as the same object (with its statistics)."""
        await self.residency.make_room(name, estimate)
        measurement = Measurement()
        loaded = await self.source.load(name, override)
        footprint = measurement.finish(estimate)
        fresh: dict[str, ModelVersion] = {}
        revived: list[tuple[ModelVersion, Backend]] = []
        for version, (config, backend) in loaded.items():
            model = previous.get(version)
            if model is not None and is_dormant(model) and model.config == config:
                revived.append((model, backend))
            else:
                tokenizer = self.source.tokenizer(name, version)
                model = ModelVersion(name, version, config, backend, tokenizer)
            fresh[version] = model
        for model, backend in revived:
            model.backend, model.tokenizer = backend, self.source.tokenizer(name, model.version)
        return fresh, footprint

    def _failed(self, entry: ModelEntry, exc: Exception, serving: bool) -> dict[str, ModelVersion]:
        """A load failed: UNAVAILABLE with the reason. The versions that served before keep
        serving (what they still are is returned); dormant ones are dropped."""
        log.error("model %s failed to load: %s", entry.name, exc)
        self.residency.failed(entry.name)
        entry.state, entry.reason = ModelState.UNAVAILABLE, str(exc)
        if serving:
            raise Unavailable(
                f"failed to load '{entry.name}': {exc} (the versions loaded before keep serving)"
            ) from exc
        entry.versions, entry.failed = {}, True
        return {}

    def _serve(
        self, entry: ModelEntry, fresh: dict[str, ModelVersion], override: ModelConfig | None
    ) -> None:
        for model_version in fresh.values():
            self._attach(model_version)
            model_version.touch()  # just loaded: the most recently used
        entry.versions = fresh
        entry.default_version = max(fresh, key=int)
        entry.state, entry.failed = ModelState.READY, False
        name = entry.name
        if override is None:
            self.overrides.pop(name, None)
        else:
            self.overrides[name] = override
        log.info("model %s ready, versions %s", name, ", ".join(sorted(fresh, key=int)))
        unknown = parameters.unknown_keys(next(iter(fresh.values())).config)
        if unknown:
            log.warning("model %s: unknown config parameters %s (typos?)", name, unknown)

    async def unload(self, name: str) -> None:
        """Unload every version; on_demand keeps them dormant (the next request loads them)."""
        async with self._lock:
            entry = self.models.get(name)
            if entry is None:
                raise NotFound(f"Request for unknown model: '{name}' is not found")
            if self.residency.on_demand:
                await self.residency.evict(name, "by request", counted=False)
                return
            previous, entry.versions = entry.versions, {}
            entry.state, entry.reason = ModelState.UNAVAILABLE, "unloaded"
            entry.wanted = False
            self.residency.forget(name)
        for old in previous.values():
            await self._detach(old)

    async def _poll(self, seen: dict[str, int]) -> None:
        """Rescan like Triton's --model-control-mode=poll: new and changed models are (re)loaded
        (on_demand: listed unloaded, a resident one reloaded), removed ones unloaded."""
        while True:
            await asyncio.sleep(self.settings.repository_poll_s)
            try:
                names = await self.source.model_names()
                for name in names:
                    stamp = self.source.stamp(name)
                    if name not in self.models or seen.get(name) != stamp:
                        await self._changed(name)
                    seen[name] = stamp
                for name in set(self.models) - set(names):
                    await self._gone(name)
            except Exception:  # a bad model must not stop polling for the rest
                log.exception("repository poll failed")

    async def _changed(self, name: str) -> None:
        if not self.residency.on_demand or name in self.residency.resident:
            await self.load(name)
            return
        entry = self.models.setdefault(name, ModelEntry(name))
        dormant, entry.versions = entry.versions, {}  # the files changed: their config may have
        entry.state, entry.reason, entry.wanted, entry.failed = (
            ModelState.UNAVAILABLE, NEVER_LOADED, False, False,
        )  # fmt: skip
        for old in dormant.values():
            await self._detach(old)
        if self.source.estimate(name).pinned:
            await self.load(name)

    async def _gone(self, name: str) -> None:
        if self.models[name].versions:
            await self.unload(name)
        if self.residency.on_demand:  # listed no more: its dormant versions go too
            for old in self.models.pop(name).versions.values():
                await self._detach(old)
