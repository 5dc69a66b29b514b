"""Triton's ``model_warmup``: sample batches run on every instance before a model turns READY.

First GPU batches pay for kernel selection, cuDNN autotuning and TensorRT engine builds; warming
up moves that cost from the first client to the load. Samples come from ``config.pbtxt``
(``zero_data``, ``random_data``, ``input_data_file`` under ``<model>/warmup/``, ``batch_size``,
``count``), as in Triton. Without ``model_warmup``, GPU instances get one zero batch at
``max_batch_size`` (variable dims take ``infergate.warmup_variable_dim``, default 1);
``parameters { key: "infergate.warmup" value: { string_value: "false" } }`` turns that off.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tritonclient.grpc import model_config_pb2 as mc

from service import parameters
from service.datatypes import CONFIG_TO_V2, V2_TO_NUMPY, deserialize_bytes
from service.messages import Array, Tensors


@dataclass(frozen=True, slots=True)
class WarmupSample:
    name: str
    inputs: Tensors  # batch axis included when the model batches
    count: int


def _dtype(data_type: int) -> tuple[str, np.dtype[np.generic]]:
    type_name = mc.DataType.Name(data_type)
    datatype = CONFIG_TO_V2.get(type_name)
    if datatype is None:
        raise ValueError(f"warmup input has unsupported data_type {type_name}")
    return datatype, V2_TO_NUMPY[datatype]


def _zeros(datatype: str, dtype: np.dtype[np.generic], shape: tuple[int, ...]) -> Array:
    if datatype == "BYTES":
        array = np.empty(shape, dtype=np.object_)
        array.fill(b"")
        return array
    return np.zeros(shape, dtype=dtype)


def _random(datatype: str, dtype: np.dtype[np.generic], shape: tuple[int, ...]) -> Array:
    rng = np.random.default_rng(0)
    if datatype == "BYTES":
        return _zeros(datatype, dtype, shape)
    if datatype == "BOOL":
        return rng.random(shape) < 0.5
    if np.issubdtype(dtype, np.integer):  # small ids: token inputs must stay inside vocabularies
        return rng.integers(0, 10, shape).astype(dtype)
    return rng.random(shape).astype(dtype)


def _from_file(
    path: Path, datatype: str, dtype: np.dtype[np.generic], shape: tuple[int, ...]
) -> Array:
    if not path.exists():  # a FIFO is fine: tests and tools may stream the sample
        raise ValueError(f"warmup input_data_file {path} does not exist")
    raw = path.read_bytes()
    count = int(np.prod(shape))
    if datatype == "BYTES":
        return deserialize_bytes(raw, count, path.name).reshape(shape)
    if len(raw) != count * dtype.itemsize:
        raise ValueError(
            f"warmup file {path.name} holds {len(raw)} bytes, {shape} of {datatype} needs "
            f"{count * dtype.itemsize}"
        )
    return np.frombuffer(raw, dtype=dtype).reshape(shape).copy()


def _sample(config: mc.ModelConfig, warmup: mc.ModelWarmup, model_dir: Path) -> WarmupSample:
    inputs: Tensors = {}
    batch = max(1, warmup.batch_size)
    for name, spec in warmup.inputs.items():
        datatype, dtype = _dtype(spec.data_type)
        shape = tuple(int(d) for d in spec.dims)
        kind = spec.WhichOneof("input_data_type")
        if kind == "input_data_file":
            one = _from_file(model_dir / "warmup" / spec.input_data_file, datatype, dtype, shape)
        elif kind == "random_data":
            one = _random(datatype, dtype, shape)
        else:
            one = _zeros(datatype, dtype, shape)
        inputs[name] = np.stack([one] * batch) if config.max_batch_size > 0 else one
    return WarmupSample(warmup.name or "warmup", inputs, max(1, warmup.count))


def _default_sample(config: mc.ModelConfig) -> WarmupSample:
    variable = parameters.WARMUP_VARIABLE_DIM.integer(config, minimum=1)
    batch = (config.max_batch_size,) if config.max_batch_size > 0 else ()
    inputs: Tensors = {}
    for tensor in config.input:
        datatype, dtype = _dtype(tensor.data_type)
        dims = tuple(int(d) if d >= 0 else variable for d in tensor.dims)
        inputs[tensor.name] = _zeros(datatype, dtype, batch + dims)
    return WarmupSample(f"default batch {config.max_batch_size or 1}", inputs, 1)


def warmup_samples(config: mc.ModelConfig, model_dir: Path, on_gpu: bool) -> list[WarmupSample]:
    """The config's warmup samples; by default one max-size batch on GPU, none on CPU."""
    if config.model_warmup:
        return [_sample(config, warmup, model_dir) for warmup in config.model_warmup]
    asked = parameters.WARMUP.raw(config)
    if not (parameters.WARMUP.flag(config) if asked else on_gpu):
        return []
    return [_default_sample(config)]
