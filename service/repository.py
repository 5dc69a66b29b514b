"""Model repository: which models exist, which versions are servable, and their lifecycle.

Reads Triton's layout (``<repo>/<model>/config.pbtxt``, ``<repo>/<model>/<version>/model.onnx``)
or asks remote Triton servers (see ``service.backends.triton``). A model that fails to load is
UNAVAILABLE with its reason while the others keep serving; a reload swaps versions in without
dropping in-flight requests (the old scheduler drains before its backend closes).
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from service.backends.base import Backend
from service.errors import NotFound, Unavailable
from service.model import ModelVersion
from service.settings import Settings

log = logging.getLogger(__name__)


def parse_config(path: Path) -> model_config_pb2.ModelConfig:
    """Parse a config.pbtxt; the model name defaults to its folder name, as in Triton."""
    config = model_config_pb2.ModelConfig()
    text_format.Parse(path.read_text(), config)
    if not config.name:
        config.name = path.parent.name
    return config


def select_versions(policy: model_config_pb2.ModelVersionPolicy, present: list[int]) -> list[int]:
    """Apply Triton's version_policy (default: latest 1) to the version folders present."""
    ordered = sorted(present)
    which = policy.WhichOneof("policy_choice")
    if which == "all":
        return ordered
    if which == "specific":
        wanted = set(policy.specific.versions)
        return [v for v in ordered if v in wanted]
    count = policy.latest.num_versions if which == "latest" else 1
    return ordered[-max(count, 1) :]


class ModelSource(ABC):
    """Where configs and backends come from: a local folder or remote Triton servers."""

    @abstractmethod
    async def model_names(self) -> list[str]:
        """Names of every model the source holds (loaded or not)."""

    @abstractmethod
    async def load(self, name: str) -> dict[str, tuple[model_config_pb2.ModelConfig, Backend]]:
        """Create a backend for each servable version; raise ValueError with the reason."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Stop background work (health checks) and close connections."""


class LocalOnnxSource(ModelSource):
    """A Triton model repository on disk, executed by the embedded ONNX Runtime backend."""

    def __init__(self, root: Path, settings: Settings) -> None:
        self.root = root
        self.settings = settings

    async def model_names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        # dot-folders are converters' staging areas, never models
        return sorted(
            p.parent.name
            for p in self.root.glob("*/config.pbtxt")
            if not p.parent.name.startswith(".")
        )

    async def load(self, name: str) -> dict[str, tuple[model_config_pb2.ModelConfig, Backend]]:
        return await asyncio.to_thread(self._load_sync, name)

    def _load_sync(self, name: str) -> dict[str, tuple[model_config_pb2.ModelConfig, Backend]]:
        from service.backends.onnxruntime import OnnxRuntimeBackend

        folder = self.root / name
        config_path = folder / "config.pbtxt"
        if not config_path.is_file():
            raise ValueError(f"no config.pbtxt in {folder}")
        try:
            base = parse_config(config_path)
        except text_format.ParseError as exc:
            raise ValueError(f"config.pbtxt does not parse: {exc}") from exc
        if base.platform not in ("", "onnxruntime_onnx") and base.backend not in ("onnxruntime",):
            raise ValueError(
                f"platform '{base.platform or base.backend}' is not served by the embedded "
                "ONNX Runtime backend (use --backend triton)"
            )
        filename = base.default_model_filename or "model.onnx"
        present = [
            int(p.name) for p in folder.iterdir() if p.name.isdigit() and (p / filename).is_file()
        ]
        versions = select_versions(base.version_policy, present)
        if not versions:
            raise ValueError(f"no version folder with {filename} matches the version policy")
        loaded: dict[str, tuple[model_config_pb2.ModelConfig, Backend]] = {}
        for version in versions:
            config = model_config_pb2.ModelConfig()
            config.CopyFrom(base)
            backend = OnnxRuntimeBackend(folder / str(version) / filename, config, self.settings)
            backend.complete_config(config)
            backend.warm_up(config)  # GPU hook: model_warmup runs while the model is LOADING
            loaded[str(version)] = (config, backend)
        return loaded


@dataclass(slots=True)
class ModelEntry:
    name: str
    state: str = "UNAVAILABLE"  # READY | UNAVAILABLE | LOADING | UNLOADING
    reason: str = ""
    versions: dict[str, ModelVersion] = field(default_factory=dict)
    default_version: str = ""


SchedulerHook = Callable[[ModelVersion], None]
CloseHook = Callable[[ModelVersion], Awaitable[None]]


