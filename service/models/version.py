"""What the gateway knows about one loaded model version, derived once from its config.pbtxt, and
about one model (its state and servable versions)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol

import numpy as np
from tritonclient.grpc import model_config_pb2

from service import parameters
from service.datatypes import CONFIG_TO_V2, V2_TO_NUMPY
from service.errors import InferenceError
from service.messages import JsonObject, Tensors
from service.observability.statistics import ModelStats

if TYPE_CHECKING:
    from collections.abc import Iterable

    from service.backends.base import Backend
    from service.models.tokenizer import TextTokenizer
    from service.observability.timing import Timing


class ModelState(StrEnum):
    """Triton's model states, as the repository index reports them."""

    READY = "READY"
    UNAVAILABLE = "UNAVAILABLE"
    LOADING = "LOADING"
    UNLOADING = "UNLOADING"


#: the order in which requests resolved their models (eviction takes the least recent first)
_uses = itertools.count(1)


@dataclass(frozen=True, slots=True)
class TensorSpec:
    name: str
    datatype: str  # v2 datatype, e.g. "FP32"
    dims: tuple[int, ...]  # without the batch axis when the model batches; -1 = any size
    dtype: np.dtype[np.generic]
    shape: tuple[int, ...]  # what a request declares: the batch axis (-1) first when batching
    fixed: tuple[tuple[int, int], ...]  # (axis, size) of every axis of ``shape`` that is not -1

    def metadata(self) -> JsonObject:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


def check_config(config: model_config_pb2.ModelConfig) -> None:
    """The rules Triton applies to a model configuration before it loads one (its own
    config.pbtxt or a load's ``config`` parameter); ValueError names the first one broken."""
    if config.max_batch_size < 0:
        raise ValueError(f"max_batch_size must be >= 0, not {config.max_batch_size}")
    if config.HasField("dynamic_batching"):
        if config.max_batch_size == 0:
            raise ValueError("dynamic batching needs max_batch_size > 0")
        for size in config.dynamic_batching.preferred_batch_size:
            if not 0 < size <= config.max_batch_size:
                raise ValueError(
                    f"preferred_batch_size {size} is not in 1..max_batch_size "
                    f"({config.max_batch_size})"
                )
    for kind, tensors in (("input", config.input), ("output", config.output)):
        names: set[str] = set()
        for tensor in tensors:
            if not tensor.name or tensor.name in names:
                raise ValueError(f"every {kind} needs a name of its own (got {tensor.name!r})")
            names.add(tensor.name)
            if tensor.data_type == model_config_pb2.TYPE_INVALID:
                raise ValueError(f"{kind} '{tensor.name}' needs a data_type")
            if any(dim < -1 for dim in tensor.dims):
                raise ValueError(
                    f"{kind} '{tensor.name}' has dims {list(tensor.dims)}: each is -1 or >= 0"
                )
    for group in config.instance_group:
        if group.count < 0:
            raise ValueError(f"instance_group count must be >= 0, not {group.count}")


def tensor_specs(
    tensors: Iterable[model_config_pb2.ModelInput | model_config_pb2.ModelOutput],
    batch_axis: bool,
) -> dict[str, TensorSpec]:
    """ModelInput/ModelOutput protos -> specs keyed by name, in config order."""
    specs: dict[str, TensorSpec] = {}
    for tensor in tensors:
        type_name = model_config_pb2.DataType.Name(tensor.data_type)
        datatype = CONFIG_TO_V2.get(type_name)
        if datatype is None:
            raise ValueError(f"tensor '{tensor.name}' has unsupported data_type {type_name}")
        dims = tuple(int(d) for d in tensor.dims)
        shape = (-1, *dims) if batch_axis else dims
        fixed = tuple((axis, size) for axis, size in enumerate(shape) if size != -1)
        specs[tensor.name] = TensorSpec(
            tensor.name, datatype, dims, V2_TO_NUMPY[datatype], shape, fixed
        )
    return specs


@dataclass(slots=True)
class Submission:
    """A validated request for a model's batcher: its tensors and how to schedule them."""

    inputs: Tensors
    rows: int  # batch rows (1 for a model that does not batch)
    signature: tuple[object, ...]  # requests with equal signatures may share a batch
    priority: int = 0  # 0 = the model's default priority level
    timeout_us: int = 0  # 0 = the queue policy's (or settings') default
    client_gone: Callable[[], bool] | None = None  # True once the client has hung up
    tokens: int = 0  # padded sequence length of each row, counted against the token budget
    key: str | None = None  # cache key: a shared executor runs identical requests once
    arrival_ns: int = 0  # time.monotonic_ns() at the front end: the budget covers the whole stay
    admitted: bool = False  # its request was admitted as a whole (Scheduler.admit) already
    #: traced or in the request log: its trace context, and where its batcher notes its times
    timing: Timing | None = None


