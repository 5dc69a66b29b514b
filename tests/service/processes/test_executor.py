"""The executor and two front-end planes in one event loop, over the real Unix-socket channel and
real ONNX Runtime sessions; a gate in front of the session decides what runs when, not speed."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2

from service.backends.base import Backend
from service.errors import BadRequest, Overloaded, RateLimited, Unavailable
from service.messages import InferRequest, Tensors
from service.observability.metrics import FRAME_REQUESTS
from service.processes.executor import Executor
from service.processes.worker import FrontEndPlane
from service.settings import Settings
from tests.helpers import edit_config, wait_until_async

MODEL = "digits_mlp"


class Gate(Backend):
    """The real session behind a gate the test opens; records the rows of each batch."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.concurrency = 1
        self.batches: list[int] = []
        self.open = asyncio.Event()

    async def execute(self, inputs: Tensors, output_names: list[str]) -> Tensors:
        self.batches.append(int(inputs["input"].shape[0]))
        await self.open.wait()
        return await self.inner.execute(inputs, output_names)


@dataclass
class Tree:
    executor: Executor
    planes: list[FrontEndPlane]
    settings: Settings
    runtime: Path

    def gate(self) -> Gate:
        model = self.executor.repository.get(MODEL)
        gate = Gate(model.backend)
        model.backend = gate
        return gate


def _repo(
    example_repo: Path, root: Path, edit: Callable[[model_config_pb2.ModelConfig], None]
) -> Path:
    repo = root / "repo"
    for name in (MODEL, "cancer_gbt"):
        shutil.copytree(example_repo / name, repo / name)
    edit_config(repo / MODEL / "config.pbtxt", edit)
    return repo


def _one_instance(config: model_config_pb2.ModelConfig) -> None:
    config.instance_group[0].count = 1


async def _start(settings: Settings, runtime: Path, planes: int = 2) -> Tree:
    executor = Executor(settings, runtime)
    await executor.start()
    started = [FrontEndPlane(settings, executor.socket_path) for _ in range(planes)]
    for plane in started:
        await plane.start()
    await wait_until_async(lambda: all(p.ready() for p in started), what="both planes ready")
    return Tree(executor, started, settings, runtime)


async def _stop(tree: Tree) -> None:
    for plane in tree.planes:
        await plane.close()
    await tree.executor.stop()


@pytest.fixture
async def tree(example_repo: Path, tmp_path: Path) -> AsyncIterator[Tree]:
    settings = Settings(model_repo=_repo(example_repo, tmp_path, _one_instance), grpc_port=0)
    started = await _start(settings, tmp_path)
    yield started
    await _stop(started)


def _request(value: float, rows: int = 1, **fields: object) -> InferRequest:
    x = np.full((rows, 64), value, dtype=np.float32)
    return InferRequest(MODEL, "", {"input": x}, {"input": "FP32"}, **fields)  # type: ignore[arg-type]


async def _busy(plane: FrontEndPlane, gate: Gate) -> asyncio.Task[object]:
    """A first request holding the only slot, so what follows queues."""
    first = asyncio.ensure_future(plane.infer(_request(-1.0)))
    await wait_until_async(lambda: gate.batches == [1], what="the first batch to reach the gate")
    return first


def _batcher_queued(tree: Tree) -> int:
    return tree.executor.repository.get(MODEL).scheduler.pending  # type: ignore[return-value]


async def test_requests_of_both_workers_share_one_batcher_and_statistics_sum(tree: Tree) -> None:
    gate = tree.gate()
    a, b = tree.planes
    first = await _busy(a, gate)
    queued = [asyncio.ensure_future(p.infer(_request(float(i)))) for i in range(3) for p in (a, b)]
    await wait_until_async(lambda: _batcher_queued(tree) == 7, what="6 requests queued behind 1")
    gate.open.set()
    responses = await asyncio.gather(first, *queued)
    assert gate.batches == [1, 6], "requests of both workers form one batch in one batcher"
    for response in responses:
        assert response.outputs["probabilities"].shape == (1, 10)
    for plane in (a, b):
        stats = (await plane.model_statistics(MODEL))["model_stats"][0]
        assert stats["inference_stats"]["success"]["count"] == 7  # type: ignore[index]
        assert (stats["execution_count"], stats["inference_count"]) == (2, 7)
        assert [s["batch_size"] for s in stats["batch_stats"]] == [1, 6]  # type: ignore[union-attr]
    metrics = (await b.metrics()).decode()
    assert f'nv_inference_request_success{{model="{MODEL}",version="1"}} 7' in metrics
    assert f'nv_inference_exec_count{{model="{MODEL}",version="1"}} 2' in metrics
    # (prometheus-client's registry is one per process, so its sums are checked with real
    # processes in tests/integration/test_workers.py)