class ModelRepository:
    """Tracks every model's state and its servable versions."""

    def __init__(
        self,
        source: ModelSource,
        settings: Settings,
        attach: SchedulerHook,
        detach: CloseHook,
    ) -> None:
        self.source = source
        self.settings = settings
        self._attach = attach
        self._detach = detach
        self.models: dict[str, ModelEntry] = {}
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
            root = getattr(self.source, "root", None)
            seen = {name: _tree_state(root / name) if root else 0 for name in self.models}
            self._poll_task = asyncio.create_task(self._poll(seen))

    async def close(self) -> None:
        if self._poll_task:
            self._poll_task.cancel()
        for name in list(self.models):
            await self.unload(name)
        await self.source.close()

    def get(self, name: str, version: str = "") -> ModelVersion:
        entry = self.models.get(name)
        if entry is None:
            raise NotFound(f"unknown model '{name}'")
        if not entry.versions:
            reason = f": {entry.reason}" if entry.reason else ""
            raise Unavailable(f"model '{name}' is {entry.state}{reason}")
        found = entry.versions.get(version or entry.default_version)
        if found is None:
            raise NotFound(
                f"model '{name}' has no ready version '{version}' "
                f"(ready: {', '.join(sorted(entry.versions, key=int))})"
            )
        return found

    def ready(self) -> bool:
        return all(
            entry.state == "READY" and any(v.backend.healthy() for v in entry.versions.values())
            for entry in self.models.values()
        )

    async def index(self) -> list[dict[str, str]]:
        names = set(self.models) | set(await self.source.model_names())
        rows: list[dict[str, str]] = []
        for name in sorted(names):
            entry = self.models.get(name)
            if entry is None:
                rows.append({"name": name, "state": "UNAVAILABLE", "reason": "unloaded"})
                continue
            for version in sorted(entry.versions, key=int) or [""]:
                row = {"name": name, "state": entry.state}
                if version:
                    row["version"] = version
                if entry.reason:
                    row["reason"] = entry.reason
                rows.append(row)
        return rows

    async def load(self, name: str) -> None:
        """Load (or reload) every servable version of ``name``."""
        async with self._lock:
            entry = self.models.setdefault(name, ModelEntry(name))
            if name not in await self.source.model_names():
                entry.state, entry.reason = "UNAVAILABLE", "not found in the repository"
                raise NotFound(f"model '{name}' is not in the repository")
            if not entry.versions:  # GPU hook: LOADING until sessions exist and warmup ran
                entry.state, entry.reason = "LOADING", ""
            try:
                loaded = await self.source.load(name)
                fresh = {
                    version: ModelVersion(name, version, config, backend)
                    for version, (config, backend) in loaded.items()
                }
            except Exception as exc:
                log.error("model %s failed to load: %s", name, exc)
                entry.state, entry.reason = "UNAVAILABLE", str(exc)
                if not entry.versions:
                    return
                raise Unavailable(f"model '{name}' failed to reload: {exc}") from exc
            for model_version in fresh.values():
                self._attach(model_version)
            previous, entry.versions = entry.versions, fresh
            entry.default_version = max(fresh, key=int)
            entry.state, entry.reason = "READY", ""
            log.info("model %s ready, versions %s", name, ", ".join(sorted(fresh, key=int)))
        for old in previous.values():
            await self._detach(old)

    async def unload(self, name: str) -> None:
        async with self._lock:
            entry = self.models.get(name)
            if entry is None:
                raise NotFound(f"unknown model '{name}'")
            previous, entry.versions = entry.versions, {}
            entry.state, entry.reason = "UNAVAILABLE", "unloaded"
        for old in previous.values():
            await self._detach(old)

    async def _poll(self, seen: dict[str, int]) -> None:
        """Rescan like Triton's --model-control-mode=poll: new and changed models are (re)loaded."""
        root = getattr(self.source, "root", None)
        while True:
            await asyncio.sleep(self.settings.repository_poll_s)
            try:
                names = await self.source.model_names()
                for name in names:
                    stamp = _tree_state(root / name) if root else 0
                    if name not in self.models or seen.get(name) != stamp:
                        await self.load(name)
                    seen[name] = stamp
                for name in set(self.models) - set(names):
                    if self.models[name].versions:
                        await self.unload(name)
            except Exception:  # a bad model must not stop polling for the rest
                log.exception("repository poll failed")


def _tree_state(folder: Path) -> int:
    """Changes when any file under ``folder`` is added, removed, resized or touched."""
    entries = []
    for path in sorted(folder.rglob("*")):
        stat = path.stat()
        entries.append((str(path), stat.st_size, stat.st_mtime_ns))
    return hash(tuple(entries))
