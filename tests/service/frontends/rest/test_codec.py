"""REST codec + validation in-process: every bad request gets a precise 400 before any model runs.

The same table once ran through a real server (tests/integration/test_rest_errors.py keeps a few
of its rows there, for the rendering and for the server serving on afterwards).
"""

from __future__ import annotations

import gzip
import json
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from service.errors import BadRequest, InferenceError, PayloadTooLarge
from service.frontends.rest.codec import OutputEncoding, decode_request, decompress, encode_response
from service.messages import InferResponse
from service.models.sources import LocalOnnxSource
from service.models.version import ModelVersion
from service.protocol.tensors import array_from_bytes, array_from_values
from service.protocol.validation import validate
from service.settings import Settings

LIMIT = 1 << 26
GOOD = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.5] * 64}]}
FLOATS_64 = np.zeros(64, dtype=np.float32).tobytes()


def binary_body(header: dict[str, object], blob: bytes) -> tuple[bytes, int]:
    encoded = json.dumps(header).encode()
    return encoded + blob, len(encoded)


def binary_input(shape: list[int], datatype: str = "FP32", size: int = 256, name: str = "input"):
    return {
        "name": name,
        "shape": shape,
        "datatype": datatype,
        "parameters": {"binary_data_size": size},
    }


def json_body(**changes: object) -> bytes:
    return json.dumps({"inputs": [{**GOOD["inputs"][0], **changes}]}).encode()


# name -> (body, Inference-Header-Content-Length, message the 400 must contain)
DECODE_ERRORS: dict[str, tuple[bytes, int | None, str]] = {
    "malformed json": (b'{"inputs": [', None, "malformed JSON"),
    "json NaN literal": (json_body().replace(b"0.5]", b"NaN]"), None, "malformed JSON"),
    "not an object": (b"[1, 2]", None, "must be a JSON object"),
    "no inputs": (b"{}", None, "non-empty 'inputs'"),
    "unknown datatype": (json_body(datatype="FP128"), None, "unknown datatype 'FP128'"),
    "data count mismatch": (
        json_body(data=[0.5] * 10),
        None,
        "shape [1, 64] needs 64 elements, got 10",
    ),
    "string in float data": (json_body(data=["x"] * 64), None, "does not fit datatype FP32"),
    "absurd dimensions": (json_body(shape=[1 << 40, 1 << 40], data=[]), None, "elements"),
    "negative dimension": (json_body(shape=[-1, 64]), None, "non-negative integers"),
    "bad priority": (
        json.dumps({**GOOD, "parameters": {"priority": "high"}}).encode(),
        None,
        "parameter 'priority' must be a non-negative integer",
    ),
    "truncated binary body": (
        *binary_body({"inputs": [binary_input([1, 64])]}, FLOATS_64[:100]),
        "binary_data_size 256 runs past the end of the body",
    ),
    "binary size does not match shape": (
        *binary_body({"inputs": [binary_input([1, 64], size=128)]}, FLOATS_64[:128]),
        "128 bytes of binary data do not match shape [1, 64] of FP32 (256 bytes)",
    ),
    "extra binary bytes": (
        *binary_body({"inputs": [binary_input([1, 64])]}, FLOATS_64 + b"xx"),
        "2 bytes of binary data belong to no input",
    ),
    "header length past the body": (
        b'{"inputs": []}',
        5000,
        "Inference-Header-Content-Length 5000 is past the body (14 bytes)",
    ),
}


@pytest.mark.parametrize("case", list(DECODE_ERRORS), ids=list(DECODE_ERRORS))
def test_decode_errors_are_precise_400s(digits_mlp: ModelVersion, case: str) -> None:
    body, header_length, message = DECODE_ERRORS[case]
    with pytest.raises(BadRequest) as info:
        decode_request(body, header_length, digits_mlp, "", LIMIT)
    assert info.value.http_status == 400
    assert message in info.value.message


def test_truncated_bytes_element() -> None:
    blob = struct.pack("<I", 10) + b"abc"
    with pytest.raises(BadRequest, match="input 'text': BYTES element 0 runs past the data"):
        array_from_bytes("text", "BYTES", (1,), 1, blob)


