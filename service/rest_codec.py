"""KServe v2 REST bodies <-> InferRequest/InferResponse, JSON and Triton's binary tensor extension.

Kept free of any web framework so the hot path stays a few dict lookups and numpy views.
"""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np
import orjson

from service.errors import BadRequest, PayloadTooLarge
from service.tensors import NUMPY_TO_V2, V2_TO_NUMPY, deserialize_bytes, serialize_bytes
from service.types import InferRequest, InferResponse

JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


def decompress(body: bytes, encoding: str, limit: int) -> bytes:
    """Undo gzip/deflate request encoding without letting a small bomb grow past ``limit``."""
    if encoding in ("", "identity"):
        return body
    if encoding == "gzip":
        wbits = 16 + zlib.MAX_WBITS
    elif encoding == "deflate":
        wbits = zlib.MAX_WBITS
    else:
        raise BadRequest(f"unsupported Content-Encoding '{encoding}' (use gzip or deflate)")
    inflater = zlib.decompressobj(wbits)
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise BadRequest(f"request body is not valid {encoding} data: {exc}") from exc
    if len(data) > limit or inflater.unconsumed_tail:
        raise PayloadTooLarge(f"decompressed request body exceeds {limit} bytes")
    return data


def _check_shape(name: str, shape: Any, limit: int) -> tuple[int, ...]:
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise BadRequest(f"input '{name}': 'shape' must be a list of non-negative integers")
    count = 1
    for dim in shape:
        count *= dim
        if count > limit:
            raise BadRequest(f"input '{name}': shape {shape} has more than {limit} elements")
    return tuple(shape)


def _from_json_data(name: str, datatype: str, shape: tuple[int, ...], data: Any) -> np.ndarray:
    count = 1
    for dim in shape:
        count *= dim
    if datatype == "BYTES":
        flat = np.asarray(data, dtype=np.object_).reshape(-1)
        if flat.size != count:
            raise BadRequest(
                f"input '{name}': shape {list(shape)} needs {count} elements, got {flat.size}"
            )
        result = np.empty(count, dtype=np.object_)
        for index, item in enumerate(flat):
            if isinstance(item, str):
                result[index] = item.encode("utf-8")
            else:
                raise BadRequest(f"input '{name}': BYTES elements must be strings")
        return result.reshape(shape)
    try:
        array = np.asarray(data, dtype=V2_TO_NUMPY[datatype])
    except (ValueError, TypeError, OverflowError) as exc:
        raise BadRequest(f"input '{name}': data does not fit datatype {datatype}: {exc}") from exc
    if array.size != count:
        raise BadRequest(
            f"input '{name}': shape {list(shape)} needs {count} elements, got {array.size}"
        )
    return array.reshape(shape)


