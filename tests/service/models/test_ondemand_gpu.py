"""The per-GPU budget under ``--model-control-mode on_demand``, on a fake two-GPU machine: the
configs place instances on GPUs 0 and 1 with arena caps, and what they reserve is counted as on
real GPUs (without CUDA the sessions fall back to the CPU, loudly, and still serve)."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.backends.onnxruntime.gpu_budget import LEDGER
from service.dataplane.plane import DataPlane
from service.errors import Unavailable
from service.settings import Settings
from tests.service.models.ondemand_support import weight_model, weights_request

GB = 1_000_000_000


def on_gpu(repo: Path, name: str, gpu: int, cap: int) -> None:
    limit = f'parameters {{ key: "gpu_mem_limit" value {{ string_value: "{cap}" }} }}\n'
    weight_model(repo, name, limit, group=f"count: 1 kind: KIND_GPU gpus: [{gpu}]")


@pytest.fixture
async def gpus(tmp_path: Path):
    for name in ("a", "b", "c"):
        on_gpu(tmp_path, name, 0, 3 * GB)
    on_gpu(tmp_path, "other", 1, 3 * GB)
    on_gpu(tmp_path, "huge", 0, 8 * GB)
    settings = Settings(
        model_repo=tmp_path,
        grpc_port=0,
        model_control_mode="on_demand",
        gpu_memory_budget_bytes=7 * GB,
    )
    dataplane = DataPlane(settings)
    await dataplane.start()
    yield dataplane
    await dataplane.close()


def on(dataplane: DataPlane, gpu: int) -> set[str]:
    resident = dataplane.repository.residency.resident  # type: ignore[attr-defined]
    return {name for name, f in resident.items() if f.gpu_bytes.get(gpu)}


async def test_a_full_gpu_evicts_its_least_recently_used_model(gpus: DataPlane) -> None:
    for name in ("a", "b", "other"):
        await gpus.infer(weights_request(name))
    assert on(gpus, 0) == {"a", "b"} and on(gpus, 1) == {"other"}
    assert LEDGER.used(0) == 6 * GB
    await gpus.infer(weights_request("a"))  # b is now the least recently used on GPU 0
    await gpus.infer(weights_request("c"))
    assert on(gpus, 0) == {"a", "c"}, "b gave way on GPU 0"
    assert on(gpus, 1) == {"other"}, "a model on another GPU is not touched"
    assert LEDGER.used(0) == 6 * GB
    rows = {row.name: row.to_json() for row in await gpus.repository_index()}
    assert rows["b"]["reason"].startswith("unloaded (evicted to make room for 'c'; it held ")
    assert "GPU 0 2.8 GiB reserved" in rows["b"]["reason"]
    assert "GPU 0 2.8 GiB reserved" in rows["c"]["reason"] and rows["c"]["state"] == "READY"


async def test_a_model_larger_than_the_gpu_budget_is_a_503_naming_both(gpus: DataPlane) -> None:
    await gpus.infer(weights_request("a"))
    with pytest.raises(Unavailable) as refused:
        await gpus.infer(weights_request("huge"))
    assert (
        "model 'huge' reserves 7.5 GiB on GPU 0, more than the whole --gpu-memory-budget-bytes "
        "of 6.5 GiB"
    ) in refused.value.message
    assert on(gpus, 0) == {"a"}, "nothing was evicted for a model that can never fit"
