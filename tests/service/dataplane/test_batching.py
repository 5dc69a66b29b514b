"""The dynamic batcher on real ONNX Runtime sessions of the example models, in-process."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from service.dataplane.plane import DataPlane
from service.errors import BadRequest, Overloaded, Timeout
from service.messages import InferRequest
from service.models.sources import parse_config
from service.settings import Settings


def copy_model(example_repo: Path, name: str, target: Path, edit=None) -> Path:
    """Copy one example model into a private repository, optionally editing its config."""
    shutil.copytree(example_repo / name, target / name)
    if edit is not None:
        config = parse_config(target / name / "config.pbtxt")
        edit(config)
        (target / name / "config.pbtxt").write_text(text_format.MessageToString(config))
    return target


def latest_model_file(repo: Path, name: str) -> Path:
    versions = sorted(int(p.name) for p in (repo / name).iterdir() if p.name.isdigit())
    return repo / name / str(versions[-1]) / "model.onnx"


async def started(repo: Path, **settings) -> DataPlane:
    settings.setdefault("cache_enabled", False)  # these tests are about the batcher alone
    dataplane = DataPlane(Settings(model_repo=repo, grpc_port=0, **settings))
    await dataplane.start()
    return dataplane


def digits_request(rows: int, seed: int) -> InferRequest:
    data = np.random.default_rng(seed).random((rows, 64), dtype=np.float32) * 16
    return InferRequest("digits_mlp", "", {"input": data}, {"input": "FP32"})


async def test_concurrent_requests_get_their_own_unbatched_answers(example_repo, tmp_path):
    repo = copy_model(example_repo, "digits_mlp", tmp_path)
    session = ort.InferenceSession(str(latest_model_file(repo, "digits_mlp")))
    dataplane = await started(repo)
    try:
        requests = [digits_request(rows=1 + seed % 5, seed=seed) for seed in range(96)]
        responses = await asyncio.gather(*(dataplane.infer(r) for r in requests))
        for request, response in zip(requests, responses):
            expected = session.run(None, {"input": request.inputs["input"]})[0]
            got = response.outputs["probabilities"]
            assert got.shape == expected.shape
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
        stats = dataplane.local_statistics("digits_mlp")["model_stats"][0]
        assert stats["inference_count"] == sum(r.inputs["input"].shape[0] for r in requests)
        assert stats["inference_stats"]["success"]["count"] == len(requests)
        assert stats["execution_count"] < len(requests)
        assert max(b["batch_size"] for b in stats["batch_stats"]) > 1
    finally:
        await dataplane.close()


async def test_no_batching_runs_every_request_alone(example_repo, tmp_path):
    repo = copy_model(example_repo, "digits_mlp", tmp_path)
    dataplane = await started(repo, batching=False)
    try:
        await asyncio.gather(*(dataplane.infer(digits_request(2, seed)) for seed in range(20)))
        stats = dataplane.local_statistics("digits_mlp")["model_stats"][0]
        assert stats["execution_count"] == 20
        assert [b["batch_size"] for b in stats["batch_stats"]] == [2]
    finally:
        await dataplane.close()


def tokens(length: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000, 5000, size=(1, length), dtype=np.int64)
    ids[0, 0], ids[0, -1] = 101, 102
    return {
        "input_ids": ids,
        "attention_mask": np.ones((1, length), dtype=np.int64),
        "token_type_ids": np.zeros((1, length), dtype=np.int64),
    }


def embed_request(length: int, seed: int) -> InferRequest:
    inputs = tokens(length, seed)
    return InferRequest("minilm_embed", "1", inputs, {name: "INT64" for name in inputs})


async def test_token_inputs_are_padded_and_answers_match_unpadded(example_repo, tmp_path):
    repo = copy_model(example_repo, "minilm_embed", tmp_path)
    session = ort.InferenceSession(str(repo / "minilm_embed" / "1" / "model.onnx"))
    dataplane = await started(repo)
    try:
        requests = [
            embed_request(length, seed) for seed, length in enumerate([5, 17, 9, 32, 12, 5])
        ]
        responses = await asyncio.gather(*(dataplane.infer(r) for r in requests))
        for request, response in zip(requests, responses):
            expected = session.run(["sentence_embedding"], request.inputs)[0]
            np.testing.assert_allclose(response.outputs["sentence_embedding"], expected, atol=2e-5)
        stats = dataplane.local_statistics("minilm_embed", "1")["model_stats"][0]
        assert stats["execution_count"] < len(requests)
    finally:
        await dataplane.close()


async def test_different_shapes_never_share_a_batch_without_padding(example_repo, tmp_path):
    def no_padding(config: model_config_pb2.ModelConfig) -> None:
        del config.parameters["infergate.pad_inputs"]

    repo = copy_model(example_repo, "minilm_embed", tmp_path, no_padding)
    dataplane = await started(repo)
    try:
        lengths = [6, 6, 6, 11, 11]
        await asyncio.gather(*(dataplane.infer(embed_request(n, i)) for i, n in enumerate(lengths)))
        stats = dataplane.local_statistics("minilm_embed", "1")["model_stats"][0]
        # requests of length 6 and 11 can only meet in separate executions
        assert stats["execution_count"] >= 2
        assert all(b["batch_size"] <= 3 for b in stats["batch_stats"])
    finally:
        await dataplane.close()


async def test_full_queue_answers_overloaded_and_keeps_serving(example_repo, tmp_path):
    repo = copy_model(example_repo, "digits_mlp", tmp_path)
    dataplane = await started(repo, max_queue_size=4)
    try:
        outcomes = await asyncio.gather(
            *(dataplane.infer(digits_request(1, seed)) for seed in range(40)),
            return_exceptions=True,
        )
        rejected = [o for o in outcomes if isinstance(o, Overloaded)]
        served = [o for o in outcomes if not isinstance(o, Exception)]
        assert rejected and served
        assert all(o.retry_after_s and "queue is full" in o.message for o in rejected)
        assert len(rejected) + len(served) == 40
        after = await dataplane.infer(digits_request(1, 99))
        assert after.outputs["probabilities"].shape == (1, 10)
    finally:
        await dataplane.close()


async def test_queue_timeout_from_config_policy(example_repo, tmp_path):
    def tight_policy(config: model_config_pb2.ModelConfig) -> None:
        config.instance_group[0].count = 1
        policy = config.dynamic_batching.default_queue_policy
        policy.default_timeout_microseconds = 1
        policy.allow_timeout_override = False
        # no warm-up figure, so admission does not refuse at once what would time out
        config.parameters["infergate.warmup"].string_value = "false"

    repo = copy_model(example_repo, "digits_mlp", tmp_path, tight_policy)
    dataplane = await started(repo)
    try:
        outcomes = await asyncio.gather(
            *(dataplane.infer(digits_request(1, seed)) for seed in range(30)),
            return_exceptions=True,
        )
        assert any(isinstance(o, Timeout) for o in outcomes)
        stats = dataplane.local_statistics("digits_mlp")["model_stats"][0]
        assert stats["inference_stats"]["fail"]["count"] == sum(
            isinstance(o, Exception) for o in outcomes
        )
    finally:
        await dataplane.close()


async def test_priority_levels_serve_the_higher_priority_first(example_repo, tmp_path):
    def two_levels(config: model_config_pb2.ModelConfig) -> None:
        config.instance_group[0].count = 1
        config.max_batch_size = 1
        del config.dynamic_batching.preferred_batch_size[:]  # Triton refuses sizes over 1
        config.dynamic_batching.priority_levels = 2
        config.dynamic_batching.default_priority_level = 2

    repo = copy_model(example_repo, "digits_mlp", tmp_path, two_levels)
    dataplane = await started(repo)
    try:
        finished: list[str] = []

        async def run(tag: str, priority: int, seed: int) -> None:
            request = digits_request(1, seed)
            request.priority = priority
            await dataplane.infer(request)
            finished.append(tag)

        # all enqueued in one tick: the first runs at once, then level 1 goes before level 2
        await asyncio.gather(
            run("first", 2, 0), *(run(f"low{i}", 2, i) for i in range(5)), run("high", 1, 9)
        )
        assert finished.index("high") <= 1
        with pytest.raises(BadRequest, match="priority 3 is outside 1..2"):
            request = digits_request(1, 0)
            request.priority = 3
            await dataplane.infer(request)
    finally:
        await dataplane.close()


async def test_one_bad_request_fails_alone_and_its_batch_mates_succeed(example_repo, tmp_path):
    repo = copy_model(example_repo, "minilm_embed", tmp_path)
    # without its tokenizer the gateway does not know the vocabulary: the model itself fails
    for tokenizer in (repo / "minilm_embed").rglob("tokenizer.json"):
        tokenizer.unlink()
    dataplane = await started(repo)
    try:
        requests = [embed_request(8, seed) for seed in range(6)]
        requests[2].inputs["input_ids"][0, 3] = 10_000_000  # far outside the vocabulary
        outcomes = await asyncio.gather(
            *(dataplane.infer(r) for r in requests), return_exceptions=True
        )
        assert isinstance(outcomes[2], BadRequest)
        assert "the model rejected the input" in outcomes[2].message
        good = [o for i, o in enumerate(outcomes) if i != 2]
        assert all(o.outputs["sentence_embedding"].shape == (1, 384) for o in good)
    finally:
        await dataplane.close()


def with_token_budget(budget: int):
    def edit(config: model_config_pb2.ModelConfig) -> None:
        config.instance_group[0].count = 1
        config.parameters["infergate.max_batch_tokens"].string_value = str(budget)

    return edit


async def test_token_budget_groups_similar_lengths(example_repo, tmp_path):
    repo = copy_model(example_repo, "minilm_embed", tmp_path, with_token_budget(64))
    session = ort.InferenceSession(str(repo / "minilm_embed" / "1" / "model.onnx"))
    dataplane = await started(repo)
    try:
        lengths = [30, 4, 30, 4, 4, 30, 100]
        requests = [embed_request(n, seed) for seed, n in enumerate(lengths)]
        # one tick: all are queued before the batcher takes its first batch
        responses = await asyncio.gather(*(dataplane.infer(r) for r in requests))
        for request, response in zip(requests, responses):
            expected = session.run(["sentence_embedding"], request.inputs)[0]
            np.testing.assert_allclose(response.outputs["sentence_embedding"], expected, atol=2e-5)
        stats = dataplane.local_statistics("minilm_embed", "1")["model_stats"][0]
        # 30+30 (60 padded tokens), then 4+4+4, then the third 30, then 100 alone (over budget)
        assert stats["execution_count"] == 4
        assert {b["batch_size"] for b in stats["batch_stats"]} == {1, 2, 3}
        assert stats["inference_count"] == len(lengths)
    finally:
        await dataplane.close()


async def test_without_a_token_budget_lengths_share_one_batch(example_repo, tmp_path):
    def one_instance(config: model_config_pb2.ModelConfig) -> None:
        config.instance_group[0].count = 1

    repo = copy_model(example_repo, "minilm_embed", tmp_path, one_instance)
    dataplane = await started(repo)
    try:
        lengths = [30, 4, 30, 4, 4, 30, 100]
        await asyncio.gather(*(dataplane.infer(embed_request(n, s)) for s, n in enumerate(lengths)))
        stats = dataplane.local_statistics("minilm_embed", "1")["model_stats"][0]
        assert stats["execution_count"] == 1
        assert [b["batch_size"] for b in stats["batch_stats"]] == [7]
    finally:
        await dataplane.close()


async def test_a_malformed_token_budget_fails_the_load(example_repo, tmp_path):
    def bad(config: model_config_pb2.ModelConfig) -> None:
        config.parameters["infergate.max_batch_tokens"].string_value = "lots"

    repo = copy_model(example_repo, "minilm_embed", tmp_path, bad)
    dataplane = await started(repo)
    try:
        (row,) = [r for r in await dataplane.repository_index() if r.name == "minilm_embed"]
        assert row.state == "UNAVAILABLE"
        assert "infergate.max_batch_tokens must be a non-negative integer" in row.reason
    finally:
        await dataplane.close()
