"""Protobuf <-> ``InferRequest``/``InferResponse`` for the gRPC front end.

Decoding only turns wire bytes into arrays of the shape and datatype the client declared (with
precise errors); checking them against the model is the data plane's job, shared with REST.
Raw contents become zero-copy ``np.frombuffer`` views so numeric tensors never pass through
Python lists.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from google.protobuf.internal.containers import MessageMap
from tritonclient.grpc import service_pb2 as pb

from service.datatypes import numpy_dtype, serialize_bytes
from service.errors import BadRequest, Unimplemented
from service.messages import Array, InferRequest, InferResponse, Parameters
from service.models.version import ModelVersion
from service.protocol.request import build_request
from service.protocol.response import output_datatype
from service.protocol.tensors import array_from_bytes, element_count
from service.protocol.validation import check_declared

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
_WIRE_DTYPE: dict[str, np.dtype[np.generic]] = {
    "bool_contents": np.dtype(np.bool_),
    "int_contents": np.dtype(np.int32),
    "int64_contents": np.dtype(np.int64),
    "uint_contents": np.dtype(np.uint32),
    "uint64_contents": np.dtype(np.uint64),
    "fp32_contents": np.dtype(np.float32),
    "fp64_contents": np.dtype(np.float64),
}

_SHARED_MEMORY = "shared_memory_region"


def parameters_to_dict(parameters: Mapping[str, pb.InferParameter]) -> Parameters:
    """``map<string, InferParameter>`` -> plain dict (the oneof's value, or None if unset)."""
    result: Parameters = {}
    for key, parameter in parameters.items():
        kind = parameter.WhichOneof("parameter_choice")
        result[key] = getattr(parameter, kind) if kind is not None else None
    return result


def dict_to_parameters(
    values: Mapping[str, object], target: MessageMap[str, pb.InferParameter]
) -> None:
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


def decode_raw(name: str, datatype: str, shape: Sequence[int], raw: bytes, limit: int) -> Array:
    """One ``raw_input_contents`` entry -> array of ``shape`` (a read-only view for numerics)."""
    dims, count = element_count(name, shape, limit)
    return array_from_bytes(name, datatype, dims, count, raw)


def decode_contents(
    name: str, datatype: str, shape: Sequence[int], contents: pb.InferTensorContents, limit: int
) -> Array:
    """Typed ``contents`` (fp32_contents, bytes_contents, ...) -> array of ``shape``."""
    dtype = numpy_dtype(name, datatype)
    dims, count = element_count(name, shape, limit)
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
        return array.reshape(dims)
    wire = _WIRE_DTYPE[field]
    array = np.fromiter(values, dtype=wire, count=count)
    if wire != dtype:
        if dtype.kind in "iu":
            info = np.iinfo(dtype.str)
            if count and (array.min() < info.min or array.max() > info.max):
                raise BadRequest(
                    f"input '{name}': {field} has values outside the range of {datatype} "
                    f"[{info.min}, {info.max}]"
                )
        array = array.astype(dtype)
    return array.reshape(dims)


def decode_request(
    request: pb.ModelInferRequest, max_elements: int, model: ModelVersion | None = None
) -> InferRequest:
    """``ModelInferRequest`` -> ``InferRequest`` (raw or typed contents, parameters, outputs).

    With ``model``, each input's datatype and shape are checked against its config before its
    data is decoded."""
    inputs, datatypes = _decode_inputs(request, max_elements, model)
    parameters = parameters_to_dict(request.parameters)
    decoded = build_request(
        request.model_name,
        request.model_version,
        inputs,
        datatypes,
        _decode_outputs(request),
        request.id,
        parameters,
    )
    decoded.declared_checked = model is not None
    return decoded


def _decode_inputs(
    request: pb.ModelInferRequest, max_elements: int, model: ModelVersion | None
) -> tuple[dict[str, Array], dict[str, str]]:
    raw_contents = request.raw_input_contents
    if raw_contents and len(raw_contents) != len(request.inputs):
        raise BadRequest(
            f"request has {len(request.inputs)} inputs but {len(raw_contents)} "
            "raw_input_contents; send one raw entry per input, in input order"
        )
    inputs: dict[str, Array] = {}
    datatypes: dict[str, str] = {}
    for index, tensor in enumerate(request.inputs):
        name = tensor.name
        if name in inputs:
            raise BadRequest(f"input '{name}' appears more than once")
        if _SHARED_MEMORY in tensor.parameters:
            raise Unimplemented(f"input '{name}': shared memory is not supported by this server")
        shape = tuple(tensor.shape)
        if model is not None:  # what the input declares, before its data is read
            element_count(name, shape, max_elements)
            check_declared(model, name, tensor.datatype, shape)
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
    return inputs, datatypes


def _decode_outputs(request: pb.ModelInferRequest) -> list[str] | None:
    if not request.outputs:
        return None
    outputs: list[str] = []
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
    return outputs


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
        datatype = output_datatype(name, array)
        message.outputs.add(name=name, datatype=datatype, shape=array.shape)
        if datatype == "BYTES":
            raw.append(serialize_bytes(array))
        else:
            raw.append(np.ascontiguousarray(array).tobytes())
    return message