class Scheduler(Protocol):
    """Where the data plane hands validated requests: ``service.dataplane.batching.DynamicBatcher``
    here, or the executor's (``service.processes.worker.RemoteScheduler``)."""

    @property
    def pending(self) -> int: ...

    def submit(self, submission: Submission) -> asyncio.Future[Tensors]: ...

    def refusal(
        self, rows: int, units: int, priority: int = 0, timeout_us: int = 0, arrival_ns: int = 0
    ) -> InferenceError | None:
        """The error (counted) for a request that would stay past its budget, else None; with
        ``rows`` 0, whether the work already ahead does (asked before the body is read)."""
        ...

    async def admit(
        self, rows: int, units: int, priority: int = 0, timeout_us: int = 0, arrival_ns: int = 0
    ) -> None:
        """Admit a request of many parts as a whole (refused once, or not at all)."""
        ...

    def units(self, rows: int, tokens: int) -> int:
        """The work of ``rows`` rows of ``tokens`` tokens each, as admission counts it."""
        ...

    async def close(self) -> None: ...


@dataclass(slots=True)
class ModelVersion:
    """A servable (model, version): config, tensor specs, the backend that runs it, its batcher
    (set by the data plane when the version is attached), its statistics and, for a model that
    takes text, its tokenizer."""

    name: str
    version: str
    config: model_config_pb2.ModelConfig
    backend: Backend
    tokenizer: TextTokenizer | None = None
    inputs: dict[str, TensorSpec] = field(init=False)
    outputs: dict[str, TensorSpec] = field(init=False)
    output_names: list[str] = field(init=False)
    max_batch_size: int = field(init=False)
    batches: bool = field(init=False)  # max_batch_size > 0: inputs carry a batch axis first
    pad_inputs: frozenset[str] = field(init=False)
    max_sequence_length: int = field(init=False)  # 0 = no limit known
    pad_values: dict[str, int] = field(init=False)  # inputs padded with other than 0
    max_batch_tokens: int = field(init=False)  # 0 = batches limited by rows only
    stats: ModelStats = field(init=False)
    scheduler: Scheduler = field(init=False)
    last_use: int = field(init=False, default=0)  # when a request last resolved to it (an order)

    def __post_init__(self) -> None:
        self.max_batch_size = int(self.config.max_batch_size)
        self.batches = self.max_batch_size > 0
        self.inputs = tensor_specs(self.config.input, self.batches)
        self.outputs = tensor_specs(self.config.output, self.batches)
        self.output_names = list(self.outputs)
        config = self.config
        check_config(config)
        parameters.check(config)
        self.pad_inputs = frozenset(
            n for n in parameters.PAD_INPUTS.names(config) if n in self.inputs
        )
        self.max_sequence_length = parameters.MAX_SEQUENCE_LENGTH.integer(config)
        pad_id = parameters.TOKENIZER_PAD_ID.integer(config)
        self.pad_values = {"input_ids": pad_id} if pad_id and "input_ids" in self.pad_inputs else {}
        self.max_batch_tokens = parameters.MAX_BATCH_TOKENS.integer(config)
        self.stats = ModelStats(self.name, self.version)

    def metadata(self) -> JsonObject:
        """KServe v2 model metadata."""
        return {
            "name": self.name,
            "versions": [self.version],
            "platform": self.config.platform or self.config.backend,
            "inputs": [spec.metadata() for spec in self.inputs.values()],
            "outputs": [spec.metadata() for spec in self.outputs.values()],
        }

    def touch(self) -> None:
        """A request resolved to this version now."""
        self.last_use = next(_uses)


@dataclass(slots=True)
class ModelEntry:
    """One model of the repository: its state and the versions it serves."""

    name: str
    state: ModelState = ModelState.UNAVAILABLE
    reason: str = ""
    versions: dict[str, ModelVersion] = field(default_factory=dict)
    default_version: str = ""
    #: meant to be loaded: counts for server readiness (an unloaded model no longer does)
    wanted: bool = True
    #: its last load failed: requests do not load it again until it is loaded explicitly or
    #: its files change (on_demand)
    failed: bool = False
