"""Cache keys: a content hash of everything that determines a model's answer.

JSON and binary requests decode to the same numpy arrays, so the key is computed from canonical
bytes (sorted names, explicit little-endian dtype, C order) and never from the wire encoding.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping

import numpy as np
import orjson
import xxhash

from service.datatypes import V2_TO_NUMPY, datatype_of, serialize_bytes
from service.messages import Array, InferRequest

FORMAT_VERSION = "v1"

# Request parameters that only change transport or scheduling, never the output values.
TRANSPORT_PARAMETERS = frozenset(
    {
        "cache",
        "binary_data",
        "binary_data_output",
        "binary_data_size",
        "priority",
        "timeout",
        "headers",
        "request_id",
        "triton_enable_empty_final_response",
        "shared_memory_region",
        "shared_memory_byte_size",
        "shared_memory_offset",
    }
)

_U32 = struct.Struct("<I")
_I64 = struct.Struct("<q")


def _put_text(hasher: xxhash.xxh3_128, text: str) -> None:
    raw = text.encode("utf-8")
    hasher.update(_U32.pack(len(raw)))
    hasher.update(raw)


def canonical_tensor_bytes(array: Array, datatype: str) -> bytes:
    """The bytes a model sees for ``array`` declared as ``datatype``, independent of layout."""
    if datatype == "BYTES":
        return serialize_bytes(np.asarray(array, dtype=np.object_))
    dtype = V2_TO_NUMPY.get(datatype)
    if dtype is None:
        raise ValueError(f"unknown datatype {datatype!r}")
    return np.ascontiguousarray(array, dtype=dtype).tobytes()


def output_parameters(parameters: Mapping[str, object]) -> dict[str, object]:
    """The request parameters that may change what the model returns."""
    return {k: v for k, v in parameters.items() if k not in TRANSPORT_PARAMETERS}


def content_hash(
    model: str,
    version: str,
    inputs: Mapping[str, Array],
    datatypes: Mapping[str, str],
    output_names: Iterable[str],
    parameters: Mapping[str, object],
) -> str:
    """xxh3-128 over model, version, inputs (sorted by name), outputs and parameters."""
    hasher = xxhash.xxh3_128()
    _put_text(hasher, model)
    _put_text(hasher, version)
    hasher.update(_U32.pack(len(inputs)))
    for name in sorted(inputs):
        array = np.asarray(inputs[name])
        datatype = datatypes.get(name) or datatype_of(array)
        _put_text(hasher, name)
        _put_text(hasher, datatype)
        hasher.update(_U32.pack(array.ndim))
        for dim in array.shape:
            hasher.update(_I64.pack(dim))
        data = canonical_tensor_bytes(array, datatype)
        hasher.update(_I64.pack(len(data)))
        hasher.update(data)
    outputs = sorted(set(output_names))
    hasher.update(_U32.pack(len(outputs)))
    for name in outputs:
        _put_text(hasher, name)
    params = output_parameters(parameters)
    blob = orjson.dumps(params, option=orjson.OPT_SORT_KEYS, default=str) if params else b""
    hasher.update(_U32.pack(len(blob)))
    hasher.update(blob)
    return hasher.hexdigest()


def request_key(
    namespace: str, model: str, version: str, request: InferRequest, output_names: list[str]
) -> str:
    """``{namespace}:v1:{model}:{hash}``: namespace and format version let old entries age out."""
    digest = content_hash(
        model, version, request.inputs, request.datatypes, output_names, request.parameters
    )
    return f"{namespace}:{FORMAT_VERSION}:{model}:{digest}"
