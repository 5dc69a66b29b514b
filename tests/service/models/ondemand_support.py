"""What the on-demand tests share: models heavy enough that their measured footprint is well
above the noise of a test process, a source whose loads wait for the test, and a request."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from tritonclient.grpc import model_config_pb2

from service.messages import InferRequest
from service.models.sources import LoadedVersions, LocalOnnxSource
from service.settings import Settings

#: y = x @ w with w of 256 x 8192 float32: 8 MiB of weights, measured at 15-30 MiB of RSS
WIDTH, OUTPUTS = 256, 8192
WEIGHT_BYTES = WIDTH * OUTPUTS * 4


def weight_model(
    repo: Path, name: str, extra: str = "", seed: int = 0, group: str = "count: 1 kind: KIND_CPU"
) -> Path:
    """A one-MatMul model ``name`` (its weights drawn from ``seed``) with ``extra`` config text
    and one ``instance_group``."""
    rng = np.random.default_rng(seed)
    weights = numpy_helper.from_array(rng.standard_normal((WIDTH, OUTPUTS), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, OUTPUTS])],
        initializer=[weights],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    (repo / name / "1").mkdir(parents=True)
    onnx.save(model, str(repo / name / "1" / "model.onnx"))
    config = f'name: "{name}"\nmax_batch_size: 8\ninstance_group {{ {group} }}\n'
    (repo / name / "config.pbtxt").write_text(config + extra)
    return repo / name


def weights_request(name: str, value: float = 1.0, version: str = "") -> InferRequest:
    x = np.full((1, WIDTH), value, dtype=np.float32)
    return InferRequest(name, version, {"x": x}, {"x": "FP32"})


PINNED = 'parameters { key: "infergate.pinned" value { string_value: "true" } }\n'
CACHED = "response_cache { enable: true }\n"


class GatedSource(LocalOnnxSource):
    """The real source, whose loads wait until the test opens the gate; counts the loads."""

    def __init__(self, root: Path, settings: Settings) -> None:
        super().__init__(root, settings)
        self.gate = asyncio.Event()
        self.calls: list[str] = []

    async def load(
        self, name: str, override: model_config_pb2.ModelConfig | None = None
    ) -> LoadedVersions:
        self.calls.append(name)
        await self.gate.wait()
        return await super().load(name, override)
