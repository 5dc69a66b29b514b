"""The data plane: the one object every front end (REST, gRPC, v1) calls.

It resolves the model version, has the request validated (``service.protocol.validation``),
consults the response cache, hands the request to the model's batcher and records statistics.
Front ends only decode and encode. Text (a model's text input over v2, or /v1/embeddings) is
tokenized here and each item then takes that same path alone (``service.protocol.text``).
"""

from __future__ import annotations

import asyncio
import time

from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2

from service import __version__
from service.admission import Admission
from service.batching import DynamicBatcher, Outputs
from service.cache import ResponseCache
from service.errors import BadRequest, InferenceError, NotFound
from service.metrics import ModelCounters, registry_text
from service.metrics import render as render_metrics
from service.model import ModelVersion
from service.protocol.text import (
    check_limits,
    is_text_request,
    item_request,
    request_texts,
    stack_rows,
    tokenizer_of,
)
from service.protocol.validation import Admitted, validate
from service.repository import IndexRow, ModelRepository, RepositoryView
from service.settings import Settings
from service.sources import make_source
from service.tokenize import TokenizedItem, truncate_parameter
from service.types import (
    InferRequest,
    InferResponse,
    ItemsRequest,
    ItemsResponse,
    JsonObject,
    Parameters,
)

EXTENSIONS = [
    "binary_tensor_data",
    "model_configuration",
    "model_repository",
    "schedule_policy",
    "statistics",
    "parameters",
]


