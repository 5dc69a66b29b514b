"""The data plane: the one object every front end (REST, gRPC, v1, OpenAI) calls.

One request's pass (:meth:`DataPlane._serve`), each step called once, in this order: text to
tokens (a model's text input over v2, or the items of /v1/embeddings) -> validate -> admit (the
key's model allow-list and rate limits) -> cache -> schedule (the model's batcher, or the
executor's with ``--workers``) -> statistics. Front ends decode before it and encode after it;
nothing here parses bytes.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from tritonclient.grpc import model_config_pb2

from service import __version__
from service.cache import ResponseCache
from service.dataplane.batches import Outputs
from service.dataplane.batching import DynamicBatcher
from service.dataplane.control import check_model_control, config_override
from service.errors import BadRequest, InferenceError, Unavailable
from service.messages import (
    InferRequest,
    InferResponse,
    ItemsRequest,
    ItemsResponse,
    JsonObject,
    Parameters,
    Tensors,
)
from service.models.repository import IndexRow, ModelRepository, RepositoryView
from service.models.sources import make_source
from service.models.tokenizer import TokenizedItem, truncate_parameter
from service.models.version import ModelVersion, Submission
from service.observability import requestlog
from service.observability.metrics import STATISTICS_SINCE, ModelCounters, registry_text
from service.observability.metrics import render as render_metrics
from service.protocol.text import (
    check_limits,
    is_text_request,
    item_requests,
    request_texts,
    stack_rows,
    tokenizer_of,
)
from service.protocol.validation import Admitted, validate
from service.security.admission import Admission
from service.settings import Settings

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
        if isinstance(self.repository, ModelRepository):  # this process holds the counts
            STATISTICS_SINCE.set(time.time())
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

    async def resolve(self, name: str, version: str = "") -> ModelVersion:
        """``model`` for a request, marked used; under on_demand a model not loaded yet is loaded
        first (one load however many ask; ``service.models.ondemand``)."""
        try:
            return self.repository.use(name, version)
        except Unavailable:
            if (
                self.settings.model_control_mode != "on_demand"
                or name not in self.repository.models
            ):
                raise
        await self.repository.demand(name)
        return self.repository.use(name, version)

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
        check_model_control(self.settings, self.repository, name)
        override = config_override(self.settings, name, parameters or {})
        await self.repository.load(name, override)
        failure = self.repository.failure(name)
        if failure:
            raise BadRequest(f"failed to load '{name}': {failure}")

    async def unload_model(self, name: str) -> None:
        check_model_control(self.settings, self.repository, name)
        await self.repository.unload(name)

    # -- inference: one pass per request ----------------------------------------------------
    async def infer(
        self, request: InferRequest, model: ModelVersion | None = None
    ) -> InferResponse:
        """A v2 (or v1) request. ``model``: the version the front end decoded it against (so it
        is resolved once); by name when not given."""
        model = model or await self.resolve(request.model_name, request.model_version)
        _, outputs = await self._serve(model, request)
        return InferResponse(model.name, model.version, outputs, request.id)

    async def infer_items(
        self, request: ItemsRequest, model: ModelVersion | None = None
    ) -> ItemsResponse:
        """Texts or token arrays (/v1/embeddings): one row per item, in item order."""
        model = model or await self.resolve(request.model_name, request.model_version)
        work, outputs = await self._serve(model, request)
        return ItemsResponse(model.name, model.version, outputs, work.tokens)

    async def _serve(
        self, model: ModelVersion, request: InferRequest | ItemsRequest
    ) -> tuple[Work, Tensors]:
        """The pass, top to bottom; statistics count every request that got this far."""
        started = time.perf_counter_ns()
        record = requestlog.entered(model.name, model.version) if requestlog.ACTIVE else None
        try:
            text = isinstance(request, ItemsRequest) or is_text_request(model, request)
            items = await self._tokens(model, request) if text else None
            work = self._validate(model, request, items)
            await self._admit(model, work)
            outputs = await self._execute(model, work)
        except InferenceError:
            model.stats.record_failure(time.perf_counter_ns() - started)
            raise
        arrival = request.arrival_ns
        stay_ns = time.monotonic_ns() - arrival if arrival else 0
        model.stats.record_success(time.perf_counter_ns() - started, stay_ns)
        if record is not None:  # traced or logged: the pass ends, encoding begins
            record.served(work.rows)
        return work, outputs

    async def _admit(self, model: ModelVersion, work: Work) -> None:
        """The key's allow-list and rate limits; a request of many parts is also admitted by
        the model's queue here, as a whole (one part alone is, when it is scheduled)."""
        if self.admission.checks_infer:
            await self.admission.admit_infer(model.name, work.rows)
        if work.stacked:
            first = work.parts[0][0]
            units = sum(model.scheduler.units(a.rows, a.tokens) for _, a in work.parts)
            figures = (first.priority, first.timeout_us, first.arrival_ns)
            await model.scheduler.admit(work.rows, units, *figures)

    async def _tokens(
        self, model: ModelVersion, request: InferRequest | ItemsRequest
    ) -> list[TokenizedItem]:
        """Text to tokens: the items of a text request (v2's text input, or /v1's items)."""
        limit = self.settings.max_items_per_request
        if isinstance(request, InferRequest):
            texts = request_texts(model, request)
            check_limits(len(texts), 0, limit, 1 << 62)
            truncate = truncate_parameter(request.parameters.get("truncate"))
            return await tokenizer_of(model).encode(texts, truncate)
        tokenizer = tokenizer_of(model)
        check_limits(len(request.items), 0, limit, 1 << 62)
        arrays = [item for item in request.items if isinstance(item, list)]
        if arrays:
            return [tokenizer.from_ids(i, ids, request.truncate) for i, ids in enumerate(arrays)]
        texts = [item for item in request.items if isinstance(item, str)]
        return await tokenizer.encode(texts, request.truncate)

    def _validate(
        self,
        model: ModelVersion,
        request: InferRequest | ItemsRequest,
        items: list[TokenizedItem] | None,
    ) -> Work:
        """Every part checked against the model before anything is admitted or runs."""
        max_elements = self.settings.max_tensor_elements
        if items is None:
            assert isinstance(request, InferRequest)
            admitted = validate(model, request, max_elements)
            return Work([(request, admitted)], admitted.output_names, admitted.rows)
        tokens = sum(item.length for item in items)
        settings = self.settings
        check_limits(
            len(items), tokens, settings.max_items_per_request, settings.max_tokens_per_request
        )
        base = request if isinstance(request, InferRequest) else _items_base(model, request)
        parts = [
            (one, validate(model, one, max_elements)) for one in item_requests(model, items, base)
        ]
        return Work(parts, parts[0][1].output_names, len(items), tokens, stacked=True)

    async def _execute(self, model: ModelVersion, work: Work) -> Tensors:
        """Cache, then schedule, each part; a part that fails cancels the ones still queued."""
        if not work.stacked:
            request, admitted = work.parts[0]
            outputs = await self._outputs(model, request, admitted)
            return {name: outputs[name] for name in work.names}
        tasks = [
            asyncio.ensure_future(self._outputs(model, request, admitted, whole=True))
            for request, admitted in work.parts
        ]
        try:
            rows = await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:
                task.cancel()
            raise
        return stack_rows(rows, work.names)

    async def _outputs(
        self, model: ModelVersion, request: InferRequest, admitted: Admitted, whole: bool = False
    ) -> Outputs:
        """From the cache (or an identical request in flight) when allowed, else the batcher."""
        cache = self.cache
        if not (request.use_cache and cache is not None and cache.enabled_for(model.config)):
            return await _submit(model, request, admitted, None, whole)
        key = cache.key(model.name, model.version, request, admitted.output_names)
        outputs, _ = await cache.get_or_compute(
            key, model.name, model.version, lambda: _submit(model, request, admitted, key, whole)
        )
        return outputs


