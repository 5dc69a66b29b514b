"""``--model-control-mode on_demand`` in one process, on real ONNX Runtime sessions: models load on
their first request, footprints are measured, the memory budget evicts the least recently used
idle model, and what holds work, is pinned or failed is handled as promised. Gates decide what
runs when; no test depends on speed."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.backends.base import Backend
from service.dataplane.plane import DataPlane
from service.errors import NotFound, Unavailable
from service.messages import Tensors
from service.models.ondemand import NEVER_LOADED, is_dormant
from service.settings import Settings
from tests.helpers import wait_until_async
from tests.service.models.ondemand_support import (
    CACHED,
    PINNED,
    WEIGHT_BYTES,
    GatedSource,
    weight_model,
    weights_request,
)

MIB = 1 << 20


async def started(
    repo: Path, source: type[GatedSource] | None = None, **fields: object
) -> DataPlane:
    settings = Settings(model_repo=repo, grpc_port=0, model_control_mode="on_demand", **fields)  # type: ignore[arg-type]
    dataplane = DataPlane(settings)
    if source is not None:
        dataplane.repository.source = source(repo, settings)  # type: ignore[attr-defined]
    await dataplane.start()
    return dataplane


@pytest.fixture
async def five(tmp_path: Path) -> AsyncIterator[Path]:
    for i in range(5):
        weight_model(tmp_path, f"w{i}", seed=i)
    yield tmp_path


def resident(dataplane: DataPlane) -> dict[str, int]:
    return {n: f.host_bytes for n, f in dataplane.repository.residency.resident.items()}  # type: ignore[attr-defined]


async def samples(dataplane: DataPlane) -> dict[tuple[str, str], float]:
    """(sample name, model) -> value of the on-demand families in /metrics (outcome "ok")."""
    found = {}
    for family in text_string_to_metric_families((await dataplane.metrics()).decode()):
        for sample in family.samples:
            if sample.labels.get("outcome", "ok") == "ok" and "model" in sample.labels:
                found[(sample.name, sample.labels["model"])] = sample.value
    return found


async def rows(dataplane: DataPlane) -> dict[str, dict[str, str]]:
    return {row.name: row.to_json() for row in await dataplane.repository_index()}


async def test_every_model_is_listed_unloaded_and_loads_on_its_first_request(five: Path) -> None:
    dataplane = await started(five)
    try:
        listed = await rows(dataplane)
        assert set(listed) == {f"w{i}" for i in range(5)}
        assert {r["state"] for r in listed.values()} == {"UNAVAILABLE"}
        assert {r["reason"] for r in listed.values()} == {NEVER_LOADED}
        assert dataplane.ready(), "nothing is meant to be loaded, so the server is ready"
        response = await dataplane.infer(weights_request("w2"))
        assert response.outputs["y"].shape == (1, 8192)
        row = (await rows(dataplane))["w2"]
        assert row["state"] == "READY" and row["reason"].startswith("resident: ")
        assert "MiB RSS, measured over a" in row["reason"]
        footprint = dataplane.repository.residency.resident["w2"]  # type: ignore[attr-defined]
        assert footprint.host_bytes >= WEIGHT_BYTES, "at least its weights: measured, not guessed"
        figures = await samples(dataplane)
        assert figures[("infergate_model_resident_bytes", "w2")] == footprint.host_bytes
        assert figures[("infergate_model_loads_total", "w2")] == 1
        assert figures[("infergate_model_load_seconds_count", "w2")] == 1
    finally:
        await dataplane.close()


async def test_the_budget_is_held_by_evicting_the_least_recently_used(tmp_path: Path) -> None:
    """Footprints vary from load to load (8-30 MiB here), so the test holds the invariants: after
    every answer the measured footprints of the resident models fit the budget, and the models
    that left were always the least recently used of those resident. A footprint is never less
    than the model's 8 MiB of weights, so seven models cannot all fit 48 MiB: eviction must
    happen whatever the measurements, while any one model fits with room to spare."""
    for i in range(7):
        weight_model(tmp_path, f"w{i}", seed=i)
    budget = 48 * MIB
    assert budget < 7 * WEIGHT_BYTES
    dataplane = await started(tmp_path, model_memory_budget=budget)
    try:
        used: list[str] = []  # most recent last
        order = [0, 1, 2, 3, 4, 5, 6, 0, 2, 4, 6, 1, 3, 5, 0, 1]
        for step, i in enumerate(order):
            before = set(resident(dataplane))
            response = await dataplane.infer(weights_request(f"w{i}", float(step)))
            assert response.outputs["y"].shape == (1, 8192)
            after = resident(dataplane)
            assert sum(after.values()) <= budget, after
            gone = before - set(after)
            oldest = [name for name in used if name in before and name != f"w{i}"]
            assert sorted(gone) == sorted(oldest[: len(gone)]), (gone, oldest)
            used = [name for name in used if name != f"w{i}"] + [f"w{i}"]
        assert len(resident(dataplane)) < 7
        figures = await samples(dataplane)
        assert (
            sum(v for (n, _), v in figures.items() if n == "infergate_model_evictions_total") >= 1
        )
        reasons = {r["reason"] for r in (await rows(dataplane)).values() if r["state"] != "READY"}
        assert any("evicted to make room for" in r and "MiB RSS" in r for r in reasons), reasons
    finally:
        await dataplane.close()


class Held(Backend):
    """The real sessions behind a gate: a batch waits until the test opens it."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.concurrency = inner.concurrency
        self.open = asyncio.Event()

    async def execute(self, inputs: Tensors, output_names: list[str]) -> Tensors:
        await self.open.wait()
        return await self.inner.execute(inputs, output_names)

    async def close(self) -> None:
        await self.inner.close()


