"""Which executor owns which model (``--executors N|auto`` with ``--workers N``).

A model's place is read from its ``config.pbtxt``: the GPU of its first GPU instance group
(``gpu:0``...), else ``cpu``. ``auto`` starts one executor per place the repository's models
name, so each GPU's models share one executor and one CUDA context, and the CPU models another.
With an explicit count, places are dealt to executors in turn; executors left over share the CPU
models (by a hash of the name). The supervisor computes the table once, before it forks, so the
executors and every worker (replacements too) route alike; a model that appears later goes by
the same rule.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from service.host import cuda_gpu_count
from service.models.sources import Estimate, LoadedVersions, ModelSource, parse_config
from service.models.tokenizer import TextTokenizer
from service.settings import Settings

CPU = "cpu"


class Routes:
    """The executors' table: how many, and the one that owns each model."""

    def __init__(
        self,
        settings: Settings,
        names: Iterable[str] | None = None,
        visible_gpus: Sequence[int] | None = None,
    ) -> None:
        self.repo = Path(settings.model_repo)
        self.remote = settings.backend == "triton"  # Triton places the models: no GPU here
        self._gpus = list(range(cuda_gpu_count())) if visible_gpus is None else list(visible_gpus)
        self._places: dict[str, str] = {}
        known = _model_names(self.repo) if names is None else names
        present = {self.place(name) for name in known}
        places = [CPU] * (CPU in present or not present) + sorted(present - {CPU})
        wanted = settings.executors
        self.count = len(places) if wanted == "auto" else int(wanted)
        self._table: dict[str, list[int]] = {}
        for index, place in enumerate(places):
            self._table.setdefault(place, []).append(index % self.count)
        for extra in range(len(places), self.count):  # more executors than places
            self._table.setdefault(CPU, []).append(extra)

    def of(self, name: str) -> int:
        """The index of the executor that owns model ``name``."""
        place = self.place(name)
        executors = self._table.get(place) or [zlib.crc32(place.encode()) % self.count]
        return executors[zlib.crc32(name.encode()) % len(executors)]

    def place(self, name: str) -> str:
        """``gpu:N`` or ``cpu``, from the model's config (``cpu`` when it cannot be read)."""
        known = self._places.get(name)
        if known is None:
            known = self._places[name] = self._read_place(name)
        return known

    def describe(self) -> str:
        """For the process layout line: each executor's places."""
        owners: dict[int, list[str]] = {}
        for place, executors in self._table.items():
            for index in executors:
                owners.setdefault(index, []).append(place)
        return ", ".join(
            f"executor-{index + 1}: {'+'.join(owners.get(index, [CPU]))}"
            for index in range(self.count)
        )

    def _read_place(self, name: str) -> str:
        if self.remote:
            return CPU
        try:
            config = parse_config(self.repo / name / "config.pbtxt")
        except Exception:  # a model that cannot load decides nothing: it fails where it lands
            return CPU
        kinds = mc.ModelInstanceGroup
        for group in config.instance_group:
            gpus = list(group.gpus) or self._gpus
            if group.kind == kinds.KIND_GPU or (group.kind == kinds.KIND_AUTO and gpus):
                return f"gpu:{gpus[0] if gpus else 0}"
        return CPU


def _model_names(repo: Path) -> list[str]:
    if not repo.is_dir():
        return []
    return sorted(p.parent.name for p in repo.glob("*/config.pbtxt") if p.parent.name[:1] != ".")


def socket_path(runtime_dir: Path, index: int) -> str:
    """Where executor ``index`` listens for the workers."""
    return str(runtime_dir / ("executor.sock" if index == 0 else f"executor-{index + 1}.sock"))


class OwnedModels(ModelSource):
    """An executor's share of the repository: the models the routes give it."""

    def __init__(self, source: ModelSource, routes: Routes, index: int) -> None:
        self.source = source
        self.routes = routes
        self.index = index

    async def model_names(self) -> list[str]:
        names = await self.source.model_names()
        return [name for name in names if self.routes.of(name) == self.index]

    async def load(self, name: str, override: mc.ModelConfig | None = None) -> LoadedVersions:
        return await self.source.load(name, override)

    def stamp(self, name: str) -> int:
        return self.source.stamp(name)

    async def start(self) -> None:
        await self.source.start()

    def estimate(self, name: str, override: mc.ModelConfig | None = None) -> Estimate:
        return self.source.estimate(name, override)

    def tokenizer(self, name: str, version: str) -> TextTokenizer | None:
        return self.source.tokenizer(name, version)

    async def close(self) -> None:
        await self.source.close()
