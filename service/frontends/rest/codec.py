"""KServe v2 REST bodies <-> InferRequest/InferResponse, JSON and Triton's binary tensor extension.

Kept free of any web framework so the hot path stays a few dict lookups and numpy views; every
rule about datatypes, shapes and parameters lives in ``service.protocol`` and is shared with gRPC.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np
import orjson

from service.datatypes import serialize_bytes
from service.errors import BadRequest, PayloadTooLarge
from service.messages import Array, InferRequest, InferResponse, JsonObject
from service.models.version import ModelVersion
from service.protocol.request import build_request
from service.protocol.response import output_datatype
from service.protocol.tensors import array_from_bytes, array_from_values, element_count
from service.protocol.validation import check_declared

JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


@dataclass(slots=True)
class OutputEncoding:
    """How the client wants outputs back: binary for all, or per output name."""

    binary_all: bool = False
    binary: dict[str, bool] = field(default_factory=dict)

    def is_binary(self, name: str) -> bool:
        return self.binary.get(name, self.binary_all)


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
    if not inflater.eof:
        raise BadRequest(f"request body is truncated {encoding} data (no end of stream)")
    return data


def decode_request(
    body: bytes,
    header_length: int | None,
    model: ModelVersion,
    model_version: str,
    max_elements: int,
    max_json_bytes: int = 1 << 62,
) -> tuple[InferRequest, OutputEncoding]:
    """Parse a v2 infer body for ``model`` (each input's datatype and shape are checked against
    its config before the data is decoded). Returns the request and the output encoding."""
    header, blob = _split_body(body, header_length, max_json_bytes)
    raw_inputs = header.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise BadRequest("request needs a non-empty 'inputs' list")
    inputs, datatypes = _decode_inputs(model, raw_inputs, blob, max_elements)
    parameters = header.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise BadRequest("'parameters' must be an object")
    outputs, encoding = _decode_outputs(header.get("outputs"))
    encoding.binary_all = bool(parameters.get("binary_data_output", False))
    request_id = header.get("id", "")
    request = build_request(
        model.name, model_version, inputs, datatypes, outputs, str(request_id), parameters
    )
    request.declared_checked = True
    return request, encoding


def _split_body(
    body: bytes, header_length: int | None, max_json_bytes: int
) -> tuple[JsonObject, memoryview]:
    """The JSON header (an object) and the binary tensor data after it."""
    if header_length is not None:
        if header_length < 0 or header_length > len(body):
            raise BadRequest(
                f"Inference-Header-Content-Length {header_length} is past the body "
                f"({len(body)} bytes)"
            )
        header_bytes, blob = body[:header_length], memoryview(body)[header_length:]
    else:
        header_bytes, blob = body, memoryview(b"")
    if len(header_bytes) > max_json_bytes:
        raise PayloadTooLarge(
            f"JSON request of {len(header_bytes)} bytes exceeds {max_json_bytes}; send large "
            "tensors as binary data (Inference-Header-Content-Length)"
        )
    return parse_json_object(header_bytes), blob


def parse_json_object(data: bytes) -> JsonObject:
    """A request body that must be one JSON object."""
    try:
        header = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"malformed JSON request: {exc}") from exc
    if not isinstance(header, dict):
        raise BadRequest("request body must be a JSON object")
    return header


def _decode_inputs(
    model: ModelVersion, raw_inputs: list[object], blob: memoryview, max_elements: int
) -> tuple[dict[str, Array], dict[str, str]]:
    inputs: dict[str, Array] = {}
    datatypes: dict[str, str] = {}
    offset = 0
    for raw in raw_inputs:
        if not isinstance(raw, dict):
            raise BadRequest("each input must be a JSON object")
        name = raw.get("name")
        if not isinstance(name, str):
            raise BadRequest("input without a 'name'")
        if name in inputs:
            raise BadRequest(f"input '{name}' appears twice")
        datatype = raw.get("datatype")
        array, offset = _decode_input(model, name, datatype, raw, blob, offset, max_elements)
        inputs[name] = array
        datatypes[name] = str(datatype)
    if offset != len(blob):
        raise BadRequest(f"{len(blob) - offset} bytes of binary data belong to no input")
    return inputs, datatypes


def _decode_input(
    model: ModelVersion,
    name: str,
    datatype: object,
    raw: JsonObject,
    blob: memoryview,
    offset: int,
    max_elements: int,
) -> tuple[Array, int]:
    """One input's tensor from JSON ``data`` or its slice of the binary data."""
    if not isinstance(datatype, str):
        raise BadRequest(f"input '{name}': unknown datatype {datatype!r}")
    shape, count = element_count(name, raw.get("shape"), max_elements)
    check_declared(model, name, datatype, shape)
    parameters = raw.get("parameters") or {}
    size = parameters.get("binary_data_size") if isinstance(parameters, dict) else None
    if size is None:
        if "data" not in raw:
            raise BadRequest(f"input '{name}' has neither 'data' nor binary_data_size")
        return array_from_values(name, datatype, shape, count, raw["data"]), offset
    if type(size) is not int or size < 0:
        raise BadRequest(f"input '{name}': binary_data_size must be a non-negative integer")
    if offset + size > len(blob):
        raise BadRequest(
            f"input '{name}': binary_data_size {size} runs past the end of the body "
            f"({len(blob) - offset} bytes left)"
        )
    chunk = blob[offset : offset + size]
    return array_from_bytes(name, datatype, shape, count, chunk), offset + size


def _decode_outputs(raw_outputs: object) -> tuple[list[str] | None, OutputEncoding]:
    encoding = OutputEncoding()
    if raw_outputs is None:
        return None, encoding
    if not isinstance(raw_outputs, list):
        raise BadRequest("'outputs' must be a list")
    outputs: list[str] = []
    for raw in raw_outputs:
        if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
            raise BadRequest("each requested output needs a 'name'")
        name = raw["name"]
        outputs.append(name)
        parameters = raw.get("parameters") or {}
        if isinstance(parameters, dict) and "binary_data" in parameters:
            encoding.binary[name] = bool(parameters["binary_data"])
    return outputs, encoding


def encode_response(response: InferResponse, encoding: OutputEncoding) -> tuple[bytes, int | None]:
    """Build the response body; returns (body, header length when binary outputs are present)."""
    outputs: list[JsonObject] = []
    blobs: list[bytes] = []
    for name, array in response.outputs.items():
        datatype = output_datatype(name, array)
        entry: JsonObject = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if encoding.is_binary(name):
            raw = (
                serialize_bytes(array)
                if datatype == "BYTES"
                else np.ascontiguousarray(array).tobytes()
            )
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            entry["data"] = _json_data(array, datatype)
        outputs.append(entry)
    body: JsonObject = {
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


def _json_data(array: Array, datatype: str) -> object:
    if datatype == "BYTES":
        return [
            item.decode("utf-8", "replace") if isinstance(item, bytes) else str(item)
            for item in array.reshape(-1)
        ]
    if datatype == "FP16":
        return array.astype(np.float32).reshape(-1)
    return array.reshape(-1)
