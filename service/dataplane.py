"""The data plane: the one object every front end (REST, gRPC, v1) calls.

It resolves the model version, has the request validated (``service.protocol.validation``),
consults the response cache, hands the request to the model's batcher and records statistics.
Front ends only decode and encode.
"""

from __future__ import annotations

import time

from tritonclient.grpc import model_config_pb2

from service import __version__
from service.admission import Admission
from service.batching import DynamicBatcher, Outputs
from service.cache import ResponseCache
from service.errors import BadRequest, InferenceError, NotFound
from service.metrics import render as render_metrics
from service.model import ModelVersion
from service.protocol.validation import Admitted, validate
from service.repository import IndexRow, ModelRepository
from service.settings import Settings
from service.sources import make_source
from service.types import InferRequest, InferResponse, JsonObject, Parameters

EXTENSIONS = [
    "binary_tensor_data",
    "model_configuration",
    "model_repository",
    "schedule_policy",
    "statistics",
    "parameters",
]


class DataPlane:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.repository = ModelRepository(
            make_source(settings), settings, self._attach, self._detach
        )
        self.cache: ResponseCache | None = None
        self.admission = Admission(settings)
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
        await self.admission.close()

    def _attach(self, model: ModelVersion) -> None:
        model.scheduler = DynamicBatcher(model, model.stats, self.settings)

    async def _detach(self, model: ModelVersion) -> None:
        await model.scheduler.close()
        await model.backend.close()

    # -- health and metadata --------------------------------------------------------------------
    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        return self._started and self.repository.ready()

    def server_metadata(self) -> JsonObject:
        return {"name": self.settings.server_name, "version": __version__, "extensions": EXTENSIONS}

    def model(self, name: str, version: str = "") -> ModelVersion:
        """The servable version a request names; NotFound / Unavailable with the reason."""
        return self.repository.get(name, version)

    def model_ready(self, name: str, version: str = "") -> bool:
        try:
            return self.repository.get(name, version).backend.healthy()
        except InferenceError:
            return False

    def model_metadata(self, name: str, version: str = "") -> JsonObject:
        metadata = self.repository.get(name, version).metadata()
        metadata["versions"] = sorted(self.repository.models[name].versions, key=int)
        return metadata

    def model_config(self, name: str, version: str = "") -> model_config_pb2.ModelConfig:
        return self.repository.get(name, version).config

    def metrics(self) -> bytes:
        """Prometheus exposition: Triton's per-model families plus the gateway's own."""
        return render_metrics(
            model.stats.counters(self._cache_stats(model), model.scheduler.pending)
            for model in self._loaded()
        )

    def model_statistics(self, name: str = "", version: str = "") -> JsonObject:
        if name and version:
            models = [self.repository.get(name, version)]
        elif name:
            self.repository.get(name)  # NotFound / Unavailable with the reason
            models = list(self.repository.models[name].versions.values())
        else:
            models = self._loaded()
        ordered = sorted(models, key=lambda m: (m.name, int(m.version)))
        return {"model_stats": [self._stats_dict(model) for model in ordered]}

    def _loaded(self) -> list[ModelVersion]:
        return [m for entry in self.repository.models.values() for m in entry.versions.values()]

    def _stats_dict(self, model: ModelVersion) -> JsonObject:
        return model.stats.to_dict(self._cache_stats(model))

    def _cache_stats(self, model: ModelVersion) -> dict[str, int] | None:
        return self.cache.stats(model.name, model.version) if self.cache else None

    # -- repository control ---------------------------------------------------------------------
    async def repository_index(self) -> list[IndexRow]:
        return await self.repository.index()

    async def load_model(self, name: str, parameters: Parameters | None = None) -> None:
        """Triton's repository extension: only in explicit mode, without config overrides."""
        self._check_model_control(name)
        overrides = sorted(key for key in parameters or {} if key == "config" or "file:" in key)
        if overrides:
            raise BadRequest(
                "loading with a config or file override is not supported by this server "
                f"(got {', '.join(overrides)}); edit the model's config.pbtxt instead"
            )
        await self.repository.load(name)
        failure = self.repository.failure(name)
        if failure:
            raise BadRequest(f"failed to load '{name}': {failure}")

    async def unload_model(self, name: str) -> None:
        self._check_model_control(name)
        await self.repository.unload(name)

    def _check_model_control(self, name: str) -> None:
        if self.settings.model_control_mode == "explicit":
            return
        if name not in self.repository.models:
            raise NotFound(f"Request for unknown model: '{name}' is not found")
        raise BadRequest("explicit model load / unload is not allowed if polling is enabled")

    # -- inference ------------------------------------------------------------------------------
    async def infer(self, request: InferRequest) -> InferResponse:
        started = time.perf_counter_ns()
        model = self.repository.get(request.model_name, request.model_version)
        try:
            admitted = validate(model, request, self.settings.max_tensor_elements)
            await self.admission.admit_infer(model.name, admitted.rows)
            outputs = await self._outputs(model, request, admitted)
        except InferenceError:
            model.stats.record_failure(time.perf_counter_ns() - started)
            raise
        model.stats.record_success(time.perf_counter_ns() - started)
        names = admitted.output_names
        return InferResponse(
            model.name, model.version, {name: outputs[name] for name in names}, request.id
        )

    async def _outputs(
        self, model: ModelVersion, request: InferRequest, admitted: Admitted
    ) -> Outputs:
        """From the cache (or an identical request in flight) when allowed, else the batcher."""

        async def schedule() -> Outputs:
            return await model.scheduler.submit(
                request.inputs,
                admitted.rows,
                admitted.signature,
                request.priority,
                request.timeout_us,
                request.client_gone,
            )

        cache = self.cache
        if not (request.use_cache and cache is not None and cache.enabled_for(model.config)):
            return await schedule()
        key = cache.key(model.name, model.version, request, admitted.output_names)
        outputs, _ = await cache.get_or_compute(key, model.name, model.version, schedule)
        return outputs
