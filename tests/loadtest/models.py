"""Tiny real ONNX models in a Triton repository, so load tests need no converter run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from google.protobuf import text_format
from onnx import TensorProto, helper, numpy_helper
from tritonclient.grpc import model_config_pb2 as mc

MLP = "tiny_mlp"
EMBED = "tiny_embed"
VOCAB = 30522
EMBED_DIM = 8


def _write(repo: Path, name: str, model: onnx.ModelProto, config: mc.ModelConfig) -> None:
    (repo / name / "1").mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(repo / name / "1" / "model.onnx"))
    (repo / name / "config.pbtxt").write_text(text_format.MessageToString(config))


def _mlp() -> onnx.ModelProto:
    """MatMul + Softmax: ``input`` FP32 [-1, 64] -> ``probabilities`` FP32 [-1, 10]."""
    weights = np.random.default_rng(0).standard_normal((64, 10)).astype(np.float32) * 0.1
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["input", "W"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
        ],
        "tiny_mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 64])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 10])],
        [numpy_helper.from_array(weights, "W")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _embed() -> onnx.ModelProto:
    """Masked mean of token embeddings: ``input_ids``/``attention_mask`` INT64 -> FP32 [-1, 8]."""
    table = np.random.default_rng(1).standard_normal((VOCAB, EMBED_DIM)).astype(np.float32)
    nodes = [
        helper.make_node("Gather", ["table", "input_ids"], ["tokens"]),
        helper.make_node("Cast", ["attention_mask"], ["mask"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["mask", "axis2"], ["mask3"]),
        helper.make_node("Mul", ["tokens", "mask3"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "axis1"], ["summed"], keepdims=0),
        helper.make_node("ReduceSum", ["mask3", "axis1"], ["count"], keepdims=0),
        helper.make_node("Max", ["count", "one"], ["safe_count"]),
        helper.make_node("Div", ["summed", "safe_count"], ["embedding"]),
    ]
    initializers = [
        numpy_helper.from_array(table, "table"),
        numpy_helper.from_array(np.array([2], dtype=np.int64), "axis2"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
        numpy_helper.from_array(np.array(1.0, dtype=np.float32), "one"),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_embed",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, [None, None]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, [None, None]),
        ],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, [None, EMBED_DIM])],
        initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _config(
    name: str, inputs: list[tuple[str, int, list[int]]], outputs: list[tuple[str, int, list[int]]]
) -> mc.ModelConfig:
    config = mc.ModelConfig(name=name, platform="onnxruntime_onnx", max_batch_size=64)
    for input_name, dtype, dims in inputs:
        config.input.add(name=input_name, data_type=dtype, dims=dims)
    for output_name, dtype, dims in outputs:
        config.output.add(name=output_name, data_type=dtype, dims=dims)
    config.dynamic_batching.SetInParent()
    return config


def build_tiny_repo(repo: Path) -> Path:
    """Write ``tiny_mlp`` and ``tiny_embed`` (token ids, padded inputs) into ``repo``."""
    _write(
        repo,
        MLP,
        _mlp(),
        _config(MLP, [("input", mc.TYPE_FP32, [64])], [("probabilities", mc.TYPE_FP32, [10])]),
    )
    embed_config = _config(
        EMBED,
        [("input_ids", mc.TYPE_INT64, [-1]), ("attention_mask", mc.TYPE_INT64, [-1])],
        [("embedding", mc.TYPE_FP32, [EMBED_DIM])],
    )
    embed_config.parameters["infergate.pad_inputs"].string_value = "input_ids,attention_mask"
    _write(repo, EMBED, _embed(), embed_config)
    return repo