def test_bad_gzip_and_bombs() -> None:
    with pytest.raises(BadRequest, match="not valid gzip data"):
        decompress(b"not gzip at all", "gzip", LIMIT)
    with pytest.raises(PayloadTooLarge, match="exceeds 1000 bytes"):
        decompress(gzip.compress(b"0" * 5000), "gzip", 1000)
    assert decompress(gzip.compress(b"abc"), "gzip", 1000) == b"abc"


@pytest.fixture(scope="module")
def digits_mlp(example_repo: Path) -> Iterator[ModelVersion]:
    """The example model as the data plane sees it: real config, real ONNX Runtime session."""
    source = LocalOnnxSource(example_repo, Settings())
    ((version, (config, backend)),) = source._load_sync("digits_mlp").items()
    yield ModelVersion("digits_mlp", version, config, backend)


def _model_error(model: ModelVersion, body: bytes, header_length: int | None = None) -> str:
    """Decoding checks what each input declares; validation checks the whole request."""
    with pytest.raises(BadRequest) as info:
        request, _ = decode_request(body, header_length, model, "", LIMIT)
        validate(model, request, LIMIT)
    return info.value.message


NAN_FLOATS = np.full(64, 0.5, np.float32)
NAN_FLOATS[7] = np.nan

# name -> (body, Inference-Header-Content-Length, message the 400 must contain)
MODEL_ERRORS: dict[str, tuple[bytes, int | None, str]] = {
    "wrong input name": (
        json_body(name="pixels"),
        None,
        "unexpected inference input 'pixels' for model 'digits_mlp' (expected inputs: input)",
    ),
    "wrong shape": (
        json_body(shape=[1, 63], data=[0] * 63),
        None,
        "unexpected shape for input 'input' for model 'digits_mlp'. Expected [-1,64], got [1,63]",
    ),
    "wrong datatype": (
        json_body(datatype="INT32", data=[1] * 64),
        None,
        "inference input 'input' data-type is 'INT32', but model 'digits_mlp' expects 'FP32'",
    ),
    "batch over max_batch_size": (
        json_body(shape=[1000, 64], data=[0.0] * 64000),
        None,
        "batch-size must be <= 64 for 'digits_mlp' (input 'input' has batch size 1000)",
    ),
    "FP32 overflow in JSON becomes Inf": (
        json_body(data=[0.5] * 63 + [1e39]),
        None,
        "input 'input' contains NaN or Inf",
    ),
    "binary FP32 NaN": (
        *binary_body({"inputs": [binary_input([1, 64])]}, NAN_FLOATS.tobytes()),
        "input 'input' contains NaN or Inf",
    ),
    "unknown output": (
        json.dumps({**GOOD, "outputs": [{"name": "logits"}]}).encode(),
        None,
        "unexpected inference output 'logits' for model 'digits_mlp' (outputs: probabilities)",
    ),
}


@pytest.mark.parametrize("case", list(MODEL_ERRORS), ids=list(MODEL_ERRORS))
def test_requests_that_do_not_fit_the_model_are_precise_400s(
    digits_mlp: ModelVersion, case: str
) -> None:
    body, header_length, message = MODEL_ERRORS[case]
    assert message in _model_error(digits_mlp, body, header_length)


def test_binary_inf_is_named_exactly(digits_mlp: ModelVersion) -> None:
    values = np.zeros(64, dtype=np.float32)
    values[3] = np.inf
    body, length = binary_body({"inputs": [binary_input([1, 64])]}, values.tobytes())
    assert _model_error(digits_mlp, body, length) == "input 'input' contains NaN or Inf"


def test_a_good_request_passes_and_round_trips(digits_mlp: ModelVersion) -> None:
    request, encoding = decode_request(json.dumps(GOOD).encode(), None, digits_mlp, "", LIMIT)
    admitted = validate(digits_mlp, request, LIMIT)
    assert admitted.rows == 1 and admitted.output_names == digits_mlp.output_names
    outputs = {"probabilities": np.arange(10, dtype=np.float32).reshape(1, 10)}
    encoding.binary["probabilities"] = True
    body, header_length = encode_response(InferResponse("digits_mlp", "1", outputs), encoding)
    assert header_length is not None
    header = json.loads(body[:header_length])
    assert header["outputs"][0]["parameters"] == {"binary_data_size": 40}
    assert np.frombuffer(body[header_length:], np.float32).tolist() == list(range(10))


