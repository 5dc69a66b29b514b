"""Small models for tests against a real Triton: an ONNX repository and its python-backend twin.

The bundled Triton has no ONNX Runtime backend, so Triton serves the python-backend copy that
``infergate convert python-backend`` writes (``model.py`` runs ONNX Runtime on the same
``model.onnx``); answers through Triton can then be compared with ONNX Runtime on that file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.triton_server import TritonRepos

MODEL = "tiny_mlp"
FEATURES = 16
CLASSES = 4

_CONFIG = """name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: 32
input [ {{ name: "x" data_type: TYPE_FP32 dims: [ {features} ] }} ]
output [ {{ name: "probs" data_type: TYPE_FP32 dims: [ {classes} ] }} ]
dynamic_batching {{ max_queue_delay_microseconds: 500 }}
instance_group [ {{ kind: KIND_CPU count: 1 }} ]
"""


def write_tiny_onnx(path: Path, seed: int = 0) -> None:
    """x[N,16] -> Gemm -> Relu -> Gemm -> Softmax -> probs[N,4], with seeded random weights."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    weights = [
        numpy_helper.from_array(rng.normal(size=(FEATURES, 32)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.normal(size=32).astype(np.float32), "b1"),
        numpy_helper.from_array(rng.normal(size=(32, CLASSES)).astype(np.float32), "w2"),
        numpy_helper.from_array(rng.normal(size=CLASSES).astype(np.float32), "b2"),
    ]
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Gemm", ["r", "w2", "b2"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        MODEL,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", FEATURES])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", CLASSES])],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def write_onnx_repo(root: Path) -> Path:
    """A Triton ONNX repository with :data:`MODEL` (what the embedded gateway backend serves)."""
    write_tiny_onnx(root / MODEL / "1" / "model.onnx")
    config = _CONFIG.format(name=MODEL, features=FEATURES, classes=CLASSES)
    (root / MODEL / "config.pbtxt").write_text(config)
    return root


def build_triton_repos(workdir: Path) -> TritonRepos:
    """An ONNX repository and its python-backend twin under ``workdir``."""
    from converters.python_backend import write_python_backend

    onnx_repo = write_onnx_repo(workdir / "onnx")
    write_python_backend(onnx_repo, workdir / "python")
    return TritonRepos(onnx_repo, workdir / "python")


def onnx_reference(onnx_repo: Path, model: str, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Answers of ONNX Runtime run directly on the model file, for comparison."""
    import onnxruntime as ort

    session = ort.InferenceSession(
        str(onnx_repo / model / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    return list(session.run(None, inputs))