@dataclass(slots=True)
class Work:
    """A validated request as the plane runs it: one part per scheduled request. A text request
    has one part per item, so each item is cached, coalesced and batched on its own (32 texts of
    which 30 were seen before run the model for 2)."""

    parts: list[tuple[InferRequest, Admitted]]
    names: list[str]  # the outputs to return, in order
    rows: int  # what the key's row budget counts
    tokens: int = 0  # tokens the model sees (usage); 0 for a request of tensors
    stacked: bool = False  # per-item outputs, stacked back in item order


def _items_base(model: ModelVersion, request: ItemsRequest) -> InferRequest:
    """What the item requests of an ``ItemsRequest`` share (outputs, cache, hang-up probe)."""
    return InferRequest(
        model.name,
        model.version,
        {},
        {},
        outputs=request.outputs,
        use_cache=request.use_cache,
        client_gone=request.client_gone,
        arrival_ns=request.arrival_ns,
    )


def _submit(
    model: ModelVersion,
    request: InferRequest,
    admitted: Admitted,
    key: str | None = None,
    whole: bool = False,
) -> asyncio.Future[Outputs]:
    """Hand a validated request to its model's batcher (``key``: its cache key, by which a
    shared executor coalesces identical requests from several front ends; ``whole``: a part of
    a request the queue admitted as a whole already)."""
    return model.scheduler.submit(
        Submission(
            request.inputs,
            admitted.rows,
            admitted.signature,
            request.priority,
            request.timeout_us,
            request.client_gone,
            admitted.tokens,
            key,
            request.arrival_ns,
            admitted=whole,
            timing=requestlog.scheduled() if requestlog.ACTIVE else None,
        )
    )
