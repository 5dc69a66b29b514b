"""Where models come from: a Triton repository on disk (run by the embedded ONNX Runtime
backend) or remote Triton servers. Sources create configs and backends; the repository
(``service.models.repository``) owns the lifecycle: states, versions, reloads.
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from service import parameters
from service.backends.base import Backend
from service.backends.triton.backend import TritonBackend
from service.backends.triton.replicas import Replica, ReplicaPool
from service.errors import Unavailable
from service.models.tokenizer import TextTokenizer
from service.settings import Settings

log = logging.getLogger(__name__)

#: each servable version's config and the backend that runs it
LoadedVersions = dict[str, tuple[model_config_pb2.ModelConfig, Backend]]


@dataclass(frozen=True, slots=True)
class Estimate:
    """What a model's load will take, known before it starts (its real cost is measured while
    it runs: ``service.models.footprint``)."""

    disk_bytes: int = 0  # the selected versions' files: the host footprint's first guess
    gpu_bytes: dict[int, int] = field(default_factory=dict)  # per GPU: its instances' arena caps
    pinned: bool = False  # infergate.pinned: kept resident under on_demand


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
    async def load(
        self, name: str, override: model_config_pb2.ModelConfig | None = None
    ) -> LoadedVersions:
        """Create a backend for each servable version; raise ValueError with the reason.
        ``override`` replaces the model's own config, as Triton's load with a config does."""

    def stamp(self, name: str) -> int:
        """Changes whenever the model's files change (poll mode reloads on a change)."""
        return 0

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Pay the runtime's one-time costs before the first load, so that no model's measured
        footprint includes them."""

    def estimate(self, name: str, override: model_config_pb2.ModelConfig | None = None) -> Estimate:
        """What a load of ``name`` will take, known before it starts (nothing known: zeros)."""
        return Estimate()

    def tokenizer(self, name: str, version: str) -> TextTokenizer | None:
        """The tokenizer the last ``load(name)`` found for ``version`` (None: token ids only)."""
        return None

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Stop background work (health checks) and close connections."""


class LocalOnnxSource(ModelSource):
    """A Triton model repository on disk, executed by the embedded ONNX Runtime backend."""

    def __init__(self, root: Path, settings: Settings) -> None:
        self.root = root
        self.settings = settings
        self._tokenizers: dict[tuple[str, str], TextTokenizer | None] = {}

    async def model_names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        # dot-folders are converters' staging areas, never models
        return sorted(
            p.parent.name
            for p in self.root.glob("*/config.pbtxt")
            if not p.parent.name.startswith(".")
        )

    async def load(
        self, name: str, override: model_config_pb2.ModelConfig | None = None
    ) -> LoadedVersions:
        return await asyncio.to_thread(self._load_sync, name, override)

    async def start(self) -> None:
        from service.backends.onnxruntime.sessions import start_runtime

        await asyncio.to_thread(start_runtime)

    def stamp(self, name: str) -> int:
        """Changes when any file under the model's folder is added, removed, resized or touched."""
        entries = []
        for path in sorted((self.root / name).rglob("*")):
            stat = path.stat()
            entries.append((str(path), stat.st_size, stat.st_mtime_ns))
        return hash(tuple(entries))

    def tokenizer(self, name: str, version: str) -> TextTokenizer | None:
        return self._tokenizers.get((name, version))

    @staticmethod
    def _config(folder: Path) -> model_config_pb2.ModelConfig:
        config_path = folder / "config.pbtxt"
        if not config_path.is_file():
            raise ValueError(f"no config.pbtxt in {folder}")
        try:
            return parse_config(config_path)
        except text_format.ParseError as exc:
            raise ValueError(f"config.pbtxt does not parse: {exc}") from exc

    def _servable(
        self, name: str, override: model_config_pb2.ModelConfig | None
    ) -> tuple[model_config_pb2.ModelConfig, list[int]]:
        """The config a load uses and the versions its policy selects; ValueError says why
        there are none."""
        folder = self.root / name
        base = self._config(folder) if override is None else _named(override, name)
        if not base.platform and not base.backend:  # as Triton completes an ONNX model's config
            base.platform = "onnxruntime_onnx"
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
        return base, versions

    def estimate(self, name: str, override: model_config_pb2.ModelConfig | None = None) -> Estimate:
        """The selected versions' files on disk and what their GPU instances reserve."""
        from service.backends.onnxruntime.backend import plan

        try:
            base, versions = self._servable(name, override)
            gpu: dict[int, int] = {}
            disk = 0
            for version in versions:
                disk += sum(f.stat().st_size for f in (self.root / name / str(version)).rglob("*"))
                for device, amount in plan(base, self.settings, str(version)).gpu_memory().items():
                    gpu[device] = gpu.get(device, 0) + amount
            return Estimate(disk, gpu, parameters.PINNED.flag(base))
        except (OSError, ValueError):  # the load itself says what is wrong
            return Estimate()

    def _load_sync(
        self, name: str, override: model_config_pb2.ModelConfig | None = None
    ) -> LoadedVersions:
        from service.backends.onnxruntime.backend import OnnxRuntimeBackend

        folder = self.root / name
        base, versions = self._servable(name, override)
        filename = base.default_model_filename or "model.onnx"
        loaded: LoadedVersions = {}
        for version in versions:
            config = model_config_pb2.ModelConfig()
            config.CopyFrom(base)
            backend = OnnxRuntimeBackend(folder / str(version) / filename, config, self.settings)
            backend.complete_config(config)
            _complete_sequence_limit(config, folder / str(version) / filename)
            backend.warm_up(config)  # model_warmup runs while the model is LOADING
            graph_inputs = {tensor.name for tensor in config.input}
            tokenizer = TextTokenizer.load([folder / str(version), folder], config, graph_inputs)
            self._tokenizers[(name, str(version))] = tokenizer
            loaded[str(version)] = (config, backend)
        return loaded