def decode_request(
    body: bytes,
    header_length: int | None,
    model_name: str,
    model_version: str,
    max_elements: int,
) -> tuple[InferRequest, dict[str, Any]]:
    """Parse a v2 infer body. Returns the request and the output encoding options."""
    if header_length is not None:
        if header_length < 0 or header_length > len(body):
            raise BadRequest(
                f"Inference-Header-Content-Length {header_length} is past the body "
                f"({len(body)} bytes)"
            )
        header_bytes, blob = body[:header_length], memoryview(body)[header_length:]
    else:
        header_bytes, blob = body, memoryview(b"")
    try:
        header = orjson.loads(header_bytes)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"malformed JSON request: {exc}") from exc
    if not isinstance(header, dict):
        raise BadRequest("request body must be a JSON object")
    raw_inputs = header.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise BadRequest("request needs a non-empty 'inputs' list")

    inputs: dict[str, np.ndarray] = {}
    datatypes: dict[str, str] = {}
    offset = 0
    for raw in raw_inputs:
        if not isinstance(raw, dict):
            raise BadRequest("each input must be a JSON object")
        name = raw.get("name")
        datatype = raw.get("datatype")
        if not isinstance(name, str):
            raise BadRequest("input without a 'name'")
        if name in inputs:
            raise BadRequest(f"input '{name}' appears twice")
        if datatype not in V2_TO_NUMPY:
            raise BadRequest(f"input '{name}': unknown datatype {datatype!r}")
        shape = _check_shape(name, raw.get("shape"), max_elements)
        parameters = raw.get("parameters") or {}
        size = parameters.get("binary_data_size") if isinstance(parameters, dict) else None
        if size is not None:
            if type(size) is not int or size < 0:
                raise BadRequest(f"input '{name}': binary_data_size must be a non-negative integer")
            if offset + size > len(blob):
                raise BadRequest(
                    f"input '{name}': binary_data_size {size} runs past the end of the body "
                    f"({len(blob) - offset} bytes left)"
                )
            chunk = blob[offset : offset + size]
            offset += size
            count = 1
            for dim in shape:
                count *= dim
            if datatype == "BYTES":
                array = deserialize_bytes(chunk, count, name).reshape(shape)
            else:
                dtype = V2_TO_NUMPY[datatype]
                if size != count * dtype.itemsize:
                    raise BadRequest(
                        f"input '{name}': {size} bytes of binary data do not match shape "
                        f"{list(shape)} of {datatype} ({count * dtype.itemsize} bytes)"
                    )
                array = np.frombuffer(chunk, dtype=dtype).reshape(shape)
        else:
            if "data" not in raw:
                raise BadRequest(f"input '{name}' has neither 'data' nor binary_data_size")
            array = _from_json_data(name, datatype, shape, raw["data"])
        inputs[name] = array
        datatypes[name] = datatype
    if offset != len(blob):
        raise BadRequest(f"{len(blob) - offset} bytes of binary data belong to no input")

    parameters = header.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise BadRequest("'parameters' must be an object")
    raw_outputs = header.get("outputs")
    outputs: list[str] | None = None
    binary_outputs: dict[str, bool] = {}
    if raw_outputs is not None:
        if not isinstance(raw_outputs, list):
            raise BadRequest("'outputs' must be a list")
        outputs = []
        for raw in raw_outputs:
            if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
                raise BadRequest("each requested output needs a 'name'")
            outputs.append(raw["name"])
            out_parameters = raw.get("parameters") or {}
            if isinstance(out_parameters, dict) and "binary_data" in out_parameters:
                binary_outputs[raw["name"]] = bool(out_parameters["binary_data"])
    request = InferRequest(
        model_name=model_name,
        model_version=model_version,
        inputs=inputs,
        datatypes=datatypes,
        outputs=outputs,
        id=str(header.get("id", "")),
        parameters=parameters,
        priority=_int_parameter(parameters, "priority"),
        timeout_us=_int_parameter(parameters, "timeout"),
        use_cache=parameters.get("cache", True) is not False,
    )
    encoding = {
        "binary_all": bool(parameters.get("binary_data_output", False)),
        "binary": binary_outputs,
    }
    return request, encoding


def _int_parameter(parameters: dict[str, Any], key: str) -> int:
    value = parameters.get(key, 0)
    if type(value) is not int or value < 0:
        raise BadRequest(f"parameter '{key}' must be a non-negative integer")
    return value


def encode_response(response: InferResponse, encoding: dict[str, Any]) -> tuple[bytes, int | None]:
    """Build the response body; returns (body, header length when binary outputs are present)."""
    binary_all = encoding["binary_all"]
    binary = encoding["binary"]
    outputs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name, array in response.outputs.items():
        datatype = _datatype(array)
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if binary.get(name, binary_all):
            raw = (
                serialize_bytes(array)
                if datatype == "BYTES"
                else np.ascontiguousarray(array).tobytes()
            )
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        elif datatype == "BYTES":
            entry["data"] = [
                item.decode("utf-8", "replace") if isinstance(item, bytes) else str(item)
                for item in array.reshape(-1)
            ]
        elif datatype == "FP16":
            entry["data"] = array.astype(np.float32).reshape(-1)
        else:
            entry["data"] = array.reshape(-1)
        outputs.append(entry)
    body: dict[str, Any] = {
        "model_name": response.model_name,
        "model_version": response.model_version,
        "outputs": outputs,
    }
    if response.id:
        body["id"] = response.id
    header = orjson.dumps(body, option=JSON_OPTIONS)
    if not blobs:
        return header, None
    return b"".join([header, *blobs]), len(header)


def _datatype(array: np.ndarray) -> str:
    datatype = NUMPY_TO_V2.get(array.dtype)
    if datatype is None:
        raise BadRequest(f"output dtype {array.dtype} has no v2 datatype")
    return datatype