def test_an_output_dtype_without_a_v2_datatype_is_a_500() -> None:
    outputs = {"complex": np.zeros(2, np.complex64)}
    with pytest.raises(InferenceError) as info:
        encode_response(InferResponse("m", "1", outputs), OutputEncoding())
    assert info.value.http_status == 500 and "output 'complex'" in info.value.message


# Hostile requests found by fuzzing: each a precise 400, decided before data is decoded.
HOSTILE: dict[str, tuple[bytes, int | None, str]] = {
    "datatype is an object": (json_body(datatype={}), None, "unknown datatype {}"),
    "datatype is a list": (json_body(datatype=[]), None, "unknown datatype []"),
    "33 dimensions": (
        json_body(shape=[1] * 33, data=[0.5]),
        None,
        "unexpected shape for input 'input' for model 'digits_mlp'. Expected [-1,64]",
    ),
    "65 dimensions": (json_body(shape=[1] * 65, data=[0.5]), None, "at most 64"),
    "FP32 data as strings": (json_body(data=["1e3"] * 64), None, "JSON strings given"),
    "huge BYTES input for an FP32 input, checked before its data": (
        *binary_body({"inputs": [binary_input([15_000_000], "BYTES", 60_000_000)]}, b""),
        "inference input 'input' data-type is 'BYTES', but model 'digits_mlp' expects 'FP32'",
    ),
}


@pytest.mark.parametrize("case", list(HOSTILE), ids=list(HOSTILE))
def test_hostile_requests_are_precise_400s(digits_mlp: ModelVersion, case: str) -> None:
    body, header_length, message = HOSTILE[case]
    assert message in _model_error(digits_mlp, body, header_length)


def test_json_integers_must_be_integers_in_range() -> None:
    with pytest.raises(BadRequest, match="JSON non-integers given"):
        array_from_values("ids", "INT64", (2,), 2, [1.5, 2])
    with pytest.raises(BadRequest, match=r"values outside \[-128, 127\]"):
        array_from_values("ids", "INT8", (2,), 2, [1, 300])
    with pytest.raises(BadRequest, match="JSON strings given"):
        array_from_values("flag", "BOOL", (1,), 1, ["true"])
    assert array_from_values("ids", "INT64", (1, 2), 2, [[3, 4]]).tolist() == [[3, 4]]


def test_truncated_gzip_is_rejected() -> None:
    whole = gzip.compress(json.dumps(GOOD).encode())
    with pytest.raises(BadRequest, match="truncated gzip data"):
        decompress(whole[:-8], "gzip", LIMIT)  # the stream without its trailer


@pytest.fixture(scope="module")
def minilm(example_repo: Path) -> ModelVersion:
    source = LocalOnnxSource(example_repo, Settings())
    config, backend = source._load_sync("minilm_embed")["1"]
    return ModelVersion("minilm_embed", "1", config, backend)


def _tokens(ids: int, mask: int, types: int) -> bytes:
    def tensor(name: str, length: int) -> dict[str, object]:
        return {"name": name, "shape": [1, length], "datatype": "INT64", "data": [1] * length}

    inputs = [tensor("input_ids", ids), tensor("attention_mask", mask)]
    inputs.append(tensor("token_type_ids", types))
    return json.dumps({"inputs": inputs}).encode()


def test_token_inputs_are_checked_against_the_graph(minilm: ModelVersion) -> None:
    assert minilm.max_sequence_length == 512  # the rows of its position-embedding table
    assert "has an empty sequence" in _model_error(minilm, _tokens(0, 0, 0))
    assert "'attention_mask' [1,7], 'input_ids' [1,8]" in _model_error(minilm, _tokens(8, 7, 8))
    too_long = _model_error(minilm, _tokens(513, 513, 513))
    assert "sequence of 513 tokens; model 'minilm_embed' takes at most 512" in too_long
    request, _ = decode_request(_tokens(512, 512, 512), None, minilm, "", LIMIT)
    assert validate(minilm, request, LIMIT).rows == 1


def test_a_million_tokens_are_refused_before_they_become_an_array(minilm: ModelVersion) -> None:
    body = _tokens(1_000_000, 1, 1)
    assert "takes at most 512" in _model_error(minilm, body)