def _frames() -> tuple[float, float]:
    """(frames, requests) the executor took in so far (one registry in this one process)."""
    samples = {sample.name: sample.value for sample in FRAME_REQUESTS.collect()[0].samples}
    prefix = "infergate_executor_frame_requests"
    return samples[f"{prefix}_count"], samples[f"{prefix}_sum"]


def _cancer_request(value: float) -> InferRequest:
    x = np.full((1, 30), value, dtype=np.float32)
    return InferRequest("cancer_gbt", "", {"input": x}, {"input": "FP32"}, use_cache=False)


async def test_requests_gathered_in_one_pass_travel_in_one_frame(tree: Tree) -> None:
    a, _ = tree.planes
    frames, requests = _frames()
    responses = await asyncio.gather(*(a.infer(_request(i / 20)) for i in range(20)))
    assert all(r.outputs["probabilities"].shape == (1, 10) for r in responses)
    assert _frames() == (frames + 1, requests + 20), "20 requests of one pass: one frame"


async def test_a_slow_or_cancelled_request_does_not_hold_the_rest_of_its_frame(tree: Tree) -> None:
    gate = tree.gate()
    a, _ = tree.planes
    slow = await _busy(a, gate)  # held at the gate
    frames, _ = _frames()
    cancelled = asyncio.ensure_future(a.infer(_request(0.25, use_cache=False)))  # behind it
    others = [asyncio.ensure_future(a.infer(_cancer_request(i / 5))) for i in range(5)]
    try:
        for response in await asyncio.gather(*others):  # another model: answered meanwhile
            assert response.outputs["probabilities"].shape == (1, 2)
        assert _frames()[0] == frames + 1, "the six requests left in one frame"
        assert not slow.done() and gate.batches == [1]
        cancelled.cancel()
        workers = tree.executor.desk.workers.values()
        await wait_until_async(
            lambda: any(worker.cancelled for worker in workers),
            what="the cancel to reach the executor",
        )
    finally:
        gate.open.set()
    assert (await slow).outputs["probabilities"].shape == (1, 10)
    await wait_until_async(lambda: not _batcher_queued(tree), what="the cancelled one to leave")
    assert gate.batches == [1], "the cancelled request never ran"


async def test_identical_requests_on_two_workers_run_once(
    example_repo: Path, tmp_path: Path
) -> None:
    settings = Settings(
        model_repo=_repo(example_repo, tmp_path, _one_instance), grpc_port=0, cache_enabled=True
    )
    tree = await _start(settings, tmp_path)
    try:
        gate = tree.gate()
        a, b = tree.planes
        on_a = asyncio.ensure_future(a.infer(_request(0.5)))
        await wait_until_async(lambda: gate.batches == [1], what="the first copy to run")
        on_b = asyncio.ensure_future(b.infer(_request(0.5)))
        await wait_until_async(
            lambda: [len(f.members) for f in tree.executor.desk.flights.values()] == [2],
            what="the second copy to join the first",
        )
        gate.open.set()
        first, second = await asyncio.gather(on_a, on_b)
        np.testing.assert_array_equal(
            first.outputs["probabilities"], second.outputs["probabilities"]
        )
        assert gate.batches == [1]
        stats = (await a.model_statistics(MODEL))["model_stats"][0]
        assert stats["inference_stats"]["success"]["count"] == 2  # type: ignore[index]
        assert stats["execution_count"] == 1
    finally:
        await _stop(tree)


async def test_a_request_whose_client_hung_up_never_runs(tree: Tree) -> None:
    gate = tree.gate()
    a, _ = tree.planes
    first = await _busy(a, gate)
    hung_up = False
    abandoned = asyncio.ensure_future(a.infer(_request(1.0, client_gone=lambda: hung_up)))
    await wait_until_async(lambda: _batcher_queued(tree) == 2, what="the second request to queue")
    hung_up = True
    workers = tree.executor.desk.workers.values()
    await wait_until_async(
        lambda: any(worker.cancelled for worker in workers), what="the worker to report the hang-up"
    )
    gate.open.set()
    await first
    with pytest.raises(BadRequest, match="client disconnected"):
        await abandoned
    assert gate.batches == [1]