def _named(override: model_config_pb2.ModelConfig, name: str) -> model_config_pb2.ModelConfig:
    """A config override for ``name``: its name defaults to the model's, as config.pbtxt's does."""
    config = model_config_pb2.ModelConfig()
    config.CopyFrom(override)
    if config.name and config.name != name:
        raise ValueError(f"the config override names model '{config.name}', not '{name}'")
    config.name = name
    return config


def _complete_sequence_limit(config: model_config_pb2.ModelConfig, model_path: Path) -> None:
    """Token models (those with pad inputs) get ``infergate.max_sequence_length`` from the graph
    when the config does not set it: the rows of the position-embedding table, the longest
    sequence the model can take (ONNX Runtime fails with an internal error past it)."""
    if parameters.PAD_INPUTS.raw(config) is None or parameters.MAX_SEQUENCE_LENGTH.raw(config):
        return
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    for initializer in graph.initializer:
        if "position_embedding" in initializer.name and len(initializer.dims) == 2:
            limit = str(initializer.dims[0])
            config.parameters[parameters.MAX_SEQUENCE_LENGTH.name].string_value = limit
            return


class TritonSource(ModelSource):
    """Models served by a set of Triton replicas that all hold the same repository."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.timeout_s = settings.triton_timeout_s
        self.pool = ReplicaPool(
            list(settings.triton_url),
            settings.triton_protocol,
            settings.triton_health_interval_s,
            self.timeout_s,
        )
        self._start_lock = asyncio.Lock()
        self._names: list[str] = []

    async def _started(self) -> ReplicaPool:
        """Start health checks; on first start wait a while for one replica (compose ordering)."""
        pool = self.pool
        async with self._start_lock:
            if pool.started:
                return pool
            await pool.start()
            loop = asyncio.get_running_loop()
            wait_s = self.settings.triton_startup_wait_s
            deadline = loop.time() + wait_s
            while not pool.healthy() and loop.time() < deadline:
                await asyncio.sleep(min(pool.interval_s, 1.0))
            if not pool.healthy():
                log.error(
                    "no Triton replica is healthy after %gs: %s",
                    wait_s,
                    "; ".join(f"{r.url}: {r.reason}" for r in pool.replicas),
                )
        return pool

    async def model_names(self) -> list[str]:
        """Models in the healthy replicas' indexes; the last known list while none is healthy,
        so an outage does not unload everything under ``--model-control-mode poll``."""
        pool = await self._started()
        if pool.healthy():
            self._names = sorted({row["name"] for r in pool.healthy() for row in r.index})
        return list(self._names)

    async def load(
        self, name: str, override: model_config_pb2.ModelConfig | None = None
    ) -> LoadedVersions:
        if override is not None:  # the data plane refuses it first; Triton holds the configs
            raise ValueError("config overrides are loaded by Triton itself, not the gateway")
        pool = await self._started()
        versions = sorted(
            {
                version
                for r in pool.healthy()
                for (model, version) in r.ready_models
                if model == name
            },
            key=lambda v: int(v) if v.isdigit() else -1,
        )
        if not versions:
            raise ValueError(f"no Triton replica has '{name}' READY ({_states(pool, name)})")

        async def fetch(replica: Replica) -> model_config_pb2.ModelConfig:
            return await replica.model_config(name)

        try:
            config = await pool.call(name, versions[-1], fetch)
        except Unavailable as exc:
            raise ValueError(exc.message) from exc
        loaded: LoadedVersions = {}
        for version in versions:
            copy = model_config_pb2.ModelConfig()
            copy.CopyFrom(config)
            loaded[version] = (
                copy,
                TritonBackend(pool, name, version, self.settings.triton_protocol),
            )
        return loaded

    async def close(self) -> None:
        await self.pool.close()


def _states(pool: ReplicaPool, name: str) -> str:
    parts = []
    for r in pool.replicas:
        if not r.healthy:
            parts.append(f"{r.url}: {r.reason}")
            continue
        rows = [row for row in r.index if row["name"] == name]
        state = ", ".join(
            f"{row.get('state', '?')} {row.get('reason', '')}".strip() for row in rows
        )
        parts.append(f"{r.url}: {state or 'not in its repository'}")
    return "; ".join(parts)


def make_source(settings: Settings) -> ModelSource:
    """The source ``--backend`` names."""
    if settings.backend == "triton":
        return TritonSource(settings)
    return LocalOnnxSource(settings.model_repo, settings)
