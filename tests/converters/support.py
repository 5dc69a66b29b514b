"""Shared checks for converter tests: tree hashes and config-vs-graph comparisons."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from tritonclient.grpc import model_config_pb2 as mc

from converters.triton_config import read_config

ORT_TO_CONFIG = {
    "tensor(float)": mc.TYPE_FP32,
    "tensor(float16)": mc.TYPE_FP16,
    "tensor(int64)": mc.TYPE_INT64,
    "tensor(int32)": mc.TYPE_INT32,
}


def tree_hash(root: Path) -> str:
    """Hash of every path and file content under ``root`` (hidden ones included)."""
    digest = hashlib.sha256()
    if not root.exists():
        return "absent"
    for path in sorted(root.rglob("*")):
        digest.update(str(path.relative_to(root)).encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def check_model_dir(model_dir: Path, version: int) -> tuple[mc.ModelConfig, ort.InferenceSession]:
    """Parse config.pbtxt with model_config_pb2 and check it against the ONNX graph it serves."""
    config = read_config(model_dir / "config.pbtxt")
    assert config.name == model_dir.name
    assert config.platform == "onnxruntime_onnx"
    path = model_dir / str(version) / "model.onnx"
    onnx.checker.check_model(str(path))
    assert not list((model_dir / str(version)).glob("*.data")), "weights must be inside model.onnx"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    batched = config.max_batch_size > 0
    for tensors, graph in (
        (config.input, session.get_inputs()),
        (config.output, session.get_outputs()),
    ):
        assert [t.name for t in tensors] == [g.name for g in graph]
        for tensor, value in zip(tensors, graph, strict=True):
            assert tensor.data_type == ORT_TO_CONFIG[value.type], (tensor.name, value.type)
            shape = [d if isinstance(d, int) else -1 for d in value.shape]
            if batched:
                assert shape[0] == -1, (
                    f"{value.name}: batch axis must be dynamic, got {value.shape}"
                )
                shape = shape[1:]
            dims = list(tensor.reshape.shape) if tensor.HasField("reshape") else list(tensor.dims)
            assert dims == shape, (tensor.name, list(tensor.dims), shape)
    if batched:
        assert config.dynamic_batching.max_queue_delay_microseconds > 0
        assert all(s <= config.max_batch_size for s in config.dynamic_batching.preferred_batch_size)
    assert config.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU
    return config, session


def run_session(
    session: ort.InferenceSession, feed: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feed), strict=True))
