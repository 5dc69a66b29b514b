"""Model repository: version policies, broken models, explicit control and polling, in-process."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import numpy as np
import pytest
from tritonclient.grpc import model_config_pb2

from service.dataplane.plane import DataPlane
from service.errors import NotFound, Unavailable
from service.messages import InferRequest
from service.models.sources import select_versions
from service.settings import Settings
from tests.helpers import edit_config, wait_until_async


def policy(text: str) -> model_config_pb2.ModelVersionPolicy:
    from google.protobuf import text_format

    return text_format.Parse(text, model_config_pb2.ModelVersionPolicy())


@pytest.mark.parametrize(
    "text, expected",
    [
        ("", [3]),
        ("latest { num_versions: 2 }", [2, 3]),
        ("all {}", [1, 2, 3]),
        ("specific { versions: [1, 3, 9] }", [1, 3]),
    ],
)
def test_version_policy(text, expected):
    assert select_versions(policy(text), [3, 1, 2]) == expected


def digits(seed: int = 0) -> InferRequest:
    data = np.random.default_rng(seed).random((1, 64), dtype=np.float32)
    return InferRequest("digits_mlp", "", {"input": data}, {"input": "FP32"})


@pytest.fixture
def repo(example_repo: Path, tmp_path: Path) -> Path:
    for name in ("digits_mlp", "cancer_gbt"):
        shutil.copytree(example_repo / name, tmp_path / name)
    return tmp_path


async def start(repo: Path, **settings) -> DataPlane:
    dataplane = DataPlane(Settings(model_repo=repo, grpc_port=0, **settings))
    await dataplane.start()
    return dataplane


async def test_a_broken_model_is_unavailable_with_its_reason_and_others_serve(repo):
    broken = repo / "broken"
    (broken / "1").mkdir(parents=True)
    (broken / "1" / "model.onnx").write_bytes(b"this is not an onnx file")
    (broken / "config.pbtxt").write_text('platform: "onnxruntime_onnx"\nmax_batch_size: 4\n')
    mismatched = repo / "mismatched"
    shutil.copytree(repo / "digits_mlp", mismatched)

    def wrong_dims(config: model_config_pb2.ModelConfig) -> None:
        config.name = "mismatched"
        config.input[0].dims[:] = [65]

    edit_config(mismatched / "config.pbtxt", wrong_dims)
    dataplane = await start(repo)
    try:
        assert not dataplane.ready()
        with pytest.raises(Unavailable, match="ONNX Runtime cannot load model.onnx"):
            dataplane.model_metadata("broken")
        mismatch = r"input 'input' has dims \[65\] in config.pbtxt but \[64\]"
        with pytest.raises(Unavailable, match=mismatch):
            dataplane.model_metadata("mismatched")
        rows = {row.name: row.to_json() for row in await dataplane.repository_index()}
        assert rows["broken"]["state"] == "UNAVAILABLE" and rows["broken"]["reason"]
        assert rows["digits_mlp"]["state"] == "READY"
        response = await dataplane.infer(digits())
        assert response.outputs["probabilities"].shape == (1, 10)
    finally:
        await dataplane.close()


async def test_config_without_tensors_is_completed_from_the_graph(repo):

    def only_name_platform_and_batch(config: model_config_pb2.ModelConfig) -> None:
        kept = model_config_pb2.ModelConfig(
            name=config.name, platform=config.platform, max_batch_size=config.max_batch_size
        )
        config.CopyFrom(kept)

    stripped = edit_config(repo / "cancer_gbt" / "config.pbtxt", only_name_platform_and_batch)
    assert not stripped.input and not stripped.output
    dataplane = await start(repo)
    try:
        metadata = dataplane.model_metadata("cancer_gbt")
        assert metadata["inputs"][0]["shape"] == [-1, 30]
        assert metadata["outputs"]
    finally:
        await dataplane.close()


async def test_explicit_unload_and_load(repo):
    dataplane = await start(repo, model_control_mode="explicit")
    try:
        await dataplane.unload_model("digits_mlp")
        with pytest.raises(Unavailable, match="UNAVAILABLE: unloaded"):
            await dataplane.infer(digits())
        await dataplane.load_model("digits_mlp")
        assert (await dataplane.infer(digits())).outputs["probabilities"].shape == (1, 10)
        with pytest.raises(NotFound, match="not in the repository"):
            await dataplane.load_model("nope")
    finally:
        await dataplane.close()


async def test_reload_under_load_drops_no_request(repo):
    dataplane = await start(repo, model_control_mode="explicit")
    try:
        answered = [0]

        async def client(seed: int) -> int:
            done = 0
            for round_ in range(40):
                await dataplane.infer(digits(seed * 100 + round_))
                done += 1
                answered[0] += 1
            return done

        async def reloader() -> None:
            """Reload five times while the clients run: after 100, 200, ... answers."""
            for reload in range(1, 6):
                await wait_until_async(
                    lambda: answered[0] >= 100 * reload,  # noqa: B023 - awaited in this pass
                    what=f"{100 * reload} answers before reload {reload}",
                )
                await dataplane.load_model("digits_mlp")

        results = await asyncio.gather(*(client(s) for s in range(16)), reloader())
        assert sum(results[:-1]) == 16 * 40
    finally:
        await dataplane.close()


async def test_poll_mode_picks_up_a_new_version_and_a_removed_model(repo):
    dataplane = await start(repo, model_control_mode="poll", repository_poll_s=0.2)
    try:
        assert dataplane.model_metadata("digits_mlp")["versions"] == ["1"]
        shutil.copytree(repo / "digits_mlp" / "1", repo / "digits_mlp" / "2")
        shutil.rmtree(repo / "cancer_gbt")
        await wait_until_async(
            lambda: (
                dataplane.model_metadata("digits_mlp")["versions"] == ["2"]
                and not dataplane.model_ready("cancer_gbt")
            ),
            what="the poll to load version 2 and drop cancer_gbt",
        )
        assert dataplane.model_metadata("digits_mlp")["versions"] == ["2"]
        assert not dataplane.model_ready("cancer_gbt")
        assert (await dataplane.infer(digits())).model_version == "2"
    finally:
        await dataplane.close()


async def test_explicit_mode_loads_only_the_startup_models(repo):
    dataplane = await start(repo, model_control_mode="explicit", startup_models=["cancer_gbt"])
    try:
        assert dataplane.model_ready("cancer_gbt")
        assert not dataplane.model_ready("digits_mlp")
        rows = {row.name: row.to_json() for row in await dataplane.repository_index()}
        assert rows["digits_mlp"] == {
            "name": "digits_mlp",
            "state": "UNAVAILABLE",
            "reason": "unloaded",
        }
        await dataplane.load_model("digits_mlp")
        assert (await dataplane.infer(digits())).outputs["probabilities"].shape == (1, 10)
    finally:
        await dataplane.close()