async def test_a_model_with_work_in_flight_or_pinned_is_never_evicted(tmp_path: Path) -> None:
    for name in ("busy", "idle", "new"):
        weight_model(tmp_path, name)
    weight_model(tmp_path, "kept", PINNED)
    dataplane = await started(tmp_path)
    residency = dataplane.repository.residency  # type: ignore[attr-defined]
    try:
        assert set(resident(dataplane)) == {"kept"}, "a pinned model loads at startup"
        assert dataplane.ready() and dataplane.repository.models["kept"].wanted
        await dataplane.infer(weights_request("busy"))
        await dataplane.infer(weights_request("idle"))
        model = dataplane.repository.get("busy")
        held = Held(model.backend)
        model.backend = held
        running = asyncio.ensure_future(dataplane.infer(weights_request("busy", 2.0)))
        await wait_until_async(lambda: model.scheduler.pending == 1, what="busy's batch to run")
        # busy and kept are the least recently used, but one has work and the other is pinned
        residency.budget = sum(resident(dataplane).values()) + WEIGHT_BYTES // 2
        await dataplane.infer(weights_request("new"))
        assert {"busy", "kept", "new"} <= set(resident(dataplane))
        assert "idle" not in resident(dataplane)
        # room for idle only if new and busy go: the load waits for busy's work to end
        residency.budget = resident(dataplane)["kept"] + residency.measured["idle"].host_bytes
        waiting = asyncio.ensure_future(dataplane.infer(weights_request("idle")))
        await wait_until_async(
            lambda: "new" not in resident(dataplane) and residency.waiting.get("idle") == 1,
            what="new evicted and idle's load waiting for busy",
        )
        assert "busy" in resident(dataplane) and not waiting.done()
        held.open.set()
        assert (await running).outputs["y"].shape == (1, 8192)
        assert (await waiting).outputs["y"].shape == (1, 8192)
        assert set(resident(dataplane)) == {"kept", "idle"}, "busy went once its work was done"
        residency.budget = residency.measured["new"].host_bytes + MIB  # not beside kept
        with pytest.raises(Unavailable) as refused:
            await dataplane.infer(weights_request("new"))
        assert refused.value.retry_after_s == 1
        assert "every resident model there is pinned" in refused.value.message
        assert refused.value.message.endswith("(kept); retry")
        assert set(resident(dataplane)) == {"kept"}
    finally:
        await dataplane.close()


async def test_evict_and_reload_answer_identically(tmp_path: Path) -> None:
    weight_model(tmp_path, "w", seed=7)
    dataplane = await started(tmp_path)
    try:
        first = await dataplane.infer(weights_request("w", 0.25))
        version = dataplane.repository.get("w")
        await dataplane.unload_model("w")
        assert is_dormant(version) and not dataplane.model_ready("w")
        assert (await rows(dataplane))["w"]["reason"].startswith("unloaded (by request; it held ")
        again = await dataplane.infer(weights_request("w", 0.25))
        np.testing.assert_array_equal(again.outputs["y"], first.outputs["y"])
        assert dataplane.repository.get("w") is version, "the same version object, revived"
        assert dataplane.repository.residency.loads["w"] == 2  # type: ignore[attr-defined]
        stats = await dataplane.model_statistics("w")
        assert stats["model_stats"][0]["inference_stats"]["success"]["count"] == 2
    finally:
        await dataplane.close()


