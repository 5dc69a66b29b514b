"""What the gateway knows about one loaded model version, derived once from its config.pbtxt."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from tritonclient.grpc import model_config_pb2

from service.tensors import CONFIG_TO_V2, V2_TO_NUMPY

if TYPE_CHECKING:
    from service.backends.base import Backend

PAD_INPUTS_PARAMETER = "infergate.pad_inputs"


@dataclass(frozen=True, slots=True)
class TensorSpec:
    name: str
    datatype: str  # v2 datatype, e.g. "FP32"
    dims: tuple[int, ...]  # without the batch axis when the model batches; -1 = any size
    dtype: np.dtype

    def metadata(self, batch_axis: bool) -> dict[str, Any]:
        shape = [-1, *self.dims] if batch_axis else list(self.dims)
        return {"name": self.name, "datatype": self.datatype, "shape": shape}


def tensor_specs(tensors: Any) -> dict[str, TensorSpec]:
    """ModelInput/ModelOutput protos -> specs keyed by name, in config order."""
    specs: dict[str, TensorSpec] = {}
    for tensor in tensors:
        type_name = model_config_pb2.DataType.Name(tensor.data_type)
        datatype = CONFIG_TO_V2.get(type_name)
        if datatype is None:
            raise ValueError(f"tensor '{tensor.name}' has unsupported data_type {type_name}")
        dims = tuple(int(d) for d in tensor.dims)
        specs[tensor.name] = TensorSpec(tensor.name, datatype, dims, V2_TO_NUMPY[datatype])
    return specs


@dataclass(slots=True)
class ModelVersion:
    """A servable (model, version): config, tensor specs and the backend that runs it."""

    name: str
    version: str
    config: model_config_pb2.ModelConfig
    backend: Backend
    inputs: dict[str, TensorSpec] = field(init=False)
    outputs: dict[str, TensorSpec] = field(init=False)
    output_names: list[str] = field(init=False)
    max_batch_size: int = field(init=False)
    pad_inputs: frozenset[str] = field(init=False)
    scheduler: Any = None  # set by the data plane: its DynamicBatcher
    stats: Any = None  # set by the data plane: its ModelStats

    def __post_init__(self) -> None:
        self.inputs = tensor_specs(self.config.input)
        self.outputs = tensor_specs(self.config.output)
        self.output_names = list(self.outputs)
        self.max_batch_size = int(self.config.max_batch_size)
        parameter = self.config.parameters.get(PAD_INPUTS_PARAMETER)
        names = parameter.string_value.split(",") if parameter is not None else []
        self.pad_inputs = frozenset(n.strip() for n in names if n.strip() in self.inputs)

    @property
    def batches(self) -> bool:
        return self.max_batch_size > 0

    def metadata(self) -> dict[str, Any]:
        """KServe v2 model metadata."""
        return {
            "name": self.name,
            "versions": [self.version],
            "platform": self.config.platform or self.config.backend,
            "inputs": [spec.metadata(self.batches) for spec in self.inputs.values()],
            "outputs": [spec.metadata(self.batches) for spec in self.outputs.values()],
        }
