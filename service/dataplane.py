"""The data plane: the one object both front ends (REST, gRPC) call.

It resolves the model version, validates the request against the model's config, consults the
response cache, hands the request to the model's batcher and records statistics. Front ends only
decode and encode.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from tritonclient.grpc import model_config_pb2

from service import __version__
from service.batching import DynamicBatcher
from service.cache import ResponseCache
from service.errors import BadRequest, InferenceError
from service.metrics import render as render_metrics
from service.model import ModelVersion
from service.repository import LocalOnnxSource, ModelRepository, ModelSource
from service.settings import Settings
from service.stats import ModelStats
from service.types import InferRequest, InferResponse

EXTENSIONS = [
    "binary_tensor_data",
    "model_configuration",
    "model_repository",
    "schedule_policy",
    "statistics",
    "parameters",
]


def make_source(settings: Settings) -> ModelSource:
    if settings.backend == "triton":
        from service.backends.triton import TritonSource

        return TritonSource(settings)
    return LocalOnnxSource(settings.model_repo, settings)


class DataPlane:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.repository = ModelRepository(
            make_source(settings), settings, self._attach, self._detach
        )
        self.cache: ResponseCache | None = None
        self._started = False

    # -- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        self.cache = ResponseCache(self.settings)
        await self.cache.start()
        await self.repository.start()
        self._started = True

    async def close(self) -> None:
        await self.repository.close()
        if self.cache is not None:
            await self.cache.close()

    def _attach(self, model: ModelVersion) -> None:
        model.stats = ModelStats(model.name, model.version)
        model.scheduler = DynamicBatcher(model, model.stats, self.settings)

    async def _detach(self, model: ModelVersion) -> None:
        await model.scheduler.close()
        await model.backend.close()

    # -- health and metadata --------------------------------------------------------------------
    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        return self._started and self.repository.ready()

    def server_metadata(self) -> dict[str, Any]:
        return {"name": "infergate", "version": __version__, "extensions": EXTENSIONS}

    def model_ready(self, name: str, version: str = "") -> bool:
        try:
            return self.repository.get(name, version).backend.healthy()
        except InferenceError:
            return False

    def model_metadata(self, name: str, version: str = "") -> dict[str, Any]:
        model = self.repository.get(name, version)
        metadata = model.metadata()
        entry = self.repository.models[name]
        metadata["versions"] = sorted(entry.versions, key=int)
        return metadata

    def model_config(self, name: str, version: str = "") -> model_config_pb2.ModelConfig:
        return self.repository.get(name, version).config

    def metrics(self) -> bytes:
        """Prometheus exposition: Triton's per-model families plus the gateway's own."""
        entries = []
        for entry in self.repository.models.values():
            for model in entry.versions.values():
                stats = self._stats_dict(model)
                stats["pending"] = model.scheduler.pending
                entries.append(stats)
        return render_metrics(entries)

    def _stats_dict(self, model: ModelVersion) -> dict[str, Any]:
        cache_stats = self.cache.stats(model.name, model.version) if self.cache else None
        return model.stats.to_dict(cache_stats)

    def model_statistics(self, name: str = "", version: str = "") -> dict[str, Any]:
        if name and version:
            models = [self.repository.get(name, version)]
        elif name:
            self.repository.get(name)  # NotFound / Unavailable with the reason
            models = list(self.repository.models[name].versions.values())
        else:
            models = [
                m for entry in self.repository.models.values() for m in entry.versions.values()
            ]
        ordered = sorted(models, key=lambda m: (m.name, int(m.version)))
        return {"model_stats": [self._stats_dict(model) for model in ordered]}

    # -- repository control ---------------------------------------------------------------------
    async def repository_index(self) -> list[dict[str, str]]:
        return await self.repository.index()

    async def load_model(self, name: str) -> None:
        await self.repository.load(name)

    async def unload_model(self, name: str) -> None:
        await self.repository.unload(name)

    # -- inference ------------------------------------------------------------------------------
    async def infer(self, request: InferRequest) -> InferResponse:
        started = time.perf_counter_ns()
        model = self.repository.get(request.model_name, request.model_version)
        stats: ModelStats = model.stats
        try:
            rows, signature = self.validate(model, request)
            output_names = self._output_names(model, request.outputs)
            cache = self.cache
            if request.use_cache and cache is not None and cache.enabled_for(model.config):
                key = cache.key(model.name, model.version, request, output_names)
                outputs, _ = await cache.get_or_compute(
                    key,
                    model.name,
                    model.version,
                    lambda: self._schedule(model, request, rows, signature),
                )
            else:
                outputs = await self._schedule(model, request, rows, signature)
        except InferenceError:
            stats.record_failure(time.perf_counter_ns() - started)
            raise
        stats.record_success(time.perf_counter_ns() - started)
        return InferResponse(
            model.name,
            model.version,
            {name: outputs[name] for name in output_names},
            request.id,
        )

    async def _schedule(
        self, model: ModelVersion, request: InferRequest, rows: int, signature: tuple[object, ...]
    ) -> dict[str, np.ndarray]:
        return await model.scheduler.submit(
            request.inputs,
            rows,
            signature,
            request.priority,
            request.timeout_us,
            request.client_gone,
        )

    def validate(
        self, model: ModelVersion, request: InferRequest
    ) -> tuple[int, tuple[object, ...]]:
        """Check names, datatypes, shapes and batch size; return (rows, batch signature)."""
        inputs = request.inputs
        specs = model.inputs
        if inputs.keys() != specs.keys():
            unexpected = sorted(set(inputs) - set(specs))
            missing = sorted(set(specs) - set(inputs))
            detail = (
                f"unexpected input '{unexpected[0]}'"
                if unexpected
                else f"missing input '{missing[0]}'"
            )
            raise BadRequest(
                f"{detail} for model '{model.name}' (expected inputs: {', '.join(specs)})"
            )
        rows = 1
        signature: list[object] = []
        limit = self.settings.max_tensor_elements
        for index, (name, spec) in enumerate(specs.items()):
            array = inputs[name]
            declared = request.datatypes.get(name, spec.datatype)
            if declared != spec.datatype:
                raise BadRequest(
                    f"input '{name}' expected datatype {spec.datatype}, got {declared}"
                )
            shape = array.shape
            expected = (-1, *spec.dims) if model.batches else spec.dims
            if len(shape) != len(expected) or any(
                want != -1 and have != want for have, want in zip(shape, expected)
            ):
                raise BadRequest(
                    f"input '{name}' expected shape {_shape(expected)}, got {_shape(shape)}"
                )
            if array.size > limit:
                raise BadRequest(f"input '{name}' has {array.size} elements; the limit is {limit}")
            if model.batches:
                if index == 0:
                    rows = shape[0]
                    if rows < 1 or rows > model.max_batch_size:
                        raise BadRequest(
                            f"input '{name}' batch size {rows} is outside 1..{model.max_batch_size}"
                            f" (max_batch_size of model '{model.name}')"
                        )
                elif shape[0] != rows:
                    raise BadRequest(
                        f"input '{name}' has batch size {shape[0]} but other inputs have {rows}"
                    )
            if array.dtype.kind == "f" and not np.isfinite(array).all():
                raise BadRequest(f"input '{name}' contains NaN or Inf")
            signature.append(len(shape) if name in model.pad_inputs else shape[1:])
        return rows, tuple(signature)

    @staticmethod
    def _output_names(model: ModelVersion, requested: list[str] | None) -> list[str]:
        if not requested:
            return model.output_names
        for name in requested:
            if name not in model.outputs:
                raise BadRequest(
                    f"unknown output '{name}' for model '{model.name}' "
                    f"(outputs: {', '.join(model.outputs)})"
                )
        return requested


def _shape(shape: tuple[int, ...]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"