class DataPlane:
    """``repository``: where models live; by default this process's own (models, batchers and
    sessions here); a front-end worker passes its mirror of the executor's."""

    def __init__(self, settings: Settings, repository: RepositoryView | None = None) -> None:
        self.settings = settings
        self.repository = repository or ModelRepository(
            make_source(settings), settings, self._attach, self._detach
        )
        self.cache: ResponseCache | None = None
        self.admission = Admission(settings)
        self._started = False

    # -- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        self.cache = self._response_cache()
        await self.cache.start()
        await self.repository.start()
        self._started = True

    def _response_cache(self) -> ResponseCache:
        return ResponseCache(self.settings)

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

    async def metrics(self) -> bytes:
        """Prometheus exposition: Triton's per-model families plus the gateway's own."""
        return render_metrics(self.local_counters(), registry_text())

    async def model_statistics(self, name: str = "", version: str = "") -> JsonObject:
        return self.local_statistics(name, version)

    def local_counters(self) -> list[ModelCounters]:
        """This process's counters of every loaded version (its queues' pending requests)."""
        return [
            model.stats.counters(self._cache_stats(model), model.scheduler.pending)
            for model in self.repository.select()
        ]

    def local_statistics(self, name: str = "", version: str = "") -> JsonObject:
        """What this process counted of the versions named (see RepositoryView.select)."""
        models = self.repository.select(name, version)
        ordered = sorted(models, key=lambda m: (m.name, int(m.version)))
        return {"model_stats": [model.stats.to_dict(self._cache_stats(model)) for model in ordered]}

    def _cache_stats(self, model: ModelVersion) -> dict[str, int] | None:
        return self.cache.stats(model.name, model.version) if self.cache else None

    # -- repository control ---------------------------------------------------------------------
    async def repository_index(self) -> list[IndexRow]:
        return await self.repository.index()

    async def load_model(self, name: str, parameters: Parameters | None = None) -> None:
        """Triton's repository extension: only in explicit mode; a ``config`` parameter (JSON of
        a model configuration) replaces config.pbtxt for this load, as on Triton."""
        self._check_model_control(name)
        override = self._config_override(name, parameters or {})
        await self.repository.load(name, override)
        failure = self.repository.failure(name)
        if failure:
            raise BadRequest(f"failed to load '{name}': {failure}")

    def _config_override(
        self, name: str, parameters: Parameters
    ) -> model_config_pb2.ModelConfig | None:
        files = sorted(key for key in parameters if key.startswith("file:"))
        if files:
            raise BadRequest(
                f"failed to load '{name}': file overrides ({', '.join(files)}) are not supported "
                "by this server; put the files in the model repository"
            )
        text = parameters.get("config")
        if text is None:
            return None
        if self.settings.backend == "triton":
            raise BadRequest(
                f"failed to load '{name}': with --backend triton, load config overrides on Triton"
            )
        if not isinstance(text, str):
            raise BadRequest(f"failed to load '{name}': 'config' must be a JSON string")
        try:
            return json_format.Parse(text, model_config_pb2.ModelConfig())
        except json_format.ParseError as exc:
            raise BadRequest(
                f"failed to load '{name}': the config override is invalid: {exc}"
            ) from exc

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
            if is_text_request(model, request):
                texts = request_texts(model, request)
                await self.admission.admit_infer(model.name, len(texts))
                truncate = truncate_parameter(request.parameters.get("truncate"))
                items = await self._tokenize(model, texts, truncate)
                outputs, names = await self._item_outputs(model, request, items)
            else:
                admitted = validate(model, request, self.settings.max_tensor_elements)
                await self.admission.admit_infer(model.name, admitted.rows)
                outputs = await self._outputs(model, request, admitted)
                names = admitted.output_names
        except InferenceError:
            model.stats.record_failure(time.perf_counter_ns() - started)
            raise
        model.stats.record_success(time.perf_counter_ns() - started)
        return InferResponse(
            model.name, model.version, {name: outputs[name] for name in names}, request.id
        )

    async def infer_items(self, request: ItemsRequest) -> ItemsResponse:
        """Texts or token arrays, each tokenized, cached and batched on its own (/v1/embeddings)."""
        started = time.perf_counter_ns()
        model = self.repository.get(request.model_name, request.model_version)
        try:
            tokenizer = tokenizer_of(model)
            await self.admission.admit_infer(model.name, len(request.items))
            texts = [item for item in request.items if isinstance(item, str)]
            arrays = [item for item in request.items if isinstance(item, list)]
            if arrays:
                check_limits(len(arrays), 0, self.settings.max_items_per_request, 1 << 62)
                items = [
                    tokenizer.from_ids(index, ids, request.truncate)
                    for index, ids in enumerate(arrays)
                ]
            else:
                items = await self._tokenize(model, texts, request.truncate)
            base = InferRequest(
                model.name,
                model.version,
                {},
                {},
                outputs=request.outputs,
                use_cache=request.use_cache,
                client_gone=request.client_gone,
            )
            outputs, names = await self._item_outputs(model, base, items)
        except InferenceError:
            model.stats.record_failure(time.perf_counter_ns() - started)
            raise
        model.stats.record_success(time.perf_counter_ns() - started)
        tokens = sum(item.length for item in items)
        return ItemsResponse(
            model.name, model.version, {name: outputs[name] for name in names}, tokens
        )

    async def _tokenize(
        self, model: ModelVersion, texts: list[str], truncate: bool
    ) -> list[TokenizedItem]:
        check_limits(len(texts), 0, self.settings.max_items_per_request, 1 << 62)
        return await tokenizer_of(model).encode(texts, truncate)

    async def _item_outputs(
        self, model: ModelVersion, base: InferRequest, items: list[TokenizedItem]
    ) -> tuple[Outputs, list[str]]:
        """Each item as its own one-row request (own cache entry, own place in a batch)."""
        settings = self.settings
        tokens = sum(item.length for item in items)
        check_limits(
            len(items), tokens, settings.max_items_per_request, settings.max_tokens_per_request
        )
        requests = [item_request(model, item, base) for item in items]
        admitted = [validate(model, one, settings.max_tensor_elements) for one in requests]
        rows = await asyncio.gather(
            *(self._outputs(model, one, ok) for one, ok in zip(requests, admitted))
        )
        names = admitted[0].output_names
        return stack_rows(rows, names), names

    async def _outputs(
        self, model: ModelVersion, request: InferRequest, admitted: Admitted
    ) -> Outputs:
        """From the cache (or an identical request in flight) when allowed, else the batcher."""
        cache = self.cache
        if not (request.use_cache and cache is not None and cache.enabled_for(model.config)):
            return await _submit(model, request, admitted)
        key = cache.key(model.name, model.version, request, admitted.output_names)
        outputs, _ = await cache.get_or_compute(
            key, model.name, model.version, lambda: _submit(model, request, admitted, key)
        )
        return outputs


def _submit(
    model: ModelVersion, request: InferRequest, admitted: Admitted, key: str | None = None
) -> asyncio.Future[Outputs]:
    """Hand a validated request to its model's batcher (``key``: its cache key, by which a
    shared executor coalesces identical requests from several front ends)."""
    return model.scheduler.submit(
        request.inputs,
        admitted.rows,
        admitted.signature,
        request.priority,
        request.timeout_us,
        request.client_gone,
        admitted.tokens,
        key,
    )
