"""KServe v2 REST against a real `infergate serve` with tritonclient.http (sync and aio)."""

from __future__ import annotations

import asyncio
import gzip
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as httpclient
import tritonclient.http.aio as aiohttpclient
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2

from tests.conftest import EXAMPLES
from tests.inputs import random_inputs


def direct_session(repo: Path, name: str, version: str) -> ort.InferenceSession:
    return ort.InferenceSession(str(repo / name / version / "model.onnx"))


def to_infer_inputs(arrays: dict[str, np.ndarray], metadata, binary: bool):
    datatypes = {spec["name"]: spec["datatype"] for spec in metadata["inputs"]}
    inputs = []
    for name, array in arrays.items():
        infer_input = httpclient.InferInput(name, list(array.shape), datatypes[name])
        infer_input.set_data_from_numpy(array, binary_data=binary)
        inputs.append(infer_input)
    return inputs


@pytest.fixture(scope="module")
def client(gateway):
    with httpclient.InferenceServerClient(gateway.http_url, concurrency=4) as client:
        yield client


def test_server_metadata_and_health(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    metadata = client.get_server_metadata()
    assert metadata["name"] == "infergate"
    assert {"binary_tensor_data", "statistics", "model_configuration"} <= set(
        metadata["extensions"]
    )


@pytest.mark.parametrize("name", EXAMPLES)
def test_model_metadata_and_config_match_the_repository(client, example_repo, name):
    metadata = client.get_model_metadata(name)
    config = client.get_model_config(name)
    assert metadata["name"] == name and config["name"] == name
    parsed = json_format.ParseDict(config, model_config_pb2.ModelConfig())
    assert parsed.max_batch_size == config["max_batch_size"] > 0
    assert [i["name"] for i in metadata["inputs"]] == [i.name for i in parsed.input]
    for spec, declared in zip(metadata["inputs"], parsed.input):
        assert spec["shape"] == [-1, *declared.dims]
    assert client.is_model_ready(name)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("name", EXAMPLES)
def test_infer_equals_direct_onnxruntime(client, example_repo, name, binary):
    metadata = client.get_model_metadata(name)
    version = metadata["versions"][-1]
    session = direct_session(example_repo, name, version)
    arrays = random_inputs(metadata, rows=3, seed=7)
    outputs = [
        httpclient.InferRequestedOutput(o["name"], binary_data=binary) for o in metadata["outputs"]
    ]
    result = client.infer(
        name, to_infer_inputs(arrays, metadata, binary), outputs=outputs, request_id="req-42"
    )
    assert result.get_response()["id"] == "req-42"
    expected = session.run([o["name"] for o in metadata["outputs"]], arrays)
    for spec, want in zip(metadata["outputs"], expected):
        got = result.as_numpy(spec["name"])
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_statistics_count_requests_and_executions(client):
    before = client.get_inference_statistics("digits_mlp")["model_stats"][0]
    metadata = client.get_model_metadata("digits_mlp")
    for seed in range(3):
        client.infer(
            "digits_mlp", to_infer_inputs(random_inputs(metadata, 2, seed), metadata, True)
        )
    after = client.get_inference_statistics("digits_mlp")["model_stats"][0]
    stats = after["inference_stats"]
    assert stats["success"]["count"] - before["inference_stats"]["success"]["count"] == 3
    assert after["inference_count"] - before["inference_count"] == 6
    assert stats["success"]["ns"] > 0 and stats["compute_infer"]["ns"] > 0
    assert any(b["batch_size"] == 2 for b in after["batch_stats"])


async def test_64_concurrent_clients_each_get_their_own_answer(gateway, example_repo):
    async def one_client(index: int, client, metadata, session) -> None:
        for round_ in range(3):
            rows = 1 + (index + round_) % 4
            arrays = random_inputs(metadata, rows, seed=index * 10 + round_)
            inputs = []
            for name, array in arrays.items():
                infer_input = aiohttpclient.InferInput(name, list(array.shape), "FP32")
                infer_input.set_data_from_numpy(array, binary_data=index % 2 == 0)
                inputs.append(infer_input)
            result = await client.infer("digits_mlp", inputs)
            expected = session.run(None, arrays)[0]
            np.testing.assert_allclose(result.as_numpy("probabilities"), expected, atol=1e-5)

    async with aiohttpclient.InferenceServerClient(gateway.http_url, conn_limit=64) as client:
        metadata = await client.get_model_metadata("digits_mlp")
        session = direct_session(example_repo, "digits_mlp", metadata["versions"][-1])
        before = (await client.get_inference_statistics("digits_mlp"))["model_stats"][0]
        await asyncio.gather(*(one_client(i, client, metadata, session) for i in range(64)))
        after = (await client.get_inference_statistics("digits_mlp"))["model_stats"][0]
    requests = (
        after["inference_stats"]["success"]["count"] - before["inference_stats"]["success"]["count"]
    )
    executions = after["execution_count"] - before["execution_count"]
    assert requests == 64 * 3
    assert executions < requests


def test_gzip_request_body(gateway):
    body = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [1.0] * 64}]}
    import orjson

    compressed = gzip.compress(orjson.dumps(body))
    response = httpx.post(
        f"{gateway.base_url}/v2/models/digits_mlp/infer",
        content=compressed,
        headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
    )
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["shape"] == [1, 10]


def test_v1_predict(gateway, client, example_repo):
    rows = np.random.default_rng(3).random((2, 64), dtype=np.float32).round(3) * 16
    response = httpx.post(
        f"{gateway.base_url}/v1/models/digits_mlp:predict", json={"instances": rows.tolist()}
    )
    assert response.status_code == 200, response.text
    version = client.get_model_metadata("digits_mlp")["versions"][-1]
    expected = direct_session(example_repo, "digits_mlp", version).run(None, {"input": rows})[0]
    np.testing.assert_allclose(np.array(response.json()["predictions"]), expected, atol=1e-5)


def test_explicit_versions_and_unknown_version(client):
    metadata = client.get_model_metadata("minilm_embed")
    assert metadata["versions"] == ["1"], "the exact model is the default; int8 has its own name"
    assert client.get_model_metadata("minilm_embed_int8")["versions"] == ["1"]
    assert client.get_model_metadata("minilm_embed", "1")["name"] == "minilm_embed"
    with pytest.raises(Exception, match="'minilm_embed' version 9 is not found"):
        client.get_model_metadata("minilm_embed", "9")


def test_metrics_endpoint_has_triton_names(gateway, client):
    metadata = client.get_model_metadata("digits_mlp")
    client.infer("digits_mlp", to_infer_inputs(random_inputs(metadata, 1, 0), metadata, True))
    text = httpx.get(f"{gateway.base_url}/metrics").text
    for metric in (
        "nv_inference_request_success",
        "nv_inference_count",
        "nv_inference_exec_count",
        "nv_inference_request_duration_us",
        "nv_inference_queue_duration_us",
        "nv_inference_compute_infer_duration_us",
        "infergate_batch_size_bucket",
        "infergate_queue_depth",
    ):
        assert f"{metric}" in text
    assert 'nv_inference_request_success{model="digits_mlp"' in text