async def test_ten_concurrent_first_requests_load_once(five: Path) -> None:
    dataplane = await started(five, GatedSource)
    source = dataplane.repository.source  # type: ignore[attr-defined]
    residency = dataplane.repository.residency  # type: ignore[attr-defined]
    try:
        requests = [
            asyncio.ensure_future(dataplane.infer(weights_request("w1"))) for _ in range(10)
        ]
        await wait_until_async(
            lambda: residency.waiting.get("w1") == 10, what="ten requests waiting for one load"
        )
        assert source.calls == ["w1"]
        source.gate.set()
        answers = await asyncio.gather(*requests)
        assert all(a.outputs["y"].shape == (1, 8192) for a in answers)
        assert source.calls == ["w1"] and residency.loads == {"w1": 1}
    finally:
        source.gate.set()
        await dataplane.close()


async def test_a_load_past_its_timeout_is_a_503_with_retry_after(five: Path) -> None:
    dataplane = await started(five, GatedSource, model_load_timeout_s=0.01, retry_after_s=3)
    source = dataplane.repository.source  # type: ignore[attr-defined]
    try:
        with pytest.raises(Unavailable, match="'w0' is still loading after 0.01 s") as info:
            await dataplane.infer(weights_request("w0"))  # the gate is shut: it cannot finish
        assert info.value.retry_after_s == 3
        source.gate.set()
        await wait_until_async(lambda: dataplane.model_ready("w0"), what="the load to go on")
        assert (await dataplane.infer(weights_request("w0"))).outputs["y"].shape == (1, 8192)
        assert source.calls == ["w0"]
    finally:
        source.gate.set()
        await dataplane.close()


async def test_a_failing_load_leaves_the_model_unavailable_with_its_reason(tmp_path: Path) -> None:
    (tmp_path / "broken" / "1").mkdir(parents=True)
    (tmp_path / "broken" / "1" / "model.onnx").write_bytes(b"not an onnx file")
    (tmp_path / "broken" / "config.pbtxt").write_text("max_batch_size: 4\n")
    weight_model(tmp_path, "big")
    dataplane = await started(tmp_path, model_memory_budget="4MiB")
    try:
        for _ in range(2):  # the second request does not try again
            with pytest.raises(Unavailable, match="ONNX Runtime cannot load model.onnx"):
                await dataplane.infer(weights_request("broken"))
        row = (await rows(dataplane))["broken"]
        assert row["state"] == "UNAVAILABLE" and "cannot load model.onnx" in row["reason"]
        metrics = (await dataplane.metrics()).decode()
        assert 'infergate_model_loads_total{model="broken",outcome="failed"} 1.0' in metrics
        with pytest.raises(Unavailable) as larger:
            await dataplane.infer(weights_request("big"))
        assert (
            "model 'big' needs 8.0 MiB of host memory (its files on disk), more than the whole "
            "--model-memory-budget of 4.0 MiB"
        ) in larger.value.message
        assert dataplane.repository.residency.resident == {}  # type: ignore[attr-defined]
    finally:
        await dataplane.close()


async def test_a_cache_hit_never_loads_a_model(tmp_path: Path) -> None:
    weight_model(tmp_path, "cached", CACHED)
    dataplane = await started(tmp_path)
    residency = dataplane.repository.residency  # type: ignore[attr-defined]
    try:
        first = await dataplane.infer(weights_request("cached", 0.5))
        await dataplane.unload_model("cached")
        again = await dataplane.infer(weights_request("cached", 0.5))
        np.testing.assert_array_equal(again.outputs["y"], first.outputs["y"])
        assert residency.loads == {"cached": 1} and not dataplane.model_ready("cached")
        await dataplane.infer(weights_request("cached", 0.75))  # a miss: it has to run
        assert residency.loads == {"cached": 2} and dataplane.model_ready("cached")
    finally:
        await dataplane.close()


async def test_explicit_control_and_the_poll_work_in_on_demand_mode(five: Path) -> None:
    dataplane = await started(five, repository_poll_s=0.05)
    try:
        await dataplane.load_model("w3")
        assert dataplane.model_ready("w3") and not dataplane.repository.models["w3"].wanted
        await dataplane.unload_model("w3")
        assert not dataplane.model_ready("w3")
        weight_model(five, "late")
        shutil.rmtree(five / "w4")
        await wait_until_async(
            lambda: (
                "late" in dataplane.repository.models and "w4" not in dataplane.repository.models
            ),
            what="the poll to list 'late' and drop 'w4'",
        )
        assert (await rows(dataplane))["late"]["reason"] == NEVER_LOADED
        assert (await dataplane.infer(weights_request("late"))).outputs["y"].shape == (1, 8192)
        with pytest.raises(NotFound, match="not in the repository"):
            await dataplane.load_model("w4")
    finally:
        await dataplane.close()
