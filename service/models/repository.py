"""Model repository: which models exist, which versions are servable, and their lifecycle.

Configs and backends come from a ``service.models.sources.ModelSource`` (a Triton layout on disk, or
remote Triton servers); this module owns states and versions. A model that fails to load is
UNAVAILABLE with its reason while the others keep serving; a reload swaps versions in without
dropping in-flight requests (the old scheduler drains before its backend closes).
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from tritonclient.grpc.model_config_pb2 import ModelConfig

from service import parameters
from service.errors import NotFound, Unavailable
from service.models.sources import ModelSource
from service.models.version import ModelState, ModelVersion
from service.settings import Settings

log = logging.getLogger(__name__)


@dataclass(slots=True)
class ModelEntry:
    name: str
    state: ModelState = ModelState.UNAVAILABLE
    reason: str = ""
    versions: dict[str, ModelVersion] = field(default_factory=dict)
    default_version: str = ""
    #: meant to be loaded: counts for server readiness (an unloaded model no longer does)
    wanted: bool = True


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

    async def start(self) -> None:
        """Load the repository's models; in explicit mode only ``startup_models`` (Triton's
        ``--load-model``), the rest wait for ``/v2/repository/models/m/load``."""
        names = await self.source.model_names()
        wanted = self.settings.startup_models
        if self.settings.model_control_mode == "explicit" and "*" not in wanted:
            missing = sorted(set(wanted) - set(names))
            if missing:
                raise ValueError(f"--load-model names models not in the repository: {missing}")
            names = [name for name in names if name in wanted]
        for name in names:
            await self.load(name)
        if self.settings.model_control_mode == "poll":
            seen = {name: self.source.stamp(name) for name in self.models}
            self._poll_task = asyncio.create_task(self._poll(seen))

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

    async def load(self, name: str, override: ModelConfig | None = None) -> None:
        """Load (or reload) every servable version of ``name`` (with ``override`` in place of its
        config.pbtxt, when given)."""
        async with self._lock:
            if name not in await self.source.model_names():
                raise NotFound(f"failed to load '{name}': not in the repository")
            entry = self.models.setdefault(name, ModelEntry(name))
            entry.wanted = True
            if not entry.versions:  # LOADING until sessions exist and warmup ran
                entry.state, entry.reason = ModelState.LOADING, ""
            try:
                loaded = await self.source.load(name, override)
                fresh = {
                    version: ModelVersion(
                        name, version, config, backend, self.source.tokenizer(name, version)
                    )
                    for version, (config, backend) in loaded.items()
                }
            except Exception as exc:
                log.error("model %s failed to load: %s", name, exc)
                entry.state, entry.reason = ModelState.UNAVAILABLE, str(exc)
                if not entry.versions:
                    return
                raise Unavailable(
                    f"failed to load '{name}': {exc} (the versions loaded before keep serving)"
                ) from exc
            for model_version in fresh.values():
                self._attach(model_version)
            previous, entry.versions = entry.versions, fresh
            entry.default_version = max(fresh, key=int)
            entry.state, entry.reason = ModelState.READY, ""
            if override is None:
                self.overrides.pop(name, None)
            else:
                self.overrides[name] = override
            log.info("model %s ready, versions %s", name, ", ".join(sorted(fresh, key=int)))
            unknown = parameters.unknown_keys(next(iter(fresh.values())).config)
            if unknown:
                log.warning("model %s: unknown config parameters %s (typos?)", name, unknown)
        for old in previous.values():
            await self._detach(old)

    async def unload(self, name: str) -> None:
        async with self._lock:
            entry = self.models.get(name)
            if entry is None:
                raise NotFound(f"Request for unknown model: '{name}' is not found")
            previous, entry.versions = entry.versions, {}
            entry.state, entry.reason = ModelState.UNAVAILABLE, "unloaded"
            entry.wanted = False
        for old in previous.values():
            await self._detach(old)

    async def _poll(self, seen: dict[str, int]) -> None:
        """Rescan like Triton's --model-control-mode=poll: new and changed models are (re)loaded."""
        while True:
            await asyncio.sleep(self.settings.repository_poll_s)
            try:
                names = await self.source.model_names()
                for name in names:
                    stamp = self.source.stamp(name)
                    if name not in self.models or seen.get(name) != stamp:
                        await self.load(name)
                    seen[name] = stamp
                for name in set(self.models) - set(names):
                    if self.models[name].versions:
                        await self.unload(name)
            except Exception:  # a bad model must not stop polling for the rest
                log.exception("repository poll failed")
