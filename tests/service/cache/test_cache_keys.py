"""Cache keys depend on tensor values and output-affecting inputs, never on array layout."""

from __future__ import annotations

import numpy as np
import pytest

from service.cache.keys import FORMAT_VERSION, canonical_tensor_bytes, request_key
from service.messages import InferRequest


def _request(
    inputs: dict[str, np.ndarray], datatypes: dict[str, str], **kw: object
) -> InferRequest:
    return InferRequest(model_name="m", model_version="", inputs=inputs, datatypes=datatypes, **kw)  # type: ignore[arg-type]


def _key(request: InferRequest, version: str = "1", outputs: list[str] | None = None) -> str:
    return request_key("ns", "m", version, request, outputs or ["y"])


BASE = np.arange(24, dtype=np.float32).reshape(4, 6)


def test_key_format_has_namespace_version_and_model() -> None:
    key = _key(_request({"x": BASE}, {"x": "FP32"}))
    namespace, fmt, model, digest = key.split(":")
    assert (namespace, fmt, model) == ("ns", FORMAT_VERSION, "m")
    assert len(digest) == 32 and int(digest, 16) >= 0  # xxh3-128 hex


@pytest.mark.parametrize(
    "variant",
    [
        np.asfortranarray(BASE),  # column-major copy
        np.ascontiguousarray(BASE.T).T,  # transposed view of a transposed copy
        BASE.astype(">f4"),  # big-endian
        np.frombuffer(BASE.tobytes(), dtype="<f4").reshape(4, 6),  # read-only buffer (binary)
        np.array(BASE.tolist(), dtype=np.float32),  # rebuilt from JSON-like lists
        np.lib.stride_tricks.as_strided(
            np.repeat(BASE, 2, axis=1), shape=(4, 6), strides=(48, 8)
        ),  # strided view
    ],
)
def test_same_values_different_layout_same_key(variant: np.ndarray) -> None:
    assert not np.shares_memory(variant, BASE)
    np.testing.assert_array_equal(variant, BASE)
    assert _key(_request({"x": variant}, {"x": "FP32"})) == _key(
        _request({"x": BASE}, {"x": "FP32"})
    )


def test_json_float64_decoded_array_hashes_as_declared_fp32() -> None:
    # A JSON front end may hold float64 before casting; the model sees FP32 either way.
    wide = BASE.astype(np.float64)
    assert _key(_request({"x": wide}, {"x": "FP32"})) == _key(_request({"x": BASE}, {"x": "FP32"}))


def test_input_order_does_not_matter() -> None:
    a, b = np.array([1, 2], dtype=np.int64), np.array([3], dtype=np.int64)
    first = _request({"a": a, "b": b}, {"a": "INT64", "b": "INT64"})
    second = _request({"b": b, "a": a}, {"b": "INT64", "a": "INT64"})
    assert _key(first) == _key(second)


def test_output_order_does_not_matter_but_set_does() -> None:
    request = _request({"x": BASE}, {"x": "FP32"})
    assert _key(request, outputs=["y", "z"]) == _key(request, outputs=["z", "y"])
    assert _key(request, outputs=["y"]) != _key(request, outputs=["y", "z"])
    assert _key(request, outputs=["y"]) != _key(request, outputs=["z"])


def test_version_changes_key() -> None:
    request = _request({"x": BASE}, {"x": "FP32"})
    assert _key(request, version="1") != _key(request, version="2")


def test_model_and_namespace_change_key() -> None:
    request = _request({"x": BASE}, {"x": "FP32"})
    assert request_key("ns", "m", "1", request, ["y"]) != request_key(
        "ns", "n", "1", request, ["y"]
    )
    assert request_key("a", "m", "1", request, ["y"]) != request_key("b", "m", "1", request, ["y"])


def test_values_shape_name_and_datatype_change_key() -> None:
    reference = _key(_request({"x": BASE}, {"x": "FP32"}))
    changed = BASE.copy()
    changed[3, 5] = np.nextafter(changed[3, 5], np.float32(100))
    assert _key(_request({"x": changed}, {"x": "FP32"})) != reference
    assert _key(_request({"x": BASE.reshape(6, 4)}, {"x": "FP32"})) != reference
    assert _key(_request({"x2": BASE}, {"x2": "FP32"})) != reference
    as_int = BASE.view(np.int32)  # same bytes, different declared datatype
    assert _key(_request({"x": as_int}, {"x": "INT32"})) != reference


def test_output_affecting_parameters_change_key_transport_ones_do_not() -> None:
    inputs, types = {"x": BASE}, {"x": "FP32"}
    plain = _key(_request(inputs, types))
    transport = {"binary_data_output": True, "cache": True, "priority": 2, "timeout": 100}
    assert _key(_request(inputs, types, parameters=transport)) == plain
    assert _key(_request(inputs, types, parameters={"classification": 3})) != plain
    assert _key(_request(inputs, types, parameters={"top_k": 3})) != _key(
        _request(inputs, types, parameters={"top_k": 4})
    )
    ordered = _key(_request(inputs, types, parameters={"a": 1, "b": 2}))
    assert ordered == _key(_request(inputs, types, parameters={"b": 2, "a": 1}))


def test_bytes_inputs_str_and_bytes_agree_and_boundaries_matter() -> None:
    as_bytes = np.array([b"ab", b"c"], dtype=np.object_)
    as_str = np.array(["ab", "c"], dtype=np.object_)
    shifted = np.array([b"a", b"bc"], dtype=np.object_)
    key = _key(_request({"t": as_bytes}, {"t": "BYTES"}))
    assert _key(_request({"t": as_str}, {"t": "BYTES"})) == key
    assert _key(_request({"t": shifted}, {"t": "BYTES"})) != key  # length prefixes keep borders


def test_bool_and_fp16_canonical_bytes() -> None:
    assert canonical_tensor_bytes(np.array([True, False]), "BOOL") == b"\x01\x00"
    half = np.array([1.0], dtype=">f2")
    assert canonical_tensor_bytes(half, "FP16") == np.array([1.0], dtype="<f2").tobytes()


def test_undeclared_datatype_is_inferred_from_dtype() -> None:
    declared = _key(_request({"x": BASE}, {"x": "FP32"}))
    assert _key(_request({"x": BASE}, {})) == declared
