"""Hand-built ONNX graphs for converter tests (no framework needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def linear(path: Path, batch: int | str = "N", features: int = 5, outputs: int = 3) -> Path:
    """y = softmax(x @ W + b); ``batch`` fixes or names the first axis."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(size=(features, outputs)).astype(np.float32), "W"),
        numpy_helper.from_array(rng.normal(size=outputs).astype(np.float32), "b"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["xw"]),
        helper.make_node("Add", ["xw", "b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["y"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, outputs])],
        inits,
    )
    return _save(graph, path)


def fixed_reshape(path: Path) -> Path:
    """Reshapes to a constant [1, 6]: the batch axis cannot become dynamic."""
    shape = numpy_helper.from_array(np.array([1, 6], dtype=np.int64), "shape")
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"])],
        "fixed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6])],
        [shape],
    )
    return _save(graph, path)


def token_sum(path: Path) -> Path:
    """input_ids, attention_mask [N, S] int64 -> total [N, 1] = sum(ids * mask) (pad-neutral)."""
    nodes = [
        helper.make_node("Mul", ["input_ids", "attention_mask"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "axes"], ["total_i"], keepdims=1),
        helper.make_node("Cast", ["total_i"], ["total"], to=TensorProto.FLOAT),
    ]
    axes = numpy_helper.from_array(np.array([1], dtype=np.int64), "axes")
    graph = helper.make_graph(
        nodes,
        "token_sum",
        [
            helper.make_tensor_value_info(n, TensorProto.INT64, ["N", "S"])
            for n in ("input_ids", "attention_mask")
        ],
        [helper.make_tensor_value_info("total", TensorProto.FLOAT, ["N", 1])],
        [axes],
    )
    return _save(graph, path)


def unknown_op(path: Path) -> Path:
    graph = helper.make_graph(
        [helper.make_node("FrobnicateTensor", ["x"], ["y"])],
        "weird",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))  # deliberately unchecked
    return path


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path
