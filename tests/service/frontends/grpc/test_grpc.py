"""gRPC codec: wire messages <-> InferRequest/InferResponse, with precise decode errors."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc._utils import _get_inference_request

from service.datatypes import serialize_bytes
from service.errors import BadRequest
from service.frontends.grpc.codec import (
    Unimplemented,
    decode_contents,
    decode_raw,
    decode_request,
    dict_to_parameters,
    encode_response,
    parameters_to_dict,
)
from service.frontends.grpc.server import bind_address, server_options
from service.messages import InferResponse
from service.settings import Settings

LIMIT = 1 << 20


def client_request(
    inputs: list[grpcclient.InferInput],
    outputs: list[grpcclient.InferRequestedOutput] | None = None,
    **kwargs: object,
) -> pb.ModelInferRequest:
    """Build the exact message tritonclient.grpc sends for ``infer``."""
    options: dict[str, object] = {
        "model_name": "m",
        "inputs": inputs,
        "model_version": "",
        "request_id": "",
        "outputs": outputs,
        "sequence_id": 0,
        "sequence_start": False,
        "sequence_end": False,
        "priority": 0,
        "timeout": None,
        "parameters": None,
    }
    options.update(kwargs)
    return _get_inference_request(**options)


def test_client_request_decodes_to_views_of_declared_shape() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 4)).astype(np.float32)
    ids = rng.integers(0, 1000, size=(2, 5), dtype=np.int64)
    a = grpcclient.InferInput("x", list(x.shape), "FP32")
    a.set_data_from_numpy(x)
    b = grpcclient.InferInput("ids", list(ids.shape), "INT64")
    b.set_data_from_numpy(ids)
    request = client_request(
        [a, b],
        [grpcclient.InferRequestedOutput("y")],
        request_id="req-7",
        priority=2,
        timeout=1500,
        parameters={"cache": False, "note": "hi", "scale": 0.5},
    )

    decoded = decode_request(request, LIMIT)

    np.testing.assert_array_equal(decoded.inputs["x"], x)
    np.testing.assert_array_equal(decoded.inputs["ids"], ids)
    assert decoded.inputs["x"].dtype == np.float32 and decoded.inputs["ids"].dtype == np.int64
    assert not decoded.inputs["x"].flags.owndata  # a frombuffer view, not a copy via lists
    assert decoded.datatypes == {"x": "FP32", "ids": "INT64"}
    assert decoded.outputs == ["y"]
    assert decoded.id == "req-7"
    assert decoded.priority == 2 and decoded.timeout_us == 1500
    assert decoded.use_cache is False
    assert decoded.parameters["note"] == "hi" and decoded.parameters["scale"] == 0.5


def test_defaults_without_parameters() -> None:
    a = grpcclient.InferInput("x", [1], "FP32")
    a.set_data_from_numpy(np.ones(1, np.float32))
    decoded = decode_request(client_request([a]), LIMIT)
    assert decoded.outputs is None
    assert decoded.priority == 0 and decoded.timeout_us == 0 and decoded.use_cache is True


def test_bytes_raw_round_trip_through_client_encoding() -> None:
    text = np.array([[b"hello", b""], ["w\u00f6rld".encode(), b"\x00\xff"]], dtype=np.object_)
    a = grpcclient.InferInput("text", [2, 2], "BYTES")
    a.set_data_from_numpy(text)
    decoded = decode_request(client_request([a]), LIMIT)
    assert decoded.inputs["text"].shape == (2, 2)
    assert decoded.inputs["text"].dtype == np.object_
    assert decoded.inputs["text"].tolist() == text.tolist()


@pytest.mark.parametrize(
    ("datatype", "field", "values", "dtype"),
    [
        ("FP32", "fp32_contents", [1.5, -2.0, 3.25, 0.0], np.float32),
        ("FP64", "fp64_contents", [1e300, -2.0, 3.25, 0.0], np.float64),
        ("INT8", "int_contents", [-128, 127, 0, 5], np.int8),
        ("INT32", "int_contents", [-(2**31), 2**31 - 1, 0, 5], np.int32),
        ("INT64", "int64_contents", [-(2**63), 2**63 - 1, 0, 5], np.int64),
        ("UINT8", "uint_contents", [0, 255, 1, 2], np.uint8),
        ("UINT64", "uint64_contents", [0, 2**64 - 1, 1, 2], np.uint64),
        ("BOOL", "bool_contents", [True, False, True, True], np.bool_),
    ],
)
def test_typed_contents(datatype: str, field: str, values: list[object], dtype: type) -> None:
    contents = pb.InferTensorContents(**{field: values})
    array = decode_contents("t", datatype, (2, 2), contents, LIMIT)
    assert array.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(array, np.array(values, dtype=dtype).reshape(2, 2))


def test_typed_bytes_contents() -> None:
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(
        name="s",
        datatype="BYTES",
        shape=[2],
        contents=pb.InferTensorContents(bytes_contents=[b"a", b"bc"]),
    )
    decoded = decode_request(request, LIMIT)
    assert decoded.inputs["s"].dtype == np.object_
    assert decoded.inputs["s"].tolist() == [b"a", b"bc"]


def _error(call: object, *args: object) -> str:
    with pytest.raises(BadRequest) as info:
        call(*args)  # type: ignore[operator]
    assert info.value.grpc_code == grpc.StatusCode.INVALID_ARGUMENT
    return info.value.message


def test_raw_size_mismatch_names_both_sizes() -> None:
    message = _error(decode_raw, "x", "FP32", (3, 4), b"\0" * 40, LIMIT)
    assert (
        message == "input 'x': 40 bytes of binary data do not match shape [3, 4] of FP32 (48 bytes)"
    )


def test_unknown_datatype() -> None:
    message = _error(decode_raw, "x", "BF16", (1,), b"\0\0", LIMIT)
    assert message.startswith("input 'x': unknown datatype 'BF16'")


def test_absurd_and_negative_shapes() -> None:
    huge = _error(decode_raw, "x", "FP32", (1 << 40, 1 << 40), b"", LIMIT)
    assert f"has {1 << 80} elements, more than the limit of {LIMIT}" in huge
    assert "negative dimension" in _error(decode_raw, "x", "FP32", (-1, 4), b"", LIMIT)


def test_truncated_bytes_tensor() -> None:
    raw = serialize_bytes(np.array([b"abc", b"de"], dtype=np.object_))
    assert "truncated" in _error(decode_raw, "s", "BYTES", (3,), raw, LIMIT)
    assert "runs past" in _error(decode_raw, "s", "BYTES", (2,), raw[:-1], LIMIT)


def test_typed_contents_errors() -> None:
    few = pb.InferTensorContents(fp32_contents=[1.0, 2.0, 3.0])
    assert _error(decode_contents, "x", "FP32", (2, 2), few, LIMIT) == (
        "input 'x': fp32_contents has 3 elements, expected 4 for shape [2, 2]"
    )
    wrong = pb.InferTensorContents(int64_contents=[1, 2])
    assert "fp32_contents has 0 elements" in _error(
        decode_contents, "x", "FP32", (2,), wrong, LIMIT
    )
    overflow = pb.InferTensorContents(int_contents=[1, 300])
    assert "outside the range of INT8" in _error(
        decode_contents, "x", "INT8", (2,), overflow, LIMIT
    )
    fp16 = pb.InferTensorContents(fp32_contents=[1.0])
    assert "send it in raw_input_contents" in _error(
        decode_contents, "x", "FP16", (1,), fp16, LIMIT
    )


def test_raw_count_mismatch_with_inputs() -> None:
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="a", datatype="FP32", shape=[1])
    request.inputs.add(name="b", datatype="FP32", shape=[1])
    request.raw_input_contents.append(b"\0" * 4)
    message = _error(decode_request, request, LIMIT)
    assert message.startswith("request has 2 inputs but 1 raw_input_contents")


def test_missing_data_and_duplicate_inputs() -> None:
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="a", datatype="FP32", shape=[1])
    assert "no data" in _error(decode_request, request, LIMIT)
    request.inputs.add(name="a", datatype="FP32", shape=[1])
    request.raw_input_contents.extend([b"\0" * 4, b"\0" * 4])
    assert _error(decode_request, request, LIMIT) == "input 'a' appears more than once"


def test_bad_priority_parameter() -> None:
    request = pb.ModelInferRequest(model_name="m")
    request.parameters["priority"].string_param = "high"
    assert "parameter 'priority' must be a non-negative integer" in _error(
        decode_request, request, LIMIT
    )


def test_shared_memory_is_unimplemented() -> None:
    a = grpcclient.InferInput("x", [4], "FP32")
    a.set_shared_memory("region", 16)
    with pytest.raises(Unimplemented) as info:
        decode_request(client_request([a]), LIMIT)
    assert info.value.grpc_code == grpc.StatusCode.UNIMPLEMENTED
    assert "shared memory" in info.value.message


def test_encode_response_is_readable_by_tritonclient() -> None:
    y = np.arange(6, dtype=np.float32).reshape(2, 3)
    labels = np.array([b"cat", b"dog"], dtype=np.object_)
    response = InferResponse(
        model_name="m",
        model_version="1",
        outputs={"y": y, "label": labels, "flag": np.array([True, False])},
        id="abc",
        parameters={"cached": True, "n": 3, "ratio": 0.25, "who": "x"},
    )
    message = encode_response(response)
    assert [o.name for o in message.outputs] == ["y", "label", "flag"]
    assert [o.datatype for o in message.outputs] == ["FP32", "BYTES", "BOOL"]
    assert len(message.raw_output_contents) == 3

    result = grpcclient.InferResult(message)
    np.testing.assert_array_equal(result.as_numpy("y"), y)
    assert result.as_numpy("label").tolist() == [b"cat", b"dog"]
    np.testing.assert_array_equal(result.as_numpy("flag"), [True, False])
    assert result.get_response().id == "abc"
    assert parameters_to_dict(message.parameters) == {
        "cached": True,
        "n": 3,
        "ratio": 0.25,
        "who": "x",
    }


def test_parameter_round_trip_keeps_bool_distinct_from_int() -> None:
    message = pb.ModelInferResponse()
    dict_to_parameters({"b": False, "i": 0, "u": 2**64 - 1}, message.parameters)
    assert message.parameters["b"].WhichOneof("parameter_choice") == "bool_param"
    assert message.parameters["i"].WhichOneof("parameter_choice") == "int64_param"
    assert message.parameters["u"].WhichOneof("parameter_choice") == "uint64_param"


def test_server_options_and_address() -> None:
    settings = Settings(grpc_max_message_bytes=1234)
    options = dict(server_options(settings))
    assert options["grpc.max_receive_message_length"] == 1234
    assert options["grpc.max_send_message_length"] == 1234
    assert bind_address("::1", 9) == "[::1]:9"
    assert bind_address("0.0.0.0", 9) == "0.0.0.0:9"
