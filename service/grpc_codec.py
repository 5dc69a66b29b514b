"""Protobuf <-> ``InferRequest``/``InferResponse`` for the gRPC front end.

Decoding only turns wire bytes into arrays of the shape and datatype the client declared (with
precise errors); checking them against the model is the data plane's job, shared with REST.
Raw contents become zero-copy ``np.frombuffer`` views so numeric tensors never pass through
Python lists.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from tritonclient.grpc import service_pb2 as pb

from service.errors import BadRequest, Internal, Unimplemented
from service.tensors import NUMPY_TO_V2, V2_TO_NUMPY, deserialize_bytes, serialize_bytes
from service.types import InferRequest, InferResponse

# Which typed ``InferTensorContents`` field carries each datatype (FP16 has none: raw only).
CONTENTS_FIELD: dict[str, str] = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}

# The protobuf scalar type of each typed field; narrower datatypes are range-checked.
_WIRE_DTYPE: dict[str, np.dtype] = {
    "bool_contents": np.dtype(np.bool_),
    "int_contents": np.dtype(np.int32),
    "int64_contents": np.dtype(np.int64),
    "uint_contents": np.dtype(np.uint32),
    "uint64_contents": np.dtype(np.uint64),
    "fp32_contents": np.dtype(np.float32),
    "fp64_contents": np.dtype(np.float64),
}

_SHARED_MEMORY = "shared_memory_region"


def parameters_to_dict(parameters: Mapping[str, pb.InferParameter]) -> dict[str, Any]:
    """``map<string, InferParameter>`` -> plain dict (the oneof's value, or None if unset)."""
    result: dict[str, Any] = {}
    for key, parameter in parameters.items():
        kind = parameter.WhichOneof("parameter_choice")
        result[key] = getattr(parameter, kind) if kind is not None else None
    return result


def dict_to_parameters(values: Mapping[str, Any], target: Any) -> None:
    """Plain dict -> a protobuf ``map<string, InferParameter>`` (bool checked before int)."""
    for key, value in values.items():
        parameter = target[key]
        if isinstance(value, bool):
            parameter.bool_param = value
        elif isinstance(value, int):
            if value > np.iinfo(np.int64).max:
                parameter.uint64_param = value
            else:
                parameter.int64_param = value
        elif isinstance(value, float):
            parameter.double_param = value
        elif value is not None:
            parameter.string_param = str(value)


def element_count(name: str, shape: Sequence[int], limit: int) -> int:
    """Validate a declared shape and return its element count (Python ints: no overflow)."""
    for dim in shape:
        if dim < 0:
            raise BadRequest(f"input '{name}': shape {list(shape)} has a negative dimension")
    count = math.prod(shape)
    if count > limit:
        raise BadRequest(
            f"input '{name}': shape {list(shape)} has {count} elements, more than the "
            f"limit of {limit}"
        )
    return count


def decode_raw(
    name: str, datatype: str, shape: Sequence[int], raw: bytes, limit: int
) -> np.ndarray:
    """One ``raw_input_contents`` entry -> array of ``shape`` (a read-only view for numerics)."""
    dtype = _dtype(name, datatype)
    count = element_count(name, shape, limit)
    if datatype == "BYTES":
        return deserialize_bytes(raw, count, name).reshape(shape)
    expected = count * dtype.itemsize
    if len(raw) != expected:
        raise BadRequest(
            f"input '{name}': raw content has {len(raw)} bytes, expected {expected} "
            f"for shape {list(shape)} of {datatype}"
        )
    return np.frombuffer(raw, dtype=dtype, count=count).reshape(shape)


def decode_contents(
    name: str, datatype: str, shape: Sequence[int], contents: pb.InferTensorContents, limit: int
) -> np.ndarray:
    """Typed ``contents`` (fp32_contents, bytes_contents, ...) -> array of ``shape``."""
    dtype = _dtype(name, datatype)
    count = element_count(name, shape, limit)
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        raise BadRequest(
            f"input '{name}': {datatype} has no typed contents field; send it in raw_input_contents"
        )
    values = getattr(contents, field)
    if len(values) != count:
        raise BadRequest(
            f"input '{name}': {field} has {len(values)} elements, expected {count} "
            f"for shape {list(shape)}"
        )
    for other, _ in contents.ListFields():
        if other.name != field:
            raise BadRequest(
                f"input '{name}': {datatype} data must be in {field}, not {other.name}"
            )
    if datatype == "BYTES":
        array = np.empty(count, dtype=np.object_)
        array[:] = list(values)
        return array.reshape(shape)
    wire = _WIRE_DTYPE[field]
    array = np.fromiter(values, dtype=wire, count=count)
    if wire != dtype:
        if dtype.kind in "iu":
            info = np.iinfo(dtype)
            if count and (array.min() < info.min or array.max() > info.max):
                raise BadRequest(
                    f"input '{name}': {field} has values outside the range of {datatype} "
                    f"[{info.min}, {info.max}]"
                )
        array = array.astype(dtype)
    return array.reshape(shape)


def decode_request(request: pb.ModelInferRequest, max_elements: int) -> InferRequest:
    """``ModelInferRequest`` -> ``InferRequest`` (raw or typed contents, parameters, outputs)."""
    raw_contents = request.raw_input_contents
    if raw_contents and len(raw_contents) != len(request.inputs):
        raise BadRequest(
            f"request has {len(request.inputs)} inputs but {len(raw_contents)} "
            "raw_input_contents; send one raw entry per input, in input order"
        )
    inputs: dict[str, np.ndarray] = {}
    datatypes: dict[str, str] = {}
    for index, tensor in enumerate(request.inputs):
        name = tensor.name
        if name in inputs:
            raise BadRequest(f"input '{name}' appears more than once")
        if _SHARED_MEMORY in tensor.parameters:
            raise Unimplemented(f"input '{name}': shared memory is not supported by this server")
        shape = tuple(tensor.shape)
        if raw_contents:
            if tensor.HasField("contents"):
                raise BadRequest(f"input '{name}': has both typed contents and raw_input_contents")
            array = decode_raw(name, tensor.datatype, shape, raw_contents[index], max_elements)
        else:
            if not tensor.HasField("contents"):
                raise BadRequest(f"input '{name}': no data (neither contents nor raw contents)")
            array = decode_contents(name, tensor.datatype, shape, tensor.contents, max_elements)
        inputs[name] = array
        datatypes[name] = tensor.datatype

    outputs: list[str] | None = None
    if request.outputs:
        outputs = []
        for output in request.outputs:
            if _SHARED_MEMORY in output.parameters:
                raise Unimplemented(
                    f"output '{output.name}': shared memory is not supported by this server"
                )
            classification = output.parameters.get("classification")
            if classification is not None and classification.int64_param > 0:
                raise Unimplemented(
                    f"output '{output.name}': classification is not supported by this server"
                )
            outputs.append(output.name)

    parameters = parameters_to_dict(request.parameters)
    return InferRequest(
        model_name=request.model_name,
        model_version=request.model_version,
        inputs=inputs,
        datatypes=datatypes,
        outputs=outputs,
        id=request.id,
        parameters=parameters,
        priority=_int_parameter(parameters, "priority"),
        timeout_us=_int_parameter(parameters, "timeout"),
        use_cache=parameters.get("cache", True) is not False,
    )


def encode_response(response: InferResponse) -> pb.ModelInferResponse:
    """``InferResponse`` -> ``ModelInferResponse`` with every output in ``raw_output_contents``."""
    message = pb.ModelInferResponse(
        model_name=response.model_name,
        model_version=response.model_version,
        id=response.id,
    )
    if response.parameters:
        dict_to_parameters(response.parameters, message.parameters)
    raw = message.raw_output_contents
    for name, array in response.outputs.items():
        datatype = NUMPY_TO_V2.get(array.dtype)
        if datatype is None:
            raise Internal(f"output '{name}' has dtype {array.dtype} with no v2 datatype")
        message.outputs.add(name=name, datatype=datatype, shape=array.shape)
        if datatype == "BYTES":
            raw.append(serialize_bytes(array))
        else:
            raw.append(np.ascontiguousarray(array).tobytes())
    return message


def _dtype(name: str, datatype: str) -> np.dtype:
    dtype = V2_TO_NUMPY.get(datatype)
    if dtype is None:
        known = ", ".join(V2_TO_NUMPY)
        raise BadRequest(f"input '{name}': unknown datatype '{datatype}' (expected one of {known})")
    return dtype


def _int_parameter(parameters: Mapping[str, Any], key: str) -> int:
    value = parameters.get(key)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"parameter '{key}' must be an integer, got {value!r}")
    if value < 0:
        raise BadRequest(f"parameter '{key}' must not be negative, got {value}")
    return value