async def test_a_full_queue_is_a_503_with_retry_after_through_a_worker(
    example_repo: Path, tmp_path: Path
) -> None:
    settings = Settings(
        model_repo=_repo(example_repo, tmp_path, _one_instance), grpc_port=0, max_queue_size=1
    )
    tree = await _start(settings, tmp_path)
    try:
        gate = tree.gate()
        a, b = tree.planes
        first = await _busy(a, gate)
        queued = asyncio.ensure_future(a.infer(_request(1.0)))
        await wait_until_async(lambda: _batcher_queued(tree) == 2, what="one request queued")
        with pytest.raises(Overloaded) as refused:
            await b.infer(_request(2.0))
        assert refused.value.retry_after_s == settings.retry_after_s
        gate.open.set()
        await asyncio.gather(first, queued)
    finally:
        await _stop(tree)


async def test_a_rate_limit_is_one_budget_across_workers(tree: Tree) -> None:
    a, b = tree.planes
    for plane in (a, b):
        plane.admission.http.anonymous = plane.admission.http.anonymous.__class__(
            "anonymous", frozenset({"infer"}), requests_per_s=0.001
        )
    await a.infer(_request(1.0))  # the bucket holds one request
    with pytest.raises(RateLimited):
        await b.infer(_request(1.0))


def _explicit(example_repo: Path, tmp_path: Path) -> Settings:
    """Explicit model control with only MODEL loaded at startup."""
    return Settings(
        model_repo=_repo(example_repo, tmp_path, _one_instance),
        grpc_port=0,
        model_control_mode="explicit",
        startup_models=[MODEL],
    )


async def test_load_and_unload_through_one_worker_apply_to_all(
    example_repo: Path, tmp_path: Path
) -> None:
    settings = _explicit(example_repo, tmp_path)
    tree = await _start(settings, tmp_path)
    try:
        a, b = tree.planes
        assert not b.model_ready("cancer_gbt")
        await a.load_model("cancer_gbt")
        assert a.model_ready("cancer_gbt")
        assert b.model_ready("cancer_gbt"), "the load returns once every worker has it"
        await b.unload_model(MODEL)
        with pytest.raises(Unavailable, match="unloaded"):
            a.model(MODEL)
    finally:
        await _stop(tree)


async def test_a_lost_executor_fails_requests_with_503_and_its_successor_restores_the_models(
    example_repo: Path, tmp_path: Path
) -> None:
    settings = _explicit(example_repo, tmp_path)
    tree = await _start(settings, tmp_path)
    a, b = tree.planes
    await a.load_model("cancer_gbt")  # loaded by a call: the successor must load it again
    gate = tree.gate()
    in_flight = await _busy(a, gate)
    for channel in list(tree.executor.channels):  # the executor "dies": its sockets close
        channel.transport.abort()  # type: ignore[union-attr]
    with pytest.raises(Unavailable) as lost:
        await in_flight
    assert lost.value.retry_after_s == 1
    await wait_until_async(lambda: not b.ready(), what="worker b to notice")
    with pytest.raises(Unavailable, match="restarting"):
        b.model(MODEL)
    gate.open.set()
    await tree.executor.stop()
    successor = Executor(settings, tmp_path)
    await successor.start()
    assert successor.snapshot().generation > tree.executor.snapshot().generation
    try:
        await wait_until_async(lambda: a.ready() and b.ready(), what="both workers ready again")
        assert b.model_ready("cancer_gbt") and a.model_ready(MODEL)
        response = await b.infer(_request(0.25))
        assert response.outputs["probabilities"].shape == (1, 10)
    finally:
        for plane in tree.planes:
            await plane.close()
        await successor.stop()


async def test_a_snapshot_older_than_the_one_applied_is_ignored(tree: Tree) -> None:
    """The reply to a worker's own snapshot call can be read after a newer pushed snapshot (the
    race a fast-loading backend hit at startup): the older one must not undo the newer."""
    a, _ = tree.planes
    newer = tree.executor.snapshot()
    older = replace(newer, generation=newer.generation - 1, started=False, entries=())
    a.mirror.apply(older)
    assert a.ready() and a.model_ready(MODEL)
    assert [e.name for e in newer.entries] == sorted(a.mirror.models)


async def test_a_reload_with_a_new_config_reaches_every_worker(
    example_repo: Path, tmp_path: Path
) -> None:
    tree = await _start(_explicit(example_repo, tmp_path), tmp_path)
    try:
        a, b = tree.planes
        config = a.model_config(MODEL)
        for size in (8, 4):  # two reloads: each version object is new to the workers
            config.max_batch_size = size
            del config.dynamic_batching.preferred_batch_size[:]  # none over the max
            await a.load_model(MODEL, {"config": json_format.MessageToJson(config)})
            assert [p.model_config(MODEL).max_batch_size for p in (a, b)] == [size, size]
            assert (await b.infer(_request(0.5))).outputs["probabilities"].shape == (1, 10)
    finally:
        await _stop(tree)
