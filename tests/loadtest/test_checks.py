"""Answer checks and wire decoding: what makes a response a Locust failure."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest

from loadtest._check import OutputTensor, check_structure, reference_for
from loadtest._model import ModelSpec
from loadtest._transport import ResponseError, json_request, parse_json_response
from tests.loadtest.models import MLP

METADATA = {
    "name": MLP,
    "versions": ["1"],
    "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}],
    "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}],
}
SPEC = ModelSpec.from_v2(METADATA, {"max_batch_size": 64})


def out(array: np.ndarray, datatype: str = "FP32", name: str = "probabilities") -> OutputTensor:
    return {name: OutputTensor(name, datatype, tuple(array.shape), array)}  # type: ignore[return-value]


def test_structure_accepts_declared_outputs_and_rejects_others() -> None:
    inputs = {"input": np.zeros((3, 64), np.float32)}
    assert check_structure(SPEC, inputs, out(np.zeros((3, 10), np.float32))) is None
    assert "shape [2, 10], expected [3, 10]" in check_structure(
        SPEC, inputs, out(np.zeros((2, 10), np.float32))
    )
    assert "datatype FP64" in check_structure(
        SPEC, inputs, out(np.zeros((3, 10), np.float64), "FP64")
    )
    assert "output names" in check_structure(
        SPEC, inputs, out(np.zeros((3, 10), np.float32), name="logits")
    )


def test_reference_accepts_the_model_and_rejects_other_values(tiny_repo: Path) -> None:
    import onnxruntime as ort

    x = np.random.default_rng(0).random((4, 64), dtype=np.float32)
    session = ort.InferenceSession(str(tiny_repo / MLP / "1" / "model.onnx"))
    (right,) = session.run(None, {"input": x})
    reference = reference_for(str(tiny_repo), SPEC, 1e-3)
    assert reference is not None
    assert reference.compare({"input": x}, out(right)) is None
    wrong = right.copy()
    wrong[1, 2] += 0.05
    assert "differs from local ONNX Runtime" in reference.compare({"input": x}, out(wrong))
    assert reference_for(str(tiny_repo / "missing"), SPEC, 1e-3) is None


def test_json_round_trip_and_malformed_responses() -> None:
    x = np.random.default_rng(0).random((2, 64), dtype=np.float32)
    body = orjson.loads(json_request(SPEC, {"input": x}))
    sent = np.asarray(body["inputs"][0]["data"], dtype=np.float32).reshape(2, 64)
    assert np.array_equal(sent, x)  # float32 survives the JSON text exactly
    assert body["outputs"] == [{"name": "probabilities"}]
    response = {"outputs": [{"name": "p", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}]}
    decoded = parse_json_response(orjson.dumps(response))["p"]
    assert decoded.array.dtype == np.float32 and decoded.array.shape == (1, 2)
    response["outputs"][0]["shape"] = [1, 3]
    with pytest.raises(ResponseError, match="2 values for shape"):
        parse_json_response(orjson.dumps(response))
    with pytest.raises(ResponseError):
        parse_json_response(b'{"error": "model not ready"}')
