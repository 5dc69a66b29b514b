"""Two executors (``--executors``): a CPU model and a "GPU" model (an instance group on GPU 0,
run on the CPU here since no GPU is visible) routed apart, each owned by its executor; two
front-end planes over both, in one event loop, over the real sockets and ONNX Runtime."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from tritonclient.grpc import model_config_pb2

from service.errors import Unavailable
from service.messages import InferRequest
from service.processes.executor import Executor
from service.processes.routing import Routes
from service.processes.worker import FrontEndPlane
from service.settings import Settings
from tests.helpers import edit_config, wait_until_async

CPU_MODEL, GPU_MODEL = "digits_mlp", "digits_gpu"


def _on_gpu(config: model_config_pb2.ModelConfig) -> None:
    del config.instance_group[:]
    config.instance_group.add(kind=model_config_pb2.ModelInstanceGroup.KIND_GPU, gpus=[0])
    config.name = GPU_MODEL


@dataclass
class Pair:
    executors: list[Executor]
    planes: list[FrontEndPlane]
    settings: Settings
    routes: Routes
    runtime: Path


@pytest.fixture
async def pair(example_repo: Path, tmp_path: Path) -> AsyncIterator[Pair]:
    repo = tmp_path / "repo"
    shutil.copytree(example_repo / CPU_MODEL, repo / CPU_MODEL)
    shutil.copytree(example_repo / CPU_MODEL, repo / GPU_MODEL)
    edit_config(repo / GPU_MODEL / "config.pbtxt", _on_gpu)
    settings = Settings(model_repo=repo, grpc_port=0, cache_enabled=False)
    routes = Routes(settings, visible_gpus=[])
    executors = [Executor(settings, tmp_path, index, routes) for index in range(routes.count)]
    for executor in executors:
        await executor.start()
    paths = [executor.socket_path for executor in executors]
    planes = [FrontEndPlane(settings, paths, routes) for _ in range(2)]
    for plane in planes:
        await plane.start()
    await wait_until_async(lambda: all(p.ready() for p in planes), what="both planes ready")
    yield Pair(executors, planes, settings, routes, tmp_path)
    for plane in planes:
        await plane.close()
    for executor in executors:
        await executor.stop()


def _request(model: str, value: float) -> InferRequest:
    x = np.full((1, 64), value, dtype=np.float32)
    return InferRequest(model, "", {"input": x}, {"input": "FP32"})


async def test_each_executor_owns_the_models_of_its_place(pair: Pair) -> None:
    assert pair.routes.count == 2, "auto: one executor for the CPU models, one for GPU 0's"
    assert pair.routes.place(GPU_MODEL) == "gpu:0" and pair.routes.place(CPU_MODEL) == "cpu"
    owned = [set(executor.repository.models) for executor in pair.executors]
    assert owned == [{CPU_MODEL}, {GPU_MODEL}]
    a, b = pair.planes
    for plane in (a, b):
        for model in (CPU_MODEL, GPU_MODEL):
            response = await plane.infer(_request(model, 0.5))
            assert response.outputs["probabilities"].shape == (1, 10)
    stats = (await a.model_statistics())["model_stats"]
    assert [(s["name"], s["inference_stats"]["success"]["count"]) for s in stats] == [  # type: ignore[index]
        (GPU_MODEL, 2),
        (CPU_MODEL, 2),
    ]
    metrics = (await b.metrics()).decode()
    for model in (CPU_MODEL, GPU_MODEL):
        assert f'nv_inference_request_success{{model="{model}",version="1"}} 2' in metrics
    rows = {(row.name, row.state.value) for row in await a.repository_index()}
    assert rows == {(CPU_MODEL, "READY"), (GPU_MODEL, "READY")}


async def test_a_lost_executor_leaves_the_other_executors_models_serving(pair: Pair) -> None:
    a, b = pair.planes
    await pair.executors[1].stop()  # executor-2 goes: its socket and connections close
    await wait_until_async(lambda: not (a.ready() or b.ready()), what="both workers to notice")
    for plane in (a, b):
        assert (await plane.infer(_request(CPU_MODEL, 0.25))).outputs["probabilities"].shape == (
            1,
            10,
        )
        with pytest.raises(Unavailable, match="restarting"):
            await plane.infer(_request(GPU_MODEL, 0.25))
    rows = {row.name: (row.state.value, row.reason) for row in await a.repository_index()}
    assert rows[GPU_MODEL] == ("UNAVAILABLE", "the executor process is restarting")
    assert rows[CPU_MODEL][0] == "READY"
    assert f'model="{CPU_MODEL}"' in (await b.metrics()).decode(), "the live executor answers"
    successor = Executor(pair.settings, pair.runtime, 1, pair.routes)
    await successor.start()
    pair.executors[1] = successor
    await wait_until_async(lambda: a.ready() and b.ready(), what="both planes ready again")
    assert (await b.infer(_request(GPU_MODEL, 0.75))).outputs["probabilities"].shape == (1, 10)
