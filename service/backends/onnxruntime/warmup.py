"""Triton's ``model_warmup``: sample batches run on every instance before a model turns READY.

First GPU batches pay for kernel selection, cuDNN autotuning and TensorRT engine builds; warming
up moves that cost from the first client to the load. Samples come from ``config.pbtxt``
(``zero_data``, ``random_data``, ``input_data_file`` under ``<model>/warmup/``, ``batch_size``,
``count``), as in Triton. Without ``model_warmup``, every model gets one zero batch at
``max_batch_size`` (variable dims take ``infergate.warmup_variable_dim``: default 1; a token
model's padded inputs take :data:`TOKEN_WARMUP_LENGTH` tokens, in as many rows as hold the
tokens of ``max_batch_size`` rows of 32);
``parameters { key: "infergate.warmup" value: { string_value: "false" } }`` turns that off. The
fastest run of the last sample is the model's :class:`~service.backends.base.Calibration`: the
throughput admission predicts from until real batches are measured.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tritonclient.grpc import model_config_pb2 as mc

from service import parameters
from service.datatypes import CONFIG_TO_V2, V2_TO_NUMPY, deserialize_bytes
from service.messages import Array, Tensors

#: tokens per row of the default warm-up batch of a token model. A transformer's cost per token
#: grows with the sequence (MiniLM on CPU: 7.0k tokens/s in rows of 32, 5.7k in rows of 128), so
#: the warm-up, which gives admission its first estimate, runs rows as long as a paragraph: a
#: first burst of typical texts is not promised more than the model does. The batch keeps the
#: work of ``max_batch_size`` rows of 32 tokens (fewer, longer rows), so a load costs no more.
#: ``infergate.warmup_variable_dim`` overrides it (then every row of ``max_batch_size``).
TOKEN_WARMUP_LENGTH = 128
TOKEN_WARMUP_BATCH_TOKENS_PER_ROW = 32


@dataclass(frozen=True, slots=True)
class WarmupSample:
    name: str
    inputs: Tensors  # batch axis included when the model batches
    count: int
    units: int = 1  # its work as admission counts it: rows, or rows x tokens (pad inputs)


def _units(config: mc.ModelConfig, inputs: Tensors) -> int:
    """Rows of a sample, times the tokens of its first padded input (a token model)."""
    rows = next(iter(inputs.values())).shape[0] if config.max_batch_size > 0 and inputs else 1
    for name in parameters.PAD_INPUTS.names(config):
        if name in inputs:
            return int(rows * int(np.prod(inputs[name].shape[1:], dtype=np.int64)))
    return int(rows)


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
    return WarmupSample(
        warmup.name or "warmup", inputs, max(1, warmup.count), _units(config, inputs)
    )


def _default_sample(config: mc.ModelConfig) -> WarmupSample:
    variable = parameters.WARMUP_VARIABLE_DIM.integer(config, minimum=1)
    padded = set(parameters.PAD_INPUTS.names(config))
    chosen = bool(parameters.WARMUP_VARIABLE_DIM.raw(config))
    tokens = variable if chosen else TOKEN_WARMUP_LENGTH
    limit = parameters.MAX_SEQUENCE_LENGTH.integer(config)
    tokens = min(tokens, limit) if limit else tokens
    rows = config.max_batch_size
    if padded and not chosen:  # the work of max_batch_size rows of 32 tokens, in longer rows
        rows = min(rows, max(1, rows * TOKEN_WARMUP_BATCH_TOKENS_PER_ROW // tokens))
    batch = (rows,) if config.max_batch_size > 0 else ()
    inputs: Tensors = {}
    for tensor in config.input:
        datatype, dtype = _dtype(tensor.data_type)
        size = tokens if tensor.name in padded else variable
        dims = tuple(int(d) if d >= 0 else size for d in tensor.dims)
        inputs[tensor.name] = _zeros(datatype, dtype, batch + dims)
    name = f"default batch {batch[0] if batch else 1}"
    return WarmupSample(name, inputs, 1, _units(config, inputs))


def warmup_samples(config: mc.ModelConfig, model_dir: Path) -> list[WarmupSample]:
    """The config's warmup samples; by default one zero batch at ``max_batch_size``, on every
    device (it also gives admission its first estimate); none with ``infergate.warmup: false``."""
    if config.model_warmup:
        return [_sample(config, warmup, model_dir) for warmup in config.model_warmup]
    if parameters.WARMUP.raw(config) and not parameters.WARMUP.flag(config):
        return []
    return [_default_sample(config)]
