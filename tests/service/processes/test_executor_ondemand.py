"""``--model-control-mode on_demand`` with ``--workers``: the executor owns loading and eviction,
two front-end planes see the states through snapshots; the real Unix-socket channel and real
ONNX Runtime sessions, in one event loop, with the loads behind a gate the test opens."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from service.models.ondemand import NEVER_LOADED
from service.processes.executor import Executor
from service.processes.worker import FrontEndPlane
from service.settings import Settings
from tests.helpers import wait_until_async
from tests.service.models.ondemand_support import (
    CACHED,
    GatedSource,
    weight_model,
    weights_request,
)


@dataclass
class Tree:
    executor: Executor
    planes: list[FrontEndPlane]
    source: GatedSource


@pytest.fixture
async def tree(tmp_path: Path) -> AsyncIterator[Tree]:
    repo = tmp_path / "repo"
    for name in ("a", "b"):
        weight_model(repo, name, CACHED)
    settings = Settings(
        model_repo=repo, grpc_port=0, model_control_mode="on_demand", cache_enabled=True
    )
    executor = Executor(settings, tmp_path)
    source = executor.repository.source = GatedSource(repo, settings)
    await executor.start()
    planes = [FrontEndPlane(settings, executor.socket_path) for _ in range(2)]
    for plane in planes:
        await plane.start()
    await wait_until_async(lambda: all(p.ready() for p in planes), what="both planes ready")
    yield Tree(executor, planes, source)
    source.gate.set()
    for plane in planes:
        await plane.close()
    await executor.stop()


async def test_ten_first_requests_over_two_workers_load_once(tree: Tree) -> None:
    a, b = tree.planes
    assert a.mirror.models["a"].reason == b.mirror.models["b"].reason == NEVER_LOADED
    assert not a.model_ready("a")
    residency = tree.executor.repository.residency
    requests = [
        asyncio.ensure_future(plane.infer(weights_request("a", 0.5)))
        for _ in range(5)
        for plane in (a, b)
    ]
    await wait_until_async(
        lambda: residency.waiting.get("a") == 10, what="ten requests waiting for one load"
    )
    tree.source.gate.set()
    answers = await asyncio.gather(*requests)
    for answer in answers:
        np.testing.assert_array_equal(answer.outputs["y"], answers[0].outputs["y"])
    assert tree.source.calls == ["a"] and residency.loads == {"a": 1}
    assert a.model_ready("a") and b.model_ready("a"), "both mirrors have the loaded model"
    index = {row.name: row for row in await b.repository_index()}
    assert index["a"].state == "READY" and index["a"].reason.startswith("resident: ")


async def test_an_evicted_model_answers_cache_hits_without_loading(tree: Tree) -> None:
    a, b = tree.planes
    tree.source.gate.set()
    first = await a.infer(weights_request("b", 0.25))
    await b.unload_model("b")  # returns once every worker has the dormant version
    assert not a.model_ready("b") and "b" in a.mirror.models
    hit = await a.infer(weights_request("b", 0.25))  # the executor's result cache
    np.testing.assert_array_equal(hit.outputs["y"], first.outputs["y"])
    assert tree.executor.repository.residency.loads == {"b": 1}
    miss = await b.infer(weights_request("b", 0.75))  # has to run: the executor loads it again
    assert miss.outputs["y"].shape == (1, 8192)
    assert tree.source.calls == ["b", "b"]
    await wait_until_async(lambda: a.model_ready("b"), what="the reload to reach worker a")
